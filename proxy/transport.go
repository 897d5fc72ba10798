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
)

// Transport is an HTTP/1.1 client for one backend address, built for the
// proxy's hot path: GET-like requests without a body over pooled keep-alive
// connections. Unlike http.Transport it runs each exchange on the calling
// goroutine (no per-connection read and write goroutines to hand off to).
// A pooled connection idle for a while is looked at before use; one that
// still turns out closed before any of the response came back is replaced
// by a new connection, once (the request has no body). Requests with a
// body, and protocol upgrades, go to Fallback. It is safe for concurrent
// use.
type Transport struct {
	Addr                  string        // host:port
	MaxIdle               int           // pooled idle connections (default 512)
	IdleTimeout           time.Duration // idle connections older than this are closed (default 4s)
	DialTimeout           time.Duration // default 5s
	ResponseHeaderTimeout time.Duration // 0: none
	Fallback              http.RoundTripper
	// DialContext opens new connections (nil: a net.Dialer with
	// DialTimeout), e.g. a DialGate's.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	mu   sync.Mutex
	idle []*pconn // most recently used last
}

type pconn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

// peekAfter is how long a connection must have been idle before the pool
// checks that the server has not closed it. (A variable for tests.)
var peekAfter = 20 * time.Millisecond

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
			resp.Body = &pooledBody{rc: resp.Body, pc: pc, t: t, stop: stop, ctx: ctx, eof: resp.Body == http.NoBody,
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

var errResponseStarted = errors.New("proxy: connection failed in the response")

func (t *Transport) exchange(pc *pconn, req *http.Request) (*http.Response, error) {
	if err := writeRequest(pc.bw, req); err != nil {
		return nil, err
	}
	if t.ResponseHeaderTimeout > 0 {
		_ = pc.c.SetReadDeadline(time.Now().Add(t.ResponseHeaderTimeout))
	}
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			if pc.br.Buffered() > 0 || !isConnClosed(err) {
				return nil, fmt.Errorf("%w: %w", errResponseStarted, err)
			}
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // informational: 100 Continue, 103 Early Hints
		}
		if t.ResponseHeaderTimeout > 0 {
			_ = pc.c.SetReadDeadline(time.Time{})
		}
		return resp, nil
	}
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
		// A connection idle for a moment is taken as it is (a request on
		// one the server just closed fails and is retried, being
		// replayable); an older one is checked first, at one syscall.
		if idle > idleTimeout || idle > peekAfter && !pc.usable() {
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
	return &pconn{c: c, br: bufio.NewReaderSize(c, 32<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
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
	t.mu.Unlock()
}

// CloseIdleConnections closes the pooled connections, and the fallback's.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
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
	rc    io.ReadCloser
	ctx   context.Context
	pc    *pconn
	t     *Transport
	stop  func() bool
	reuse bool
	eof   bool
	done  bool
}

func (b *pooledBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
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
	if !b.stop() || !b.eof || !b.reuse {
		// The context fired (the deadline is poisoned), the body was cut
		// short, or the exchange asked for the connection to close.
		b.pc.c.Close()
		return err
	}
	b.t.put(b.pc)
	return err
}
