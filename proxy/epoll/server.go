package epoll

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

// Defaults applied by Server to zero fields; the same as the net/http
// plane's (handoff.Server).
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

// DefaultLoops is the number of loops for Loops = 0: one per two CPUs,
// at least one. On a small machine shared with the backends one loop
// serves more than two (measured on 2 cores).
func DefaultLoops() int {
	return max(1, runtime.NumCPU()/2)
}

// Server serves HTTP/1.1 on one listener with event loops, through a
// proxy.Handler's rules. It drains as handoff.Server does: while draining,
// each connection's next response says "Connection: close", idle
// keep-alive connections are closed at the drain deadline (at once after
// CloseIdle), and what is left then is closed. Set the exported fields
// before Serve; it is then safe for concurrent use.
type Server struct {
	Handler           *proxy.Handler
	Loops             int           // event loops; default DefaultLoops()
	ReadHeaderTimeout time.Duration // default DefaultReadHeaderTimeout
	IdleTimeout       time.Duration // default DefaultIdleTimeout
	MaxHeaderBytes    int           // default DefaultMaxHeaderBytes; larger headers get 431
	// MaxConns bounds open client connections; at the bound, accepting
	// pauses until one closes. 0: no bound but the file descriptor limit
	// (on EMFILE accepting pauses too).
	MaxConns int
	// ErrorLog receives net/http's own errors for handed-over
	// connections, and failed TLS handshakes; nil: the standard logger.
	ErrorLog *log.Logger
	// Logger receives, once per episode, that TLS connections wait for a
	// file descriptor to move into a loop (as handoff.KeepAccepting logs
	// failed accepts); nil discards.
	Logger *slog.Logger
	// TLSConfig, if set, makes Serve terminate TLS: see tlsFront. Each
	// handshake uses a clone of it whose KeyLogWriter keeps that
	// connection's traffic secrets in memory, for the loop that serves it.
	TLSConfig *tls.Config
	// Fallback serves what the loops do not; nil: plain net/http.
	Fallback Fallback
	// OnHandshake, if set, is told the result of each TLS handshake on a
	// connection the listener gave (resumed: with a session ticket); it
	// is called on the handshake's goroutine and must not block.
	OnHandshake func(c net.Conn, resumed bool, err error)

	draining  atomic.Bool
	closeIdle atomic.Bool
	conns     atomic.Int64 // in loops, or in a TLS handshake
	handed    atomic.Int64 // connections the loops handed over to net/http so far
	zeroC     chan struct{}

	mu      sync.Mutex
	ln      net.Listener
	loops   []*loop
	fb      Fallback
	hl      *handoverListener
	front   *tlsFront // nil without TLS
	started bool
	stopped bool
	loopsC  chan struct{} // closed when the loops have stopped
	doneC   chan struct{} // closed when the loops, the front and the fallback have stopped
}

// Serve runs the loops on ln until the Server has drained; it returns nil
// then, or an error if the loops could not start.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("epoll: Server.Serve called twice")
	}
	s.started = true
	s.ln = ln
	s.zeroC = make(chan struct{}, 1)
	s.doneC = make(chan struct{})
	if s.ReadHeaderTimeout == 0 {
		s.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = DefaultIdleTimeout
	}
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	n := s.Loops
	if n <= 0 {
		n = DefaultLoops()
	}
	s.fb = s.Fallback
	if s.fb == nil {
		s.fb = newNetFallback(s)
	}
	s.hl = newHandoverListener(ln.Addr())
	s.loopsC = make(chan struct{})
	lln := ln // the loops accept on it; with TLS, the front does
	if s.TLSConfig != nil {
		lln = nil
		s.front = newTLSFront(s, ln)
	}
	var err error
	for i := 0; i < n && err == nil; i++ {
		var l *loop
		l, err = newLoop(s, lln, n > 1)
		if err == nil {
			s.loops = append(s.loops, l)
		}
	}
	if err != nil {
		for _, l := range s.loops {
			l.closeFds()
		}
		s.loops = nil
		close(s.loopsC)
		close(s.doneC)
		s.mu.Unlock()
		return err
	}
	loops := s.loops
	stopped := s.stopped
	front := s.front
	s.mu.Unlock()

	var lwg, wg sync.WaitGroup
	for _, l := range loops {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			l.run()
		}()
	}
	if front != nil {
		front.wg.Add(1)
		go front.serve()
	}
	if stopped {
		s.StopAccepting()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = s.fb.Serve(s.hl)
	}()
	lwg.Wait()
	close(s.loopsC)
	if front != nil {
		front.wg.Wait()
	}
	wg.Wait()
	close(s.doneC)
	return nil
}

// handOver gives c to the Fallback; c is no longer the loops' to count.
func (s *Server) handOver(c net.Conn) {
	if !s.hl.push(c) {
		c.Close()
	}
	s.connClosed()
}

// dupListener returns a copy of ln's socket for one loop, through
// SyscallConn (os.File.Fd would make the socket blocking).
func dupListener(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("epoll: listener %T has no file descriptor", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("epoll: listener: %w", err)
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, fmt.Errorf("epoll: listener: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("epoll: dup listener: %w", derr)
	}
	return fd, nil
}

// Connections reports how many client connections are open.
func (s *Server) Connections() int {
	n := int(s.conns.Load())
	s.mu.Lock()
	fb := s.fb
	s.mu.Unlock()
	if fb != nil {
		n += fb.Connections()
	}
	return n
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

// StopAccepting stops the loops accepting (the socket stays open in any
// other process that holds it) and starts draining.
func (s *Server) StopAccepting() {
	s.draining.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for _, l := range s.loops {
		l.post(cmdStopAccepting)
	}
	if s.fb != nil {
		s.fb.BeginDrain()
	}
	if s.front != nil {
		s.front.stopWaiting()
	}
	s.noteZero()
}

// CloseIdle closes the keep-alive connections that are idle now, and makes
// every later response close its connection: for a final stop, where no
// successor will serve the clients.
func (s *Server) CloseIdle() {
	s.closeIdle.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.loops {
		l.post(cmdCloseIdle)
	}
	if s.fb != nil {
		s.fb.CloseIdle()
	}
}

// Drain waits until every connection has closed. When ctx ends first it
// closes what is left and says how many; the Fallback may keep its
// long-lived connections longer (handoff.Server.LongDrainTimeout). The
// loops stop either way.
func (s *Server) Drain(ctx context.Context) error {
	s.StopAccepting()
	s.mu.Lock()
	started := s.started && s.loops != nil
	s.mu.Unlock()
	if !started {
		return nil
	}
	var n int64
	for s.conns.Load() > 0 {
		select {
		case <-s.zeroC:
			continue
		case <-ctx.Done():
		}
		n = s.conns.Load()
		break
	}
	s.mu.Lock()
	for _, l := range s.loops {
		l.post(cmdExit)
	}
	front := s.front
	s.mu.Unlock()
	if front != nil {
		front.closeHandshakes()
	}
	<-s.loopsC
	if front != nil {
		front.wg.Wait()
	}
	// Nothing is handed over any more: the Fallback's turn.
	s.hl.settled(ctx)
	s.hl.shut() // (net/http's Close waits for Serve to return)
	ferr := s.fb.Drain(ctx)
	<-s.doneC
	var err error
	if n > 0 {
		err = &DeadlineError{Addr: s.ln.Addr().String(), Closed: int(n)}
	}
	return errors.Join(err, ferr)
}

// DeadlineError reports connections closed at the drain deadline.
type DeadlineError struct {
	Addr   string
	Closed int
}

func (e *DeadlineError) Error() string {
	return fmt.Sprintf("epoll: %s: drain deadline reached, closed %d connections", e.Addr, e.Closed)
}

// connClosed uncounts a connection.
func (s *Server) connClosed() {
	if s.conns.Add(-1) <= 0 {
		s.noteZero()
	}
	if s.front != nil {
		s.front.connClosed()
	}
}

func (s *Server) noteZero() {
	if s.zeroC == nil {
		return
	}
	select {
	case s.zeroC <- struct{}{}:
	default:
	}
}
