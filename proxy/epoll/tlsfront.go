package epoll

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy/epoll/internal/tls13"
)

// tlsFront accepts the connections of a TLS listener and runs each
// handshake on a goroutine of its own, with crypto/tls. A TLS 1.3
// connection that chose HTTP/1.1 (any of TLS 1.3's three suites) then
// moves into a loop, which protects its records itself (internal/tls13);
// every other one (HTTP/2, TLS 1.2) goes to the Fallback as the *tls.Conn
// it is.
type tlsFront struct {
	s    *Server
	ln   net.Listener
	cfg  *tls.Config // the handshakes': base with configFor
	next atomic.Uint32
	// handed counts the connections the front gave to the Fallback as
	// *tls.Conn (HTTP/2, TLS 1.2, ...), for tests.
	handed atomic.Int64
	wg     sync.WaitGroup // the accept loop and the handshakes

	mu       sync.Mutex
	hs       map[net.Conn]struct{} // in their handshake
	closed   bool                  // the loops are gone
	wake     chan struct{}         // a connection closed (for MaxConns)
	stop     chan struct{}         // closed when the drain begins or the loops are gone
	stopOnce sync.Once
	fdWait   int       // connections waiting for a file descriptor (dupWaiting)
	fdWaited int       // in this episode
	fdSince  time.Time // when it began
}

func newTLSFront(s *Server, ln net.Listener) *tlsFront {
	f := &tlsFront{s: s, ln: ln, hs: map[net.Conn]struct{}{}, wake: make(chan struct{}, 1), stop: make(chan struct{})}
	base := s.TLSConfig
	// A shallow copy that only picks each connection's Config: base
	// itself (its session ticket keys, rotated by whoever owns it) stays
	// the one every handshake clones.
	f.cfg = &tls.Config{GetConfigForClient: configFor(base, base.GetConfigForClient)}
	return f
}

// serve accepts until the listener fails. The listener is to outlive
// failed accepts (EMFILE and the like) itself: baton passes one from
// handoff.KeepAccepting, which pauses, retries and logs them.
func (f *tlsFront) serve() {
	defer f.wg.Done()
	for {
		if m := f.s.MaxConns; m > 0 && f.s.conns.Load() >= int64(m) {
			select {
			case <-f.wake:
			case <-time.After(acceptPause):
			}
			if f.stopped() {
				return
			}
			continue
		}
		nc, err := f.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !f.stopped() && f.s.ErrorLog != nil {
				f.s.ErrorLog.Printf("epoll: TLS accept: %v", err)
			}
			return
		}
		f.s.conns.Add(1)
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			nc.Close()
			f.s.connClosed()
			return
		}
		f.hs[nc] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go f.handshake(nc)
	}
}

func (f *tlsFront) stopped() bool { return f.s.draining.Load() }

// stopWaiting ends the waits of the connections out of descriptors: the
// drain began.
func (f *tlsFront) stopWaiting() { f.stopOnce.Do(func() { close(f.stop) }) }

// connClosed wakes an accept loop paused at MaxConns.
func (f *tlsFront) connClosed() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// closeHandshakes closes the connections still in their handshake and
// makes later ones close when it ends: the loops are gone.
func (f *tlsFront) closeHandshakes() {
	f.stopWaiting()
	f.mu.Lock()
	f.closed = true
	for c := range f.hs {
		c.Close()
	}
	f.mu.Unlock()
}

func (f *tlsFront) handshake(nc net.Conn) {
	defer f.wg.Done()
	s := f.s
	hc := &hsConn{Conn: nc, limit: true}
	tc := tls.Server(hc, f.cfg)
	_ = nc.SetDeadline(time.Now().Add(s.ReadHeaderTimeout))
	err := tc.HandshakeContext(context.Background())
	if s.OnHandshake != nil {
		s.OnHandshake(nc, err == nil && tc.ConnectionState().DidResume, err)
	}
	f.mu.Lock()
	delete(f.hs, nc)
	closed := f.closed
	f.mu.Unlock()
	if err != nil || closed {
		if err != nil {
			f.handshakeFailed(nc, err)
		}
		nc.Close()
		s.connClosed()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	if ts := f.loopState(tc, hc); ts != nil {
		fd, err := f.dupWaiting(nc)
		if errors.Is(err, errDraining) {
			// Out of descriptors until the drain began: net/http serves
			// it, as the drain wants.
			hc.limit = false
			f.handed.Add(1)
			s.handOver(tc)
			return
		}
		nc.Close() // the loop's copy of the descriptor keeps the socket
		if err != nil {
			if s.ErrorLog != nil {
				s.ErrorLog.Printf("epoll: TLS connection from %s not moved into a loop: %v", nc.RemoteAddr(), err)
			}
			s.connClosed()
			return
		}
		l := s.loops[int(f.next.Add(1))%len(s.loops)]
		if !l.adopt(adoption{fd: fd, sa: sockaddrOf(nc.RemoteAddr()), tls: ts}) {
			unix.Close(fd)
			s.connClosed()
		}
		return
	}
	hc.limit = false
	f.handed.Add(1)
	s.handOver(tc)
}

// handshakeFailed answers a plain HTTP request on the TLS port with a
// 400, as net/http does, and logs the failure as net/http does.
func (f *tlsFront) handshakeFailed(nc net.Conn, err error) {
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
		_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		return
	}
	if f.s.ErrorLog != nil {
		f.s.ErrorLog.Printf("http: TLS handshake error from %s: %v", nc.RemoteAddr(), err)
	}
}

// looksLikeHTTP is net/http's test for a TLS record header that is the
// start of a plain HTTP request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// loopState is the record protection a loop needs to serve tc, or nil
// if tc stays with crypto/tls.
func (f *tlsFront) loopState(tc *tls.Conn, hc *hsConn) *tlsConn {
	st := tc.ConnectionState()
	if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol == "h2" || hc.left != 0 || hc.overflow {
		return nil
	}
	suite, ok := tls13.SuiteByID(st.CipherSuite)
	if !ok {
		return nil
	}
	sec := hc.keys
	if sec.client == nil || sec.server == nil {
		return nil
	}
	// The records the server protected with its application secret
	// during the handshake (the session ticket) are counted by opening
	// them: no assumption on how many crypto/tls sends.
	seq, ok := tls13.SealedBy(suite, sec.server, hc.sent)
	if !ok {
		return nil
	}
	wr, err := tls13.NewWriter(suite, sec.server, seq)
	if err != nil {
		return nil
	}
	rd, err := tls13.NewReader(suite, sec.client)
	if err != nil {
		return nil
	}
	return &tlsConn{rd: rd, wr: wr, state: st, raw: slices.Clone(hc.buf[hc.r:hc.w])}
}

// Bounds of the wait for a file descriptor (dupWaiting), as
// handoff.KeepAccepting's between failed accepts.
const (
	fdWaitMin = 5 * time.Millisecond
	fdWaitMax = time.Second
)

var errDraining = errors.New("epoll: draining")

// dupWaiting copies nc's descriptor for a loop. Out of descriptors
// (EMFILE, ENFILE, ENOMEM), the connection waits, as one in the listen
// backlog does, and the copy is tried again (5 ms, doubling up to 1 s),
// until it works, or until the drain begins (errDraining: the caller hands
// the connection to the Fallback) or the loops are gone. The episode is
// logged as a failed accept is (handoff.KeepAccepting): once when
// connections begin to wait, once when none waits any more.
func (f *tlsFront) dupWaiting(nc net.Conn) (int, error) {
	fd, err := dupConn(nc)
	if err == nil || !outOfFDs(err) {
		return fd, err
	}
	f.fdWaiting(1, err)
	defer f.fdWaiting(-1, nil)
	wait := fdWaitMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-f.stop:
			t.Stop()
		}
		f.mu.Lock()
		closed := f.closed
		f.mu.Unlock()
		switch {
		case closed:
			return -1, err
		case f.stopped():
			return -1, errDraining
		}
		if fd, err = dupConn(nc); err == nil || !outOfFDs(err) {
			return fd, err
		}
		wait = min(2*wait, fdWaitMax)
	}
}

// outOfFDs reports whether err says the process or the system is out of
// file descriptors (or of the memory for one) for now.
func outOfFDs(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOMEM)
}

// fdWaiting counts the connections that wait for a descriptor (d: +1 when
// one begins, -1 when it ends) and logs the start and the end of an
// episode.
func (f *tlsFront) fdWaiting(d int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fdWait += d
	log := f.s.Logger
	if log == nil {
		return
	}
	switch {
	case d > 0 && f.fdWait == 1:
		f.fdSince, f.fdWaited = time.Now(), 0
		log.Warn("cannot move TLS connections into the loops (out of file descriptors); they wait until it works",
			"listener", f.ln.Addr().String(), "err", err)
	case d > 0:
	case f.fdWait == 0:
		log.Info("moving TLS connections into the loops again", "listener", f.ln.Addr().String(),
			"waited", f.fdWaited, "for", time.Since(f.fdSince).Round(time.Millisecond))
	}
	if d > 0 {
		f.fdWaited++
	}
}

// dupConn returns a copy of c's descriptor (non-blocking, as Go set it).
func dupConn(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("epoll: connection has no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return fd, derr
}

func sockaddrOf(a net.Addr) unix.Sockaddr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return nil
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: ta.Port}
		copy(sa.Addr[:], ip4)
		return sa
	}
	sa := &unix.SockaddrInet6{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To16())
	return sa
}

// maxCaptured bounds what hsConn keeps of the server's handshake flight.
const maxCaptured = 64 << 10

// hsConn is the TCP connection under crypto/tls during a handshake. It
// gives crypto/tls no byte beyond the record it is reading, so that what
// the client sends after its Finished stays here for the loop; it keeps
// the handshake's traffic secrets (configFor); and it keeps a copy of the
// protected records the server sends, to count those already protected
// with the application traffic secret.
type hsConn struct {
	net.Conn
	keys     connKeys
	limit    bool // false once handed to crypto/tls for good
	buf      []byte
	r, w     int
	left     int // bytes of the current record not given yet
	sent     [][]byte
	wpart    []byte // the start of a record written in part
	captured int
	overflow bool
}

func (c *hsConn) Read(p []byte) (int, error) {
	if !c.limit {
		if c.r < c.w {
			n := copy(p, c.buf[c.r:c.w])
			c.r += n
			return n, nil
		}
		return c.Conn.Read(p)
	}
	if c.left == 0 {
		if err := c.fill(tls13.HeaderLen); err != nil {
			return 0, err
		}
		c.left = tls13.HeaderLen + int(binary.BigEndian.Uint16(c.buf[c.r+3:]))
	}
	if c.r == c.w {
		if err := c.fill(1); err != nil {
			return 0, err
		}
	}
	n := copy(p[:min(len(p), c.left)], c.buf[c.r:c.w])
	c.r += n
	c.left -= n
	return n, nil
}

// fill reads until n bytes are buffered.
func (c *hsConn) fill(n int) error {
	for c.w-c.r < n {
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		}
		if len(c.buf)-c.w < 512 {
			nb := make([]byte, max(4096, 2*len(c.buf)))
			copy(nb, c.buf[:c.w])
			c.buf = nb
		}
		m, err := c.Conn.Read(c.buf[c.w:])
		c.w += m
		if err != nil && c.w-c.r < n {
			return err
		}
	}
	return nil
}

func (c *hsConn) Write(p []byte) (int, error) {
	if c.limit && !c.overflow {
		c.capture(p)
	}
	return c.Conn.Write(p)
}

// capture keeps the protected records of the server's flight.
func (c *hsConn) capture(p []byte) {
	c.captured += len(p)
	if c.captured > maxCaptured {
		c.overflow, c.sent, c.wpart = true, nil, nil
		return
	}
	b := append(c.wpart, p...)
	for len(b) >= tls13.HeaderLen {
		n := tls13.HeaderLen + int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < n {
			break
		}
		if b[0] == 23 { // application data: protected
			c.sent = append(c.sent, slices.Clone(b[:n]))
		}
		b = b[n:]
	}
	c.wpart = slices.Clone(b)
}
