package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"
)

// This file is the seam between the Handler's rules and a data plane that
// does its own I/O (proxy/epoll): the same Pool, the same hold limits and
// counters, the same retry rule, the same error answers and the same
// Observer. A plane that calls these behaves as the Handler does, and the
// Handler's Stats cover it.

// ErrResponseStarted marks a failure after the backend began to answer (a
// malformed, oversized or cut-short response): the request reached it, so
// it is not sent again. Errors wrapping it are never retried.
var ErrResponseStarted = errResponseStarted

// ErrTooManyHeld is BeginHold's error when MaxHeld requests wait already.
var ErrTooManyHeld = errTooManyHeld

// Replayable reports whether a request may be sent again after a failure
// that could have happened after the server read it: GET, HEAD, OPTIONS
// and TRACE without a body, or any request with an idempotency key, the
// rule of Go's own http.Transport. PUT and DELETE are idempotent by RFC
// 9110 but are not replayed: legacy applications often break that rule.
// header may be nil for a request without one.
func Replayable(method string, hasBody bool, header http.Header) bool {
	if hasBody {
		return false
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := header["Idempotency-Key"]
	_, k2 := header["X-Idempotency-Key"]
	return k1 || k2
}

// Pool is the Handler's pool of upstreams.
func (h *Handler) Pool() Pool { return h.pool }

// Config is the Handler's configuration with defaults applied.
func (h *Handler) Config() Config { return h.cfg }

// BeginHold counts a request that starts waiting for a ready upstream and
// returns when it started; over MaxHeld it counts nothing and returns
// ErrTooManyHeld. Every successful BeginHold needs one EndHold.
func (h *Handler) BeginHold() (time.Time, error) {
	if h.held.Add(1) > int64(h.cfg.MaxHeld) {
		h.held.Add(-1)
		return time.Time{}, errTooManyHeld
	}
	start := time.Now()
	h.episodeBegin(start)
	return start, nil
}

// EndHold ends a wait begun by BeginHold; timedOut says it reached the
// hold deadline.
func (h *Handler) EndHold(start time.Time, timedOut bool) {
	if timedOut {
		h.holdTimeouts.Add(1)
	}
	h.episodeEnd(time.Since(start), h.held.Add(-1) == 0)
}

// HoldTimeoutError is the error of a request no upstream could take within
// the hold timeout; last is the last attempt's error (nil if none was
// made) and lastUp its upstream.
func (h *Handler) HoldTimeoutError(last error, lastUp string) error {
	return &holdError{timeout: h.cfg.HoldTimeout, why: h.pool.Unavailable(), last: last, lastUp: lastUp}
}

// RetryAfter applies the retry rule to an attempt on upstream up that
// failed with err: nil means send again, on another upstream if there is
// one (the retry is counted); otherwise the error to answer with. A
// connection that could not be made is always retried (nothing was sent);
// any other failure only for a replayable request none of whose body was
// sent, and never after a timeout or a response that had begun: the
// backend did receive the request then, and asking again asks for the
// same. attempt counts from 1; MaxAttempts bounds it.
func (h *Handler) RetryAfter(err error, method string, replay, bodySent bool, up string, attempt int) error {
	dial := isDialError(err)
	if !dial && !replay {
		return &upstreamError{up: up, err: err, notRetried: method}
	}
	if !dial && (isTimeout(err) || errors.Is(err, errResponseStarted) || bodySent) {
		return &upstreamError{up: up, err: err}
	}
	if attempt >= h.cfg.MaxAttempts {
		return &upstreamError{up: up, err: err, attempts: attempt}
	}
	h.retries.Add(1)
	return nil
}

// IsDialError reports whether err is a connection that could not be made.
func IsDialError(err error) bool { return isDialError(err) }

// ClientError is the error of a request whose body the client sent
// malformed (a 400 that closes the connection).
func ClientError(err error) error { return &clientError{err: err} }

// UpstreamError is the error of a request whose upstream failed in a way
// that is not retried (a bad or late response).
func UpstreamError(up string, err error) error { return &upstreamError{up: up, err: err} }

// Fail classifies err as ClassifyError does (the client is still there)
// and logs it once per burst, as the Handler does for its own failures.
func (h *Handler) Fail(err error, method, uri string) Failure {
	f := classify(false, err, h.cfg.MaxHeld)
	h.errs.note(f.key, f.Status, method, uri, f.Message)
	return f
}

// Observe hands e to the Observer, if there is one; Observing says whether
// there is, so a plane can skip filling in an Exchange nobody reads.
func (h *Handler) Observe(e *Exchange) {
	if h.cfg.Observer != nil {
		h.cfg.Observer.Observe(e)
	}
}

// Observing reports whether the Handler has an Observer.
func (h *Handler) Observing() bool { return h.cfg.Observer != nil }

// Body is the plain-text body of the answer: status, text and reason.
func (f Failure) Body() string {
	return fmt.Sprintf("%d %s: %s\n", f.Status, http.StatusText(f.Status), f.Message)
}

// UpstreamOptions are an upstream's connection settings, for a data plane
// that makes its own connections instead of using Upstream.Transport.
// Zero fields take the Transport defaults.
type UpstreamOptions struct {
	MaxIdle                int
	IdleTimeout            time.Duration
	DialTimeout            time.Duration
	ResponseHeaderTimeout  time.Duration
	ReadTimeout            time.Duration
	MaxResponseHeaderBytes int
	// ExpectContinueTimeout is how long a body announced with Expect:
	// 100-continue waits for the backend's 100 Continue.
	ExpectContinueTimeout time.Duration
}

// DefaultExpectContinueTimeout is UpstreamOptions.ExpectContinueTimeout's
// default, and what backends give net/http's Transport.
const DefaultExpectContinueTimeout = time.Second

// WithDefaults fills zero fields with the Transport defaults.
func (o UpstreamOptions) WithDefaults() UpstreamOptions {
	if o.MaxIdle <= 0 {
		o.MaxIdle = DefaultTransportMaxIdle
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultTransportIdleTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultTransportDialTimeout
	}
	if o.MaxResponseHeaderBytes <= 0 {
		o.MaxResponseHeaderBytes = DefaultMaxResponseHeaderBytes
	}
	if o.ExpectContinueTimeout <= 0 {
		o.ExpectContinueTimeout = DefaultExpectContinueTimeout
	}
	return o
}

// ConnUpstream is an Upstream that tells a data plane how to connect to it
// and when its pooled connections must go (its epoch moves when the
// server restarts: idle connections to the old one are closed).
type ConnUpstream interface {
	Upstream
	Options() UpstreamOptions
	Epoch() uint64
}

// ProxiedUpstream is an Upstream that may want each connection a data
// plane makes for a client's request to begin with a PROXY protocol
// header. backends.Backend is one; the net/http plane's dialer writes the
// same header.
type ProxiedUpstream interface {
	Upstream
	// ProxyHeader appends to dst the header naming client and local (the
	// address the client connected to) and returns it; it returns dst
	// unchanged when the upstream is not sent the PROXY protocol. A
	// connection that begins with a header belongs to that one request:
	// it is made for it and never pooled.
	ProxyHeader(dst []byte, client, local netip.AddrPort) []byte
}

// PassiveUpstream is an Upstream that watches how its attempts end, for
// passive health detection. Both planes call Answered once per attempt,
// where net/http's RoundTrip returns: with the response's status once its
// header came (err nil), or with the error that ended the attempt before
// one did; never when the client went away.
type PassiveUpstream interface {
	Upstream
	Answered(status int, err error)
}
