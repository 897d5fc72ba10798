package handoff

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults applied by Server to zero fields.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10 // larger headers get 431
)

// Server serves HTTP on one listener and drains without racing its clients.
// While draining, each connection's next response carries "Connection:
// close" (so a keep-alive client learns it must reconnect from an answer,
// not from a close it could be sending into), idle connections are closed
// only at the drain deadline, and hijacked connections (WebSocket and other
// Upgrade requests), which http.Server.Shutdown ignores, are closed then
// too. Set the exported fields before Serve; it is then safe for
// concurrent use.
type Server struct {
	Handler           http.Handler
	ReadHeaderTimeout time.Duration // default DefaultReadHeaderTimeout
	IdleTimeout       time.Duration // default DefaultIdleTimeout
	MaxHeaderBytes    int           // default DefaultMaxHeaderBytes
	ErrorLog          *log.Logger   // net/http's own errors; nil: standard logger
	Logger            *slog.Logger  // failed accepts, once per episode; nil discards
	// TLSConfig, if set, makes Serve terminate TLS; HTTP/2 is served when
	// its NextProtos offer "h2" (see h2.go for how it drains).
	TLSConfig *tls.Config
	// TLSTerminated says that Serve's listener yields connections whose
	// TLS handshake is done already: *tls.Conn, or connections with a
	// ConnectionState method (for Request.TLS). TLSConfig then only says
	// whether HTTP/2 is served.
	TLSTerminated bool
	GoAwayDelay   time.Duration // HTTP/2: graceful to final GOAWAY; default DefaultGoAwayDelay
	// LongDrainTimeout bounds, from the start of Drain, how long
	// WebSockets, other Upgrade connections and streaming responses stay
	// open; the rest keep Drain's deadline. Default DefaultLongDrainTimeout.
	LongDrainTimeout time.Duration
	CloseLinger      time.Duration // default DefaultCloseLinger

	draining atomic.Bool
	final    atomic.Bool // CloseIdle was called: no successor
	stopped  bool        // StopAccepting was called: no connection comes any more
	srv      *http.Server
	h2       *h2Server // nil without TLS and h2

	mu    sync.Mutex
	ln    net.Listener
	conns int // open, or hijacked by an Upgrade request still being served
	// pending counts connections accepted whose StateNew has not come yet:
	// http.Server tracks a connection only after Accept returned it, so a
	// drain that looked at conns alone could end with one just accepted.
	pending  int
	upgraded map[net.Conn]bool // Upgrade requests being served; true once hijacked
	ws       map[net.Conn]*wsConn
	long     map[net.Conn]int      // streaming responses being served, per connection
	all      map[net.Conn]struct{} // open and not hijacked
	idleC    chan struct{}         // closed when draining and nothing is left
	idleOnce sync.Once
}

type connKey struct{}

// Serve accepts connections on ln until StopAccepting; it returns nil then.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.srv != nil {
		s.mu.Unlock()
		return errors.New("handoff: Server.Serve called twice")
	}
	// Issue 7: net/http gives up on accept errors it does not deem
	// temporary (ENOBUFS, ENOMEM); the listener must outlive them all.
	ln = KeepAccepting(ln, s.Logger, ln.Addr().String())
	ln = &countingListener{Listener: ln, s: s}
	s.ln = ln
	s.upgraded = map[net.Conn]bool{}
	s.ws = map[net.Conn]*wsConn{}
	s.long = map[net.Conn]int{}
	s.all = map[net.Conn]struct{}{}
	s.idleC = make(chan struct{})
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: orDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		IdleTimeout:       orDefault(s.IdleTimeout, DefaultIdleTimeout),
		MaxHeaderBytes:    s.MaxHeaderBytes,
		ErrorLog:          s.ErrorLog,
		ConnState:         s.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	if s.srv.MaxHeaderBytes == 0 {
		s.srv.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if s.TLSConfig != nil {
		s.serveTLSLocked()
		if !s.TLSTerminated {
			ln = tls.NewListener(ln, s.TLSConfig)
		}
	}
	srv := s.srv
	s.mu.Unlock()
	err := srv.Serve(ln)
	if s.draining.Load() {
		return nil
	}
	return err
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	dw := drainWriters.Get().(*drainWriter)
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	if cs, ok := c.(interface{ ConnectionState() tls.ConnectionState }); ok && r.TLS == nil {
		st := cs.ConnectionState()
		r.TLS = &st
	}
	*dw = drainWriter{ResponseWriter: w, s: s, conn: c}
	defer func() {
		if dw.long {
			s.unmarkLong(c)
		}
		*dw = drainWriter{}
		drainWriters.Put(dw)
	}()
	// HTTP/2 drains with GOAWAY; "Connection: close" would make the h2
	// server send its final GOAWAY before the graceful one has arrived.
	dw.h2 = r.ProtoMajor >= 2
	if c != nil && r.Header.Get("Upgrade") != "" && httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		dw.websocket = isWebSocket(r)
		s.mu.Lock()
		s.upgraded[c] = false
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			if s.upgraded[c] {
				// Hijacked: connState left it counted until now.
				s.conns--
			}
			delete(s.upgraded, c)
			delete(s.ws, c)
			s.checkIdleLocked()
			s.mu.Unlock()
		}()
	}
	s.Handler.ServeHTTP(dw, r)
}

// drainWriter adds "Connection: close" to a response whose header is
// written while the server drains, so the response in flight when draining
// starts closes its connection too. It is pooled: one per request in flight.
type drainWriter struct {
	http.ResponseWriter
	s         *Server
	conn      net.Conn // nil if unknown
	wrote     bool
	h2        bool
	websocket bool // an Upgrade: websocket request
	long      bool // counted in s.long: a streaming response
}

var drainWriters = sync.Pool{New: func() any { return new(drainWriter) }}

func (w *drainWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		if w.s.draining.Load() && code >= 200 && !w.h2 {
			w.ResponseWriter.Header().Set("Connection", "close")
		}
		if code >= 200 && isStream(w.ResponseWriter.Header()) {
			w.markLong()
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

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush implements http.Flusher for handlers that assert it.
// A response flushed before it is complete is a stream: it is long-lived.
func (w *drainWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	w.markLong()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *drainWriter) markLong() {
	if !w.long && w.conn != nil {
		w.long = true
		w.s.markLong(w.conn)
	}
}

// Hijack implements http.Hijacker for handlers that assert it. A
// WebSocket's connection is wrapped so that baton can close it with a
// close frame (see wsConn), and dropped when the client reads nothing for
// IdleTimeout while there is something to send it.
func (w *drainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil || !w.websocket {
		return c, brw, err
	}
	ws, brw := hijackWS(c, brw, orDefault(w.s.CloseLinger, DefaultCloseLinger), orDefault(w.s.IdleTimeout, DefaultIdleTimeout))
	w.s.mu.Lock()
	w.s.ws[w.conn] = ws
	w.s.mu.Unlock()
	return ws, brw, nil
}

func (s *Server) connState(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.mu.Lock()
		s.pending--
		s.conns++
		s.all[c] = struct{}{}
		s.mu.Unlock()
	case http.StateHijacked:
		s.mu.Lock()
		delete(s.all, c)
		if _, ok := s.upgraded[c]; ok {
			// Counted until its handler returns, then closed at the
			// deadline if it has not.
			s.upgraded[c] = true
		} else {
			s.conns--
			s.checkIdleLocked()
		}
		s.mu.Unlock()
	case http.StateClosed:
		s.mu.Lock()
		delete(s.all, c)
		s.conns--
		s.checkIdleLocked()
		s.mu.Unlock()
	}
}

func (s *Server) checkIdleLocked() {
	if s.stopped && s.conns <= 0 && s.pending <= 0 {
		s.idleOnce.Do(func() { close(s.idleC) })
	}
}

// Connections reports how many client connections are open.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// Addr is the listener's address, or nil before Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// StopAccepting closes the listener (the socket stays open in any other
// process that holds it) and starts draining.
func (s *Server) StopAccepting() {
	s.BeginDrain()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.ln != nil {
		_ = s.ln.Close()
	}
	if s.idleC != nil {
		s.checkIdleLocked()
	}
}

// BeginDrain starts draining while the listener may still yield
// connections (an epoll.Server hands them over as it drains): responses
// close their connections, HTTP/2 connections get their graceful GOAWAY.
// Drain waits only once StopAccepting was called.
func (s *Server) BeginDrain() {
	s.draining.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h2 != nil {
		s.h2.drain()
	}
}

// CloseIdle closes the keep-alive connections that are idle now, and makes
// every later response close its connection. WebSockets get a close frame
// (1001) as Drain begins, and long-lived connections no longer outlive
// Drain's deadline. It is for a final stop, where
// no successor will serve the clients anyway; an upgrade keeps idle
// connections until their next request or the drain deadline instead.
func (s *Server) CloseIdle() {
	s.final.Store(true)
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv != nil {
		srv.SetKeepAlivesEnabled(false)
	}
}

// Drain waits until every connection has closed. When ctx ends first it
// closes what is left, idle keep-alive connections included, except
// long-lived ones (WebSockets and other Upgrade connections, streaming
// responses): those may go on until LongDrainTimeout after Drain began,
// when WebSockets get a close frame (1001) and the rest is closed. It
// says how many connections it closed.
func (s *Server) Drain(ctx context.Context) error {
	longDeadline := time.Now().Add(orDefault(s.LongDrainTimeout, DefaultLongDrainTimeout))
	s.StopAccepting()
	s.mu.Lock()
	srv, idleC, h2 := s.srv, s.idleC, s.h2
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	if h2 != nil {
		defer h2.close()
	}
	final := s.final.Load()
	if final {
		// No successor to move to: waiting helps no WebSocket client.
		s.goAwayWebSockets()
	}
	select {
	case <-idleC:
		return nil
	case <-ctx.Done():
	}
	closed := 0
	if !final && s.hasLong() && time.Now().Before(longDeadline) {
		closed = s.closeShort()
		t := time.NewTimer(time.Until(longDeadline))
		select {
		case <-idleC:
			t.Stop()
			return s.deadlineError(closed)
		case <-t.C:
		}
		if s.goAwayWebSockets() {
			t := time.NewTimer(orDefault(s.CloseLinger, DefaultCloseLinger))
			select {
			case <-idleC:
				t.Stop()
				return s.deadlineError(closed)
			case <-t.C:
			}
		}
	}
	s.mu.Lock()
	closed += s.conns
	for c, hijacked := range s.upgraded {
		if hijacked {
			_ = c.Close()
		}
	}
	s.mu.Unlock()
	_ = srv.Close()
	return s.deadlineError(closed)
}

func (s *Server) deadlineError(closed int) error {
	if closed == 0 {
		return nil
	}
	return &DeadlineError{Addr: s.ln.Addr().String(), Closed: closed}
}

// hasLong reports whether a long-lived connection is open: a streaming
// response or a hijacked Upgrade (one still waiting for its answer is not).
func (s *Server) hasLong() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, hijacked := range s.upgraded {
		if hijacked {
			return true
		}
	}
	return len(s.long) > 0
}

// closeShort closes the connections that are not long-lived and says how
// many.
func (s *Server) closeShort() int {
	s.mu.Lock()
	var short []net.Conn
	for c := range s.all {
		if s.long[c] == 0 {
			short = append(short, c)
		}
	}
	s.mu.Unlock()
	for _, c := range short {
		_ = c.Close()
	}
	return len(short)
}

// goAwayWebSockets sends every WebSocket a close frame (1001), at once,
// and reports whether there were any.
func (s *Server) goAwayWebSockets() bool {
	s.mu.Lock()
	ws := make([]*wsConn, 0, len(s.ws))
	for _, w := range s.ws {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.goAway(CloseGoingAway)
		}()
	}
	wg.Wait()
	return len(ws) > 0
}

// DeadlineError reports connections closed at the drain deadline.
type DeadlineError struct {
	Addr   string
	Closed int
}

func (e *DeadlineError) Error() string {
	return fmt.Sprintf("handoff: %s: drain deadline reached, closed %d connections", e.Addr, e.Closed)
}

// countingListener counts each accepted connection as pending until the
// http.Server reports it new (connState), so that a drain never ends
// between the two (the connection would be cut when the process exits).
type countingListener struct {
	net.Listener
	s *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.pending++
		l.s.mu.Unlock()
	}
	return c, err
}
