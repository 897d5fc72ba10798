package epoll

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// Fallback serves with net/http what the loops do not: the connections a
// loop hands over (doc.go says which), and on a TLS listener those whose
// handshake chose what a loop does not speak (HTTP/2, TLS 1.2), as
// *tls.Conn. A handed-over connection serves the bytes the loop had read
// first; one from a TLS loop reports its tls.ConnectionState through a
// ConnectionState method. handoff.Server is the Fallback baton uses (it
// drains WebSockets and HTTP/2 as the net/http plane does); nil gives a
// plain net/http server.
//
// The listener given to Serve yields connections until the Server has
// drained the Fallback; its Close does nothing (the Server closes it).
type Fallback interface {
	Serve(net.Listener) error
	// Connections reports how many connections the Fallback serves.
	Connections() int
	// BeginDrain makes responses close their connections (HTTP/2:
	// GOAWAY) while connections may still be handed over.
	BeginDrain()
	// CloseIdle closes idle keep-alive connections, for a final stop.
	CloseIdle()
	// Drain waits for the connections to end; when ctx ends it closes
	// what is left (it may keep long-lived ones for a while).
	Drain(context.Context) error
}

// handoverListener is the Fallback's listener: the connections the loops
// and the TLS front hand over.
type handoverListener struct {
	addr net.Addr

	mu      sync.Mutex
	queue   []net.Conn
	out     bool // one was taken and Accept was not called again since
	closed  bool
	readyC  chan struct{} // queue grew, or closed
	drained chan struct{} // queue emptied (signalled, not closed)
}

func newHandoverListener(addr net.Addr) *handoverListener {
	return &handoverListener{addr: addr, readyC: make(chan struct{}, 1), drained: make(chan struct{}, 1)}
}

// push queues c; false if the listener is shut (the caller closes c).
func (l *handoverListener) push(c net.Conn) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.queue = append(l.queue, c)
	l.mu.Unlock()
	signal(l.readyC)
	return true
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (l *handoverListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		// net/http calls Accept again only after it registered the
		// connection it took before (http.StateNew).
		l.out = false
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			l.out = true
			l.mu.Unlock()
			return c, nil
		}
		closed := l.closed
		l.mu.Unlock()
		signal(l.drained)
		if closed {
			return nil, net.ErrClosed
		}
		<-l.readyC
	}
}

// settled waits until every connection pushed is in the Fallback's hands
// (registered by net/http), or ctx ends.
func (l *handoverListener) settled(ctx context.Context) {
	for {
		l.mu.Lock()
		busy := len(l.queue) > 0 || l.out
		l.mu.Unlock()
		if !busy {
			return
		}
		select {
		case <-l.drained:
		case <-ctx.Done():
			return
		}
	}
}

// Close does nothing: connections may be handed over while the Fallback
// drains. shut ends the listener.
func (l *handoverListener) Close() error   { return nil }
func (l *handoverListener) Addr() net.Addr { return l.addr }

// shut makes Accept fail and closes what is queued.
func (l *handoverListener) shut() {
	l.mu.Lock()
	l.closed = true
	q := l.queue
	l.queue = nil
	l.mu.Unlock()
	for _, c := range q {
		c.Close()
	}
	signal(l.readyC)
}

// handedConn is a plain connection handed over by a loop: the bytes the
// loop had read come first.
type handedConn struct {
	net.Conn
	pre []byte
}

func (c *handedConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// netFallback is the Fallback for a Server without one: net/http with the
// same limits, "Connection: close" while draining, and what is left
// closed at the drain deadline.
type netFallback struct {
	s        *Server
	srv      *http.Server
	draining atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	zeroC    chan struct{}
}

func newNetFallback(s *Server) *netFallback {
	f := &netFallback{s: s, conns: map[net.Conn]struct{}{}, zeroC: make(chan struct{}, 1)}
	f.srv = &http.Server{
		Handler:           http.HandlerFunc(f.serveHTTP),
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		MaxHeaderBytes:    s.MaxHeaderBytes,
		ErrorLog:          s.ErrorLog,
		ConnState:         f.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	return f
}

type connKey struct{}

func (f *netFallback) Serve(ln net.Listener) error { return f.srv.Serve(ln) }

func (f *netFallback) connState(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch st {
	case http.StateNew:
		f.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(f.conns, c)
		if len(f.conns) == 0 {
			signal(f.zeroC)
		}
	}
}

func (f *netFallback) Connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *netFallback) BeginDrain() { f.draining.Store(true) }
func (f *netFallback) CloseIdle()  { f.srv.SetKeepAlivesEnabled(false) }

func (f *netFallback) Drain(ctx context.Context) error {
	f.draining.Store(true)
	for f.Connections() > 0 {
		select {
		case <-f.zeroC:
			continue
		case <-ctx.Done():
		}
		break
	}
	n := f.Connections()
	_ = f.srv.Close()
	if n > 0 {
		return &DeadlineError{Addr: f.s.ln.Addr().String(), Closed: n}
	}
	return nil
}

func (f *netFallback) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if cs, ok := r.Context().Value(connKey{}).(TLSConnectionState); ok && r.TLS == nil {
		st := cs.ConnectionState()
		r.TLS = &st
	}
	dw := &drainWriter{ResponseWriter: w, draining: &f.draining}
	f.s.Handler.ServeHTTP(dw, r)
}

// drainWriter adds "Connection: close" to a response whose header is
// written while the server drains (as handoff.Server does).
type drainWriter struct {
	http.ResponseWriter
	draining *atomic.Bool
	wrote    bool
}

func (w *drainWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		if w.draining.Load() && code >= 200 {
			w.ResponseWriter.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *drainWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *drainWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *drainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// TLSConnectionState is implemented by the connections a TLS loop hands
// over: net/http sets Request.TLS only for a *tls.Conn, so a Fallback
// sets it from here.
type TLSConnectionState interface {
	ConnectionState() tls.ConnectionState
}
