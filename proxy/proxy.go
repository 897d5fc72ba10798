package proxy

import (
	"bufio"
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
	// Observer, if set, receives every finished request (access log,
	// metrics).
	Observer Observer
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
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) { h.serveError(w, r, err) },
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return h
}

// ServeHTTP proxies r.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := &respWriter{w: w}
	rw.ex.Start = time.Now()
	r = r.WithContext(context.WithValue(r.Context(), respWriterKey{}, rw))
	defer func() {
		v := recover()
		switch {
		case v == nil:
			rw.finish()
		case v == http.ErrAbortHandler && rw.abort():
			// The response failed before any of it reached the client:
			// that is a 502, not an empty reply.
			rw.errStatus = h.serveError(w, r, rw.failure)
			rw.ex.Status = rw.errStatus
		default:
			// Cut short after some of it reached the client: net/http
			// closes the connection, which the client sees.
			rw.ex.Term = TermBackendError
			if r.Context().Err() != nil {
				rw.ex.Term = TermClientAborted
			}
		}
		if h.cfg.Observer != nil {
			h.observe(rw, r)
		}
		if v != nil && !(v == http.ErrAbortHandler && rw.errStatus != 0) {
			panic(v)
		}
	}()
	h.rp.ServeHTTP(rw, r)
}

// observe completes rw's Exchange and hands it to the Observer.
func (h *Handler) observe(rw *respWriter, r *http.Request) {
	e := &rw.ex
	e.Total = time.Since(e.Start)
	e.RemoteAddr, e.Method, e.URI, e.Proto, e.Host = r.RemoteAddr, r.Method, r.RequestURI, r.Proto, r.Host
	e.Referer, e.UserAgent, e.TLS = r.Referer(), r.UserAgent(), r.TLS != nil
	rw.mu.Lock()
	if e.Status == 0 {
		e.Status = rw.code
	}
	e.BytesOut = rw.written
	rw.mu.Unlock()
	h.cfg.Observer.Observe(e)
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

// replayable is Replayable for a request the net/http plane received.
func replayable(req *http.Request) bool {
	return Replayable(req.Method, req.Body != nil && req.Body != http.NoBody, req.Header)
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
	rw, _ := ctx.Value(respWriterKey{}).(*respWriter)
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
			held := time.Now()
			err := h.hold(ctx, deadline)
			if rw != nil {
				rw.ex.Held += time.Since(held)
			}
			if err != nil {
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
		sent := time.Now()
		resp, err := up.Transport(replay).RoundTrip(&out)
		if rw != nil {
			rw.ex.Backend, rw.ex.Attempts, rw.ex.Upstream = up.Name(), attempt, time.Since(sent)
			if body != nil {
				rw.ex.BytesIn = body.read.Load()
			}
		}
		if err == nil {
			resp.Body = wrapDone(resp.Body, up, rw, up.Name())
			if d, ok := resp.Body.(*doneRWC); ok {
				h.sw.track(up.Name(), d)
			}
			return resp, nil
		}
		if cerr := body.clientErr(); cerr != nil {
			// The client's body was at fault, not the backend.
			up.Done(nil)
			return nil, &clientError{err: cerr}
		}
		up.Done(err)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err := h.RetryAfter(err, req.Method, replay, body != nil && body.read.Load() > 0, up.Name(), attempt); err != nil {
			return nil, err
		}
		attempt++
		if rw != nil && isDialError(err) {
			rw.ex.DialRetries++
		}
		lastErr, lastUp, avoid = err, up.Name(), up
	}
}

// hold waits until the pool may have an upstream again, the deadline
// passes, or the client goes away.
func (h *Handler) hold(ctx context.Context, deadline time.Time) error {
	if time.Now().After(deadline) {
		return errHoldTimeout
	}
	start, err := h.BeginHold()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithDeadline(ctx, deadline)
	err = h.pool.Wait(wctx)
	cancel()
	timedOut := err != nil && ctx.Err() == nil
	h.EndHold(start, timedOut)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
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

// clientError is a request that failed because of what the client sent
// (a malformed chunked body, a body cut short): a 400, the client's fault.
type clientError struct{ err error }

func (e *clientError) Error() string { return "malformed request body: " + e.err.Error() }

func (e *clientError) Unwrap() error { return e.err }

// serveError answers a failure with its status and a one-line plain-text
// reason (ClassifyError), logged once per burst.
func (h *Handler) serveError(w http.ResponseWriter, r *http.Request, err error) int {
	f := ClassifyError(r.Context(), err, h.cfg.MaxHeld)
	if rw, ok := r.Context().Value(respWriterKey{}).(*respWriter); ok {
		rw.ex.Term = f.Term
	}
	if f.Term == TermClientAborted {
		return 0 // the client went away; there is nobody to answer
	}
	h.errs.note(f.key, f.Status, r.Method, r.RequestURI, f.Message)
	if f.RetryAfter {
		w.Header().Set("Retry-After", "1")
	}
	if f.Close {
		w.Header().Set("Connection", "close") // e.g. the rest of a bad body is unreadable
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(f.Status)
	io.WriteString(w, f.Body())
	return f.Status
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
// none were sent. It keeps the client's own read error (a malformed
// chunked body, a body cut short), which makes the failure the client's.
type heldBody struct {
	rc   io.ReadCloser
	read atomic.Int64
	err  atomic.Pointer[error]
}

func (b *heldBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.read.Add(int64(n))
	if err != nil && err != io.EOF {
		b.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

// clientErr is the error reading the client's body, if any; b may be nil.
func (b *heldBody) clientErr() error {
	if b == nil {
		return nil
	}
	if p := b.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (b *heldBody) Close() error { return nil }

// wrapDone calls up.Done once the response body is closed; while the
// response header has not reached the client, a read that makes it wait
// for the backend sends the header first (see respWriter).
func wrapDone(body io.ReadCloser, up Upstream, rw *respWriter, name string) io.ReadCloser {
	d := &doneBody{ReadCloser: body, up: up, rw: rw, name: name}
	if rwc, ok := body.(io.ReadWriteCloser); ok {
		// A 101 Switching Protocols body is the connection itself. A
		// WebSocket is not a request in flight: counting it would hold a
		// backend's drain (before a restart) for as long as it lives, while
		// a graceful restart keeps it open anyway.
		d.once.Do(func() { up.Done(nil) })
		return &doneRWC{doneBody: d, w: rwc}
	}
	return d
}

type doneBody struct {
	io.ReadCloser
	up   Upstream
	rw   *respWriter
	name string
	once sync.Once
}

func (d *doneBody) Read(p []byte) (int, error) {
	if d.rw == nil || !d.rw.pending() {
		return d.ReadCloser.Read(p)
	}
	if b, ok := d.ReadCloser.(interface{ Buffered() bool }); ok && b.Buffered() {
		return d.ReadCloser.Read(p)
	}
	// The status and header (and maybe some of the body) are known but
	// held back, so that a response failing before any byte reaches the
	// client can still become a 502; if the backend makes us wait, the
	// client gets them now.
	t := time.AfterFunc(headerFlushDelay, d.rw.flushHeld)
	n, err := d.ReadCloser.Read(p)
	t.Stop()
	if err != nil && err != io.EOF {
		d.rw.noteFailure(&upstreamError{up: d.name, err: err})
	}
	return n, err
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

// headerFlushDelay is how long a response is held back while the backend
// sends nothing more.
const headerFlushDelay = 5 * time.Millisecond

// heldMax is how much of a response body respWriter holds back with the
// header: a small response travels whole or becomes a 502.
const heldMax = 4 << 10

var heldBufs = sync.Pool{New: func() any { return new([heldMax]byte) }}

type respWriterKey struct{}

// respWriter holds a response's status, header and first few KiB back
// until the body is done, more arrives, or the backend makes the proxy
// wait (headerFlushDelay), so that a response that fails before anything
// reached the client is answered 502 instead of an empty or cut reply.
// Its methods may be called from the handler's goroutine and from the
// flush timer; mu orders them.
type respWriter struct {
	w http.ResponseWriter

	mu        sync.Mutex
	code      int            // held back; 0 if none
	held      *[heldMax]byte // body bytes held back, nil if none
	nheld     int            // how many
	committed bool           // something was passed to w
	done      bool           // the handler returned: w must not be touched
	failure   error          // why the backend's response broke
	written   int64          // body bytes passed on
	errStatus int            // the status of the error response written after an abort

	ex Exchange // filled as the request goes
}

// Header is under mu: the flush timer's WriteHeader may still be running
// when ReverseProxy reads the header again (for trailers) after the body,
// and net/http's response is not safe for that (a race the differential
// fuzzer's seed 5a055b4310374b68 showed under -race).
func (rw *respWriter) Header() http.Header {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.w.Header()
}

func (rw *respWriter) WriteHeader(code int) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if code < 200 {
		// Informational responses go at once (net/http writes them as
		// they come).
		rw.w.WriteHeader(code)
		return
	}
	if rw.code == 0 && !rw.committed {
		rw.code = code
	}
}

func (rw *respWriter) commitLocked() error {
	if rw.committed {
		return nil
	}
	rw.committed = true
	if rw.code != 0 {
		rw.w.WriteHeader(rw.code)
	}
	if rw.held == nil {
		return nil
	}
	_, err := rw.w.Write(rw.held[:rw.nheld])
	heldBufs.Put(rw.held)
	rw.held, rw.nheld = nil, 0
	return err
}

func (rw *respWriter) Write(p []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if !rw.committed && rw.nheld+len(p) <= heldMax {
		if rw.held == nil {
			rw.held = heldBufs.Get().(*[heldMax]byte)
		}
		rw.nheld += copy(rw.held[rw.nheld:], p)
		rw.written += int64(len(p))
		return len(p), nil
	}
	if err := rw.commitLocked(); err != nil {
		return 0, err
	}
	n, err := rw.w.Write(p)
	rw.written += int64(n)
	return n, err
}

// Flush implements http.Flusher (ReverseProxy flushes streamed responses).
func (rw *respWriter) Flush() {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	_ = rw.commitLocked()
	_ = http.NewResponseController(rw.w).Flush()
}

// Hijack implements http.Hijacker for protocol upgrades.
func (rw *respWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.committed = true
	rw.code, rw.ex.Term = http.StatusSwitchingProtocols, TermUpgraded
	return http.NewResponseController(rw.w).Hijack()
}

// Unwrap lets http.ResponseController reach the connection.
func (rw *respWriter) Unwrap() http.ResponseWriter { return rw.w }

// pending reports whether a status or body bytes are held back.
func (rw *respWriter) pending() bool {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return !rw.committed && (rw.code != 0 || rw.nheld > 0)
}

// flushHeld sends what is held back to the client.
func (rw *respWriter) flushHeld() {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.done || rw.committed {
		return
	}
	_ = rw.commitLocked()
	_ = http.NewResponseController(rw.w).Flush()
}

func (rw *respWriter) noteFailure(err error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.failure == nil {
		rw.failure = err
	}
}

// abort ends a response whose copy failed: it reports true when nothing
// reached the client yet, after dropping what was held back, so that an
// error response can be written instead.
func (rw *respWriter) abort() bool {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.done = true
	if rw.committed {
		return false
	}
	if rw.held != nil {
		heldBufs.Put(rw.held)
		rw.held, rw.nheld = nil, 0
	}
	rw.written, rw.code = 0, 0
	if rw.failure == nil {
		rw.failure = errors.New("backend response failed")
	}
	clear(rw.w.Header())
	return true
}

// finish sends what is held back when the handler ends.
func (rw *respWriter) finish() {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	_ = rw.commitLocked()
	rw.done = true
}

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
