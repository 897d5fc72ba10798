package epoll

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// fallback serves the connections a loop hands over (requests with a
// body, Upgrade, HTTP/1.0, anything the loop does not parse itself) with
// net/http and the same proxy.Handler, until they close. It drains as the
// loops do: responses say "Connection: close" once the Server drains, and
// what is left is closed at the deadline.
type fallback struct {
	s   *Server
	srv *http.Server

	mu     sync.Mutex
	queue  []net.Conn
	readyC chan struct{} // signalled when queue grows or on close
	closed bool
	conns  map[*handedConn]struct{}
}

func newFallback(s *Server) *fallback {
	f := &fallback{s: s, readyC: make(chan struct{}, 1), conns: map[*handedConn]struct{}{}}
	f.srv = &http.Server{
		Handler:           http.HandlerFunc(f.serveHTTP),
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		MaxHeaderBytes:    s.MaxHeaderBytes,
		ErrorLog:          s.ErrorLog,
	}
	return f
}

// serve runs net/http on the handed-over connections until close.
func (f *fallback) serve() {
	_ = f.srv.Serve(fallbackListener{f})
}

// handOver gives c (with the bytes already read from it) to net/http. It
// is called on a loop and does not block. c stays counted until closed.
func (f *fallback) handOver(c net.Conn, buffered []byte) {
	f.s.handed.Add(1)
	hc := &handedConn{Conn: c, f: f, pre: buffered}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		hc.Close()
		return
	}
	f.conns[hc] = struct{}{}
	f.queue = append(f.queue, hc)
	f.mu.Unlock()
	select {
	case f.readyC <- struct{}{}:
	default:
	}
}

// closeIdle closes idle keep-alive connections now and every later one
// after its response.
func (f *fallback) closeIdle() { f.srv.SetKeepAlivesEnabled(false) }

// close closes every handed-over connection, upgraded ones included, and
// stops serving.
func (f *fallback) close() {
	f.mu.Lock()
	f.closed = true
	conns := make([]*handedConn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	queued := f.queue
	f.queue = nil
	f.mu.Unlock()
	select {
	case f.readyC <- struct{}{}: // Accept returns net.ErrClosed
	default:
	}
	for _, c := range conns {
		c.Close()
	}
	for _, c := range queued {
		c.Close()
	}
	_ = f.srv.Close()
}

func (f *fallback) serveHTTP(w http.ResponseWriter, r *http.Request) {
	dw := &drainWriter{ResponseWriter: w, s: f.s}
	f.s.Handler.ServeHTTP(dw, r)
}

type fallbackListener struct{ f *fallback }

func (l fallbackListener) Accept() (net.Conn, error) {
	f := l.f
	for {
		f.mu.Lock()
		if len(f.queue) > 0 {
			c := f.queue[0]
			f.queue[0] = nil
			f.queue = f.queue[1:]
			f.mu.Unlock()
			return c, nil
		}
		closed := f.closed
		f.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		<-f.readyC
	}
}

func (l fallbackListener) Close() error   { return nil }
func (l fallbackListener) Addr() net.Addr { return handedAddr{} }

type handedAddr struct{}

func (handedAddr) Network() string { return "tcp" }
func (handedAddr) String() string  { return "handed-over" }

// handedConn is a connection handed over by a loop: the bytes the loop had
// read come first; Close uncounts it once.
type handedConn struct {
	net.Conn
	f      *fallback
	pre    []byte
	closed atomic.Bool
}

func (c *handedConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *handedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.f.mu.Lock()
		delete(c.f.conns, c)
		c.f.mu.Unlock()
		c.f.s.connClosed()
	}
	return err
}

// drainWriter adds "Connection: close" to a response whose header is
// written while the server drains (as handoff.Server does).
type drainWriter struct {
	http.ResponseWriter
	s     *Server
	wrote bool
}

func (w *drainWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		if w.s.draining.Load() && code >= 200 {
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
