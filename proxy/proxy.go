package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultHoldTimeout      = 30 * time.Second
	DefaultMaxHeld          = 10000
	DefaultMaxAttempts      = 5
	DefaultErrorLogInterval = 5 * time.Second
)

// Config tunes a Handler. The zero value is usable.
type Config struct {
	// HoldTimeout bounds how long a request waits for a ready backend
	// before it gets 503 (or 502 when backends were failing). Default 30s.
	HoldTimeout time.Duration
	// MaxHeld is how many requests may wait at once; beyond it requests get
	// 503 at once. Default 10000.
	MaxHeld int
	// MaxAttempts bounds how many times one request is sent (retries after
	// connection failures included). Default 5.
	MaxAttempts int
	// Logger receives errors (once per burst) and hold episodes; nil
	// discards them.
	Logger *slog.Logger
	// ErrorLogInterval is the window in which repeats of an error are
	// counted instead of logged. Default 5s.
	ErrorLogInterval time.Duration
}

// Handler is an http.Handler that sends each request to an upstream chosen
// by its Pool, through httputil.ReverseProxy. It holds requests while no
// upstream is ready, retries what is safe to retry, and answers the rest
// with 502, 503 or 504 and a plain-text reason. It is safe for concurrent
// use.
type Handler struct {
	pool Pool
	cfg  Config
	rp   *httputil.ReverseProxy
	log  *slog.Logger
	errs *burstLog

	held         atomic.Int64
	heldTotal    atomic.Int64
	holdTimeouts atomic.Int64
	retries      atomic.Int64
	maxHoldNanos atomic.Int64

	epMu      sync.Mutex
	epStart   time.Time
	epCount   int64
	epLongest time.Duration
	lastHold  atomic.Pointer[HoldEpisode]

	sw switched // 101 connections to backends, by upstream
}

// New returns a Handler over pool.
func New(pool Pool, cfg Config) *Handler {
	if cfg.HoldTimeout <= 0 {
		cfg.HoldTimeout = DefaultHoldTimeout
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = DefaultMaxHeld
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.ErrorLogInterval <= 0 {
		cfg.ErrorLogInterval = DefaultErrorLogInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{pool: pool, cfg: cfg, log: log}
	h.errs = newBurstLog(log, cfg.ErrorLogInterval)
	h.rp = &httputil.ReverseProxy{
		Rewrite:      rewrite,
		Transport:    roundTripper{h},
		BufferPool:   bufferPool{},
		ErrorHandler: h.serveError,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return h
}

// ServeHTTP proxies r.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.rp.ServeHTTP(w, r)
}

// placeholderHost stands in the outbound URL until an upstream is picked.
const placeholderHost = "upstream.baton.invalid"

// rewrite keeps the client's Host header (as HAProxy and Caddy do, so
// name-based virtual hosts keep working), appends the client to
// X-Forwarded-For and sets X-Forwarded-Host and X-Forwarded-Proto.
func rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = placeholderHost
	pr.Out.Host = pr.In.Host
	if xff, ok := pr.In.Header["X-Forwarded-For"]; ok {
		pr.Out.Header["X-Forwarded-For"] = xff
	}
	pr.SetXForwarded()
}

type roundTripper struct{ h *Handler }

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	return rt.h.roundTrip(req)
}

// replayable reports whether a request may be sent again after a failure
// that could have happened after the server read it: GET, HEAD, OPTIONS
// and TRACE without a body, or any request with an idempotency key, the
// rule of Go's own http.Transport. PUT and DELETE are idempotent by RFC
// 9110 but are not replayed: legacy applications often break that rule.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

// roundTrip picks an upstream, holds while none is ready, and retries on
// another one when that is safe:
//   - a connection that could not be made: always (nothing was sent);
//   - any other failure before a response: only for replayable requests.
//
// Requests that are not replayable never travel on a pooled keep-alive
// connection, whose server may be closing it as idle at that very moment
// (Apache does so whenever its workers are busy); they use a fresh
// connection, so a failure there is a real one and is never replayed.
func (h *Handler) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	replay := replayable(req)
	var body *heldBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &heldBody{rc: req.Body}
	}
	var (
		deadline time.Time
		avoid    Upstream
		lastErr  error
		lastUp   string
	)
	for attempt := 1; ; {
		up, err := h.pool.Pick(avoid)
		if err != nil {
			if deadline.IsZero() {
				deadline = time.Now().Add(h.cfg.HoldTimeout)
			}
			if err := h.hold(ctx, deadline); err != nil {
				if errors.Is(err, errHoldTimeout) {
					return nil, &holdError{timeout: h.cfg.HoldTimeout, why: h.pool.Unavailable(), last: lastErr, lastUp: lastUp}
				}
				return nil, err
			}
			continue
		}
		out := *req
		u := *req.URL
		u.Host = up.Addr()
		out.URL = &u
		if body != nil {
			out.Body = body
		}
		resp, err := up.Transport(replay).RoundTrip(&out)
		if err == nil {
			resp.Body = wrapDone(resp.Body, up)
			if d, ok := resp.Body.(*doneRWC); ok {
				h.sw.track(up.Name(), d)
			}
			return resp, nil
		}
		up.Done(err)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		dial := isDialError(err)
		if !dial && !replay {
			return nil, &upstreamError{up: up.Name(), err: err, notRetried: req.Method}
		}
		if !dial && (isTimeout(err) || body != nil && body.read.Load() > 0) {
			return nil, &upstreamError{up: up.Name(), err: err}
		}
		if attempt >= h.cfg.MaxAttempts {
			return nil, &upstreamError{up: up.Name(), err: err, attempts: attempt}
		}
		attempt++
		h.retries.Add(1)
		lastErr, lastUp, avoid = err, up.Name(), up
	}
}

// hold waits until the pool may have an upstream again, the deadline
// passes, or the client goes away.
func (h *Handler) hold(ctx context.Context, deadline time.Time) error {
	if time.Now().After(deadline) {
		return errHoldTimeout
	}
	n := h.held.Add(1)
	if n > int64(h.cfg.MaxHeld) {
		h.held.Add(-1)
		return errTooManyHeld
	}
	start := time.Now()
	h.episodeBegin(start)
	wctx, cancel := context.WithDeadline(ctx, deadline)
	err := h.pool.Wait(wctx)
	cancel()
	d := time.Since(start)
	h.episodeEnd(d, h.held.Add(-1) == 0)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.holdTimeouts.Add(1)
		return errHoldTimeout
	}
	return nil
}

// HoldEpisode summarizes one stretch of time during which requests were
// held because no backend was ready.
type HoldEpisode struct {
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
	Requests int64         `json:"requests"`
	Longest  time.Duration `json:"longest_ns"`
}

func (h *Handler) episodeBegin(t time.Time) {
	h.heldTotal.Add(1)
	h.epMu.Lock()
	if h.epStart.IsZero() {
		h.epStart = t
	}
	h.epCount++
	h.epMu.Unlock()
}

// episodeEnd records one request's wait; the last request of an episode
// logs it, once, however many requests it held.
func (h *Handler) episodeEnd(d time.Duration, last bool) {
	for {
		m := h.maxHoldNanos.Load()
		if int64(d) <= m || h.maxHoldNanos.CompareAndSwap(m, int64(d)) {
			break
		}
	}
	h.epMu.Lock()
	defer h.epMu.Unlock()
	if d > h.epLongest {
		h.epLongest = d
	}
	if !last || h.held.Load() != 0 || h.epStart.IsZero() {
		return
	}
	ep := &HoldEpisode{Start: h.epStart, Duration: time.Since(h.epStart), Requests: h.epCount, Longest: h.epLongest}
	h.lastHold.Store(ep)
	h.epStart, h.epCount, h.epLongest = time.Time{}, 0, 0
	h.log.Info("requests were held: no backend was ready", "requests", ep.Requests,
		"longest", ep.Longest.Round(time.Millisecond), "for", ep.Duration.Round(time.Millisecond))
}

// Stats are the Handler's counters since it was created.
type Stats struct {
	Held         int64         `json:"held"`          // waiting now
	HeldTotal    int64         `json:"held_total"`    // requests that had to wait
	HoldTimeouts int64         `json:"hold_timeouts"` // gave up waiting
	MaxHold      time.Duration `json:"max_hold_ns"`   // longest wait
	Retries      int64         `json:"retries"`       // resent after a connection failure
	LastHold     *HoldEpisode  `json:"last_hold,omitempty"`
}

// Stats reports the Handler's counters.
func (h *Handler) Stats() Stats {
	return Stats{
		Held: h.held.Load(), HeldTotal: h.heldTotal.Load(), HoldTimeouts: h.holdTimeouts.Load(),
		MaxHold: time.Duration(h.maxHoldNanos.Load()), Retries: h.retries.Load(), LastHold: h.lastHold.Load(),
	}
}

var (
	errHoldTimeout = errors.New("hold timeout")
	errTooManyHeld = errors.New("too many held requests")
)

type holdError struct {
	timeout time.Duration
	why     string
	last    error
	lastUp  string
}

func (e *holdError) Error() string {
	if e.last != nil {
		return fmt.Sprintf("no backend could take the request within %s (%s; last error from %s: %v)", e.timeout, e.why, e.lastUp, e.last)
	}
	return fmt.Sprintf("no backend ready within %s (%s)", e.timeout, e.why)
}

type upstreamError struct {
	up         string
	err        error
	notRetried string // method, when the failure may have come after the backend read the request
	attempts   int
}

func (e *upstreamError) Error() string {
	switch {
	case e.notRetried != "":
		return fmt.Sprintf("backend %s failed after the request was sent: %v (not retried: a %s may have had side effects)", e.up, e.err, e.notRetried)
	case e.attempts > 0:
		return fmt.Sprintf("backend %s: %v (gave up after %d attempts)", e.up, e.err, e.attempts)
	}
	return fmt.Sprintf("backend %s: %v", e.up, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

// serveError maps a failure to a status and a one-line plain-text reason.
func (h *Handler) serveError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		code    int
		key     = "error"
		he      *holdError
		ue      *upstreamError
		message = err.Error()
	)
	switch {
	case r.Context().Err() != nil:
		// The client went away; there is nobody to answer.
		return
	case errors.Is(err, errTooManyHeld):
		code, key = http.StatusServiceUnavailable, "max_held"
		message = fmt.Sprintf("too many requests waiting for a backend (max_held %d)", h.cfg.MaxHeld)
		w.Header().Set("Retry-After", "1")
	case errors.As(err, &he):
		if he.last != nil {
			code, key = http.StatusBadGateway, "hold/"+he.lastUp
		} else {
			code, key = http.StatusServiceUnavailable, "hold"
			w.Header().Set("Retry-After", "1")
		}
	case errors.As(err, &ue) && isTimeout(ue.err):
		code, key = http.StatusGatewayTimeout, "timeout/"+ue.up
	case errors.As(err, &ue):
		code, key = http.StatusBadGateway, "upstream/"+ue.up
	default:
		code = http.StatusBadGateway
	}
	h.errs.note(key, code, r, message)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: %s\n", code, http.StatusText(code), message)
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// heldBody is a request body that survives a failed attempt: the transport
// closes what it is given on error, so Close does nothing here (the server
// closes the real body), and Read counts bytes, so a retry happens only if
// none were sent.
type heldBody struct {
	rc   io.ReadCloser
	read atomic.Int64
}

func (b *heldBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *heldBody) Close() error { return nil }

// wrapDone calls up.Done once the response body is closed.
func wrapDone(body io.ReadCloser, up Upstream) io.ReadCloser {
	d := &doneBody{ReadCloser: body, up: up}
	if rw, ok := body.(io.ReadWriteCloser); ok {
		// A 101 Switching Protocols body is the connection itself. A
		// WebSocket is not a request in flight: counting it would hold a
		// backend's drain (before a restart) for as long as it lives, while
		// a graceful restart keeps it open anyway.
		d.once.Do(func() { up.Done(nil) })
		return &doneRWC{doneBody: d, w: rw}
	}
	return d
}

type doneBody struct {
	io.ReadCloser
	up   Upstream
	once sync.Once
}

func (d *doneBody) Close() error {
	err := d.ReadCloser.Close()
	d.once.Do(func() { d.up.Done(nil) })
	return err
}

type doneRWC struct {
	*doneBody
	w       io.Writer
	untrack func() // set by switched.track
}

func (d *doneRWC) Close() error {
	err := d.doneBody.Close()
	if d.untrack != nil {
		d.untrack()
	}
	return err
}

func (d *doneRWC) Write(p []byte) (int, error) { return d.w.Write(p) }

// bufferPool reuses ReverseProxy's copy buffers instead of allocating 32 KiB
// per response.
type bufferPool struct{}

const bufferSize = 32 << 10

var buffers = sync.Pool{New: func() any { return new([bufferSize]byte) }}

func (bufferPool) Get() []byte { return buffers.Get().(*[bufferSize]byte)[:] }

func (bufferPool) Put(b []byte) {
	if cap(b) >= bufferSize {
		buffers.Put((*[bufferSize]byte)(b[:bufferSize]))
	}
}
