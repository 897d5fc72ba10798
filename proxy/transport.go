package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Defaults applied by Transport to zero fields.
const (
	DefaultTransportMaxIdle     = 512
	DefaultTransportIdleTimeout = 4 * time.Second
	DefaultTransportDialTimeout = 5 * time.Second
	// DefaultMaxResponseHeaderBytes bounds a response's header block
	// (informational responses included), like the client side's
	// max_header_bytes; a larger one is a 502.
	DefaultMaxResponseHeaderBytes = 64 << 10
)

// maxInformational bounds the 1xx responses skipped before the final one,
// as Go's http.Transport does.
const maxInformational = 5

// Transport is an HTTP/1.1 client for one backend address, built for the
// proxy's hot path: GET-like requests without a body over pooled keep-alive
// connections. Unlike http.Transport it runs each exchange on the calling
// goroutine (no per-connection read and write goroutines to hand off to).
// A connection goes back to the pool only when its response was read to
// the end and nothing more came with it, and a pooled connection is looked
// at before every use: one the server closed, or one on which anything
// arrived while it was idle, is closed and never used (an over-long or
// unsolicited response must not become the next client's answer). One
// that still turns out closed before any of the response came back is
// replaced by a new connection, once (the request has no body). Idle
// connections are closed at IdleTimeout even when no request comes.
// Requests with a body, and protocol upgrades, go to Fallback. It is safe
// for concurrent use.
type Transport struct {
	Addr                  string        // host:port
	MaxIdle               int           // pooled idle connections (default 512)
	IdleTimeout           time.Duration // idle connections older than this are closed (default 4s)
	DialTimeout           time.Duration // default 5s
	ResponseHeaderTimeout time.Duration // 0: none
	// ReadTimeout bounds each wait for more of a response body (nginx's
	// proxy_read_timeout); a stalled response is then cut. 0: none.
	ReadTimeout time.Duration
	// MaxResponseHeaderBytes bounds the response header block, about
	// (default DefaultMaxResponseHeaderBytes).
	MaxResponseHeaderBytes int
	Fallback               http.RoundTripper
	// DialContext opens new connections (nil: a net.Dialer with
	// DialTimeout), e.g. a DialGate's.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	mu       sync.Mutex
	idle     []*pconn    // most recently used last
	sweeper  *time.Timer // closes expired idle connections; nil while none are pooled
	sweepGen uint64      // bumped when the pool is emptied, so a late sweep does nothing
}

type pconn struct {
	c      net.Conn
	lr     limitedReader // between c and br: bounds header reads
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

// peekAfter is how long a connection must have been idle before the pool
// checks that the server has not closed it or sent anything: always.
// (A variable for the test of the retry on a connection found closed.)
var peekAfter time.Duration

// RoundTrip sends req and returns the response, whose body must be closed.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Body != nil && req.Body != http.NoBody) || req.Header.Get("Upgrade") != "" || req.Method == http.MethodConnect {
		return t.Fallback.RoundTrip(req)
	}
	ctx := req.Context()
	pc, reused, err := t.conn(ctx)
	if err != nil {
		return nil, err
	}
	for {
		stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
		resp, err := t.exchange(pc, req)
		if err == nil {
			resp.Body = &pooledBody{rc: resp.Body, pc: pc, t: t, stop: stop, ctx: ctx, eof: resp.Body == http.NoBody, timeout: t.ReadTimeout, length: resp.ContentLength,
				reuse: !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols}
			return resp, nil
		}
		stop()
		pc.c.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !reused || errors.Is(err, errResponseStarted) {
			return nil, err
		}
		// A pooled connection the server had closed (it may close idle
		// ones when it likes, or it died). The request, which has no body,
		// goes once more on a new connection, as http.Transport does; if
		// that cannot even connect, the pooled ones are dead too.
		if pc, err = t.dial(ctx); err != nil {
			t.CloseIdleConnections()
			return nil, err
		}
		reused = false
	}
}

// errResponseStarted marks a failure after the backend began to answer (a
// malformed, oversized or cut-short response): the request reached it, so
// it is not sent again.
var errResponseStarted = errors.New("proxy: bad response")

// ErrResponseHeaderTooLarge is the error of a response whose header block
// is larger than MaxResponseHeaderBytes.
var ErrResponseHeaderTooLarge = errors.New("proxy: response header too large")

func (t *Transport) exchange(pc *pconn, req *http.Request) (*http.Response, error) {
	if err := writeRequest(pc.bw, req); err != nil {
		return nil, err
	}
	if t.ResponseHeaderTimeout > 0 {
		_ = pc.c.SetReadDeadline(time.Now().Add(t.ResponseHeaderTimeout))
	}
	max := t.MaxResponseHeaderBytes
	if max <= 0 {
		max = DefaultMaxResponseHeaderBytes
	}
	// The bound counts what is read from the socket, and a read may bring
	// some body along: allow one read buffer on top.
	pc.lr.n = int64(max + pc.br.Size())
	defer func() { pc.lr.n = unlimited }()
	for informational := 0; ; informational++ {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			if errors.Is(err, errLimit) {
				err = fmt.Errorf("%w (over %d bytes)", ErrResponseHeaderTooLarge, max)
			}
			if pc.br.Buffered() > 0 || !isConnClosed(err) || informational > 0 {
				return nil, fmt.Errorf("%w: %w", errResponseStarted, err)
			}
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// informational: 100 Continue, 103 Early Hints
			if informational >= maxInformational {
				return nil, fmt.Errorf("%w: more than %d informational (1xx) responses", errResponseStarted, maxInformational)
			}
			continue
		}
		if t.ResponseHeaderTimeout > 0 {
			_ = pc.c.SetReadDeadline(time.Time{})
		}
		return resp, nil
	}
}

const unlimited = 1<<63 - 1

var errLimit = errors.New("limit reached")

// limitedReader reads from c until n bytes were read, then fails.
type limitedReader struct {
	c net.Conn
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errLimit
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= int64(n)
	return n, err
}

func isConnClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// writeRequest writes req in HTTP/1.1 wire format: request line, Host, the
// headers as the proxy prepared them, and no body.
func writeRequest(w *bufio.Writer, req *http.Request) error {
	uri := req.URL.RequestURI()
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	for k, vs := range req.Header {
		if k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		for _, v := range vs {
			if k == "User-Agent" && v == "" {
				continue
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	if req.Close {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	return w.Flush()
}

// conn returns a pooled connection that still looks open, or a new one.
func (t *Transport) conn(ctx context.Context) (*pconn, bool, error) {
	idleTimeout := t.IdleTimeout
	if idleTimeout <= 0 {
		idleTimeout = DefaultTransportIdleTimeout
	}
	now := time.Now()
	for {
		t.mu.Lock()
		n := len(t.idle)
		if n == 0 {
			t.mu.Unlock()
			break
		}
		pc := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		idle := now.Sub(pc.idleAt)
		// Checked before every use, at one syscall: a server that closed
		// it, or sent anything while it was idle (an over-long response,
		// an unsolicited one), makes it unusable. A request on one the
		// server closes just now fails and is retried, being replayable.
		if idle > idleTimeout || idle >= peekAfter && !pc.usable() {
			pc.c.Close()
			continue
		}
		return pc, true, nil
	}
	pc, err := t.dial(ctx)
	return pc, false, err
}

// dial opens a new connection to the backend.
func (t *Transport) dial(ctx context.Context) (*pconn, error) {
	d := t.DialTimeout
	if d <= 0 {
		d = DefaultTransportDialTimeout
	}
	dial := t.DialContext
	if dial == nil {
		dialer := net.Dialer{Timeout: d}
		dial = dialer.DialContext
	}
	c, err := dial(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	pc := &pconn{c: c, lr: limitedReader{c: c, n: unlimited}, bw: bufio.NewWriterSize(c, 4<<10)}
	pc.br = bufio.NewReaderSize(&pc.lr, 32<<10)
	return pc, nil
}

// usable peeks at an idle connection without blocking: a server that
// closed it (EOF) or sent something unasked makes it unusable.
func (pc *pconn) usable() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	sc, ok := pc.c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = true
	var b [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// EAGAIN: nothing to read, still open. n == 0: EOF. n > 0: junk.
		ok = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return ok
}

func (t *Transport) put(pc *pconn) {
	max := t.MaxIdle
	if max <= 0 {
		max = DefaultTransportMaxIdle
	}
	pc.idleAt = time.Now()
	t.mu.Lock()
	if len(t.idle) >= max {
		t.mu.Unlock()
		pc.c.Close()
		return
	}
	t.idle = append(t.idle, pc)
	if t.sweeper == nil {
		gen := t.sweepGen
		t.sweeper = time.AfterFunc(t.idleTimeout(), func() { t.sweep(gen) })
	}
	t.mu.Unlock()
}

func (t *Transport) idleTimeout() time.Duration {
	if t.IdleTimeout > 0 {
		return t.IdleTimeout
	}
	return DefaultTransportIdleTimeout
}

// sweep closes the idle connections that reached IdleTimeout (the oldest
// are first in the pool) and runs again when the next one will, so no
// connection the server closed lingers in CLOSE_WAIT while no request
// comes. One timer per Transport, armed only while connections are idle.
func (t *Transport) sweep(gen uint64) {
	timeout := t.idleTimeout()
	now := time.Now()
	t.mu.Lock()
	if gen != t.sweepGen {
		t.mu.Unlock()
		return // CloseIdleConnections ran meanwhile and owns a new timer
	}
	n := 0
	for n < len(t.idle) && now.Sub(t.idle[n].idleAt) >= timeout {
		n++
	}
	expired := make([]*pconn, n)
	copy(expired, t.idle[:n])
	rest := copy(t.idle, t.idle[n:])
	clear(t.idle[rest:])
	t.idle = t.idle[:rest]
	if len(t.idle) > 0 {
		t.sweeper.Reset(t.idle[0].idleAt.Add(timeout).Sub(now))
	} else {
		t.sweeper = nil
	}
	t.mu.Unlock()
	for _, pc := range expired {
		pc.c.Close()
	}
}

// CloseIdleConnections closes the pooled connections, and the fallback's.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	if t.sweeper != nil {
		t.sweeper.Stop()
		t.sweeper = nil
	}
	t.sweepGen++
	t.mu.Unlock()
	for _, pc := range idle {
		pc.c.Close()
	}
	if ci, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// pooledBody returns its connection to the pool once the response body
// was read to its end, and closes it otherwise.
type pooledBody struct {
	rc      io.ReadCloser
	ctx     context.Context
	pc      *pconn
	t       *Transport
	stop    func() bool
	timeout time.Duration // ReadTimeout
	length  int64         // Content-Length, or -1
	n       int64         // body bytes read
	reuse   bool
	eof     bool
	done    bool
}

// Buffered reports whether the next Read can return without waiting for
// the server.
func (b *pooledBody) Buffered() bool {
	return b.eof || b.done || b.pc.br.Buffered() > 0 || b.length >= 0 && b.n >= b.length
}

func (b *pooledBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.timeout > 0 && !b.eof && b.pc.br.Buffered() == 0 {
		// This read waits for the server: bound the wait. The context's
		// AfterFunc poisons the deadline to abort; if it already ran,
		// this would undo it, so look again after setting it.
		_ = b.pc.c.SetReadDeadline(time.Now().Add(b.timeout))
		if err := b.ctx.Err(); err != nil {
			return 0, err
		}
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil && b.ctx.Err() != nil:
		// The client went away and poisoned the deadline: say so, rather
		// than "i/o timeout".
		err = b.ctx.Err()
	}
	return n, err
}

func (b *pooledBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	err := b.rc.Close()
	if !b.stop() || !b.eof || !b.reuse || b.pc.br.Buffered() > 0 {
		// The context fired (the deadline is poisoned), the body was cut
		// short, the exchange asked for the connection to close, or the
		// server sent more than the response: whatever follows is not an
		// answer to anything we will ask, so the connection is not reused.
		b.pc.c.Close()
		return err
	}
	if b.timeout > 0 {
		_ = b.pc.c.SetReadDeadline(time.Time{})
	}
	b.t.put(b.pc)
	return err
}

// ReadTimeoutDialer wraps dial so that on each connection every read after
// the first byte arrived waits at most timeout (the first, for the response
// header, is bounded by the caller's response header timeout). It is for
// connections that carry one exchange (keep-alives off): a response body
// that stalls is cut instead of holding the client forever.
func ReadTimeoutDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error), timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if timeout <= 0 {
		return dial
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &readTimeoutConn{Conn: c, timeout: timeout}, nil
	}
}

type readTimeoutConn struct {
	net.Conn
	timeout time.Duration
	started bool // only the transport's one reader goroutine reads
}

func (c *readTimeoutConn) Read(p []byte) (int, error) {
	if c.started {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.started = true
	}
	return n, err
}
