package epoll

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

// Backend connection states.
const (
	bConnecting uint8 = iota
	bSending
	bHeader
	bBody
	bIdle
	bClosed
)

// bpool is a loop's idle connections to one upstream, most recent last.
type bpool struct {
	up    proxy.Upstream
	opts  proxy.UpstreamOptions
	addr  *net.TCPAddr // for errors
	epoch uint64
	idle  []*bconn
	// pp is up when it is sent the PROXY protocol: each request gets a
	// connection of its own that begins with a header naming its client.
	pp proxy.ProxiedUpstream
}

func (p *bpool) closeIdle() {
	for len(p.idle) > 0 {
		p.idle[len(p.idle)-1].close()
	}
}

// bconn is a connection to a backend.
type bconn struct {
	timer
	l     *loop
	p     *bpool
	fd    int
	state uint8
	c     *conn  // the client it serves; nil when idle
	idx   int    // in p.idle while idle
	epoch uint64 // the upstream's epoch when it was made

	wOff     int
	req      []byte // what is sent instead of the exchange's breq: a PROXY header, then the request
	ppLen    int    // the PROXY header's length in req; > 0: the connection is never pooled
	buf      []byte
	r, w     int
	reused   bool
	gotBytes bool // some of the response came
	hup      bool // the backend closed its side
	paused   bool // the client is slow: read on once it took what it has
	infos    int
	resp     response
	chunks   chunkScanner
	dechunk  chunkDecoder // a chunked response to an HTTP/1.0 client
	wErr     error        // writing the body failed: the error if no answer comes

	dialAt, hdrAt, readAt, flushAt, idleAt, contAt int64 // deadlines, 0: none
}

func (be *bconn) tm() *timer { return &be.timer }

func (l *loop) poolFor(up proxy.Upstream) *bpool {
	p := l.pools[up]
	if p == nil {
		p = &bpool{up: up}
		if cu, ok := up.(proxy.ConnUpstream); ok {
			p.opts, p.epoch = cu.Options(), cu.Epoch()
		}
		p.opts = p.opts.WithDefaults()
		// An upstream not sent the PROXY protocol appends nothing, whatever
		// the addresses.
		if pu, ok := up.(proxy.ProxiedUpstream); ok && len(pu.ProxyHeader(nil, netip.AddrPort{}, netip.AddrPort{})) > 0 {
			p.pp = pu
		}
		p.addr, _ = net.ResolveTCPAddr("tcp", up.Addr()) // for error messages only
		l.pools[up] = p
	}
	return p
}

// conn returns an idle pooled connection to up (pooled) or a new one.
func (l *loop) conn(up proxy.Upstream, pooled bool) (*bconn, error) {
	p := l.poolFor(up)
	if pooled && len(p.idle) > 0 {
		if cu, ok := up.(proxy.ConnUpstream); ok && cu.Epoch() != p.epoch {
			p.epoch = cu.Epoch()
			p.closeIdle() // made before the server's restart
		}
		for len(p.idle) > 0 {
			be := p.idle[len(p.idle)-1]
			idleAt := be.idleAt
			be.unpool()
			if l.now-idleAt >= int64(p.opts.IdleTimeout) {
				be.close()
				continue
			}
			be.reused = true
			return be, nil
		}
	}
	return l.dial(p)
}

func (l *loop) dial(p *bpool) (*bconn, error) {
	sa, err := l.sockaddr(p.up.Addr())
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, p.dialErr(os.NewSyscallError("socket", err))
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	be := &bconn{l: l, p: p, fd: fd, idx: -1, state: bConnecting}
	if cu, ok := p.up.(proxy.ConnUpstream); ok {
		be.epoch = cu.Epoch()
	}
	err = unix.Connect(fd, sa)
	switch err {
	case nil:
		be.state = bSending
	case unix.EINPROGRESS:
	default:
		unix.Close(fd)
		return nil, p.dialErr(os.NewSyscallError("connect", err))
	}
	if err := l.register(fd, be, evConn); err != nil {
		unix.Close(fd)
		return nil, p.dialErr(err)
	}
	if be.state == bConnecting {
		be.dialAt = l.now + int64(p.opts.DialTimeout)
		be.rearm()
	}
	return be, nil
}

func (p *bpool) dialErr(err error) error {
	var a net.Addr
	if p.addr != nil {
		a = p.addr
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: a, Err: err}
}

// timeoutErr is a timeout as net reports one (ClassifyError makes it a
// 504 and the retry rule does not resend).
func (be *bconn) timeoutErr(op string) error {
	if op == "dial" {
		return be.p.dialErr(os.ErrDeadlineExceeded)
	}
	return &net.OpError{Op: op, Net: "tcp", Addr: be.p.addr, Err: os.ErrDeadlineExceeded}
}

// startProxied sends c's request on be, a new connection of its own,
// after a PROXY protocol header naming c's client and the address it
// connected to. Like net/http's Transport on the fresh connection the
// net/http plane uses, it says Connection: close (a request that is not
// replayable says so already).
func (be *bconn) startProxied(c *conn) {
	client, local := c.addrs()
	req := be.p.pp.ProxyHeader(be.l.getSmall()[:0], client, local)
	be.ppLen = len(req)
	breq := c.x.breq
	// The client's own X-Forwarded-For lines were dropped: the last one is
	// the loop's.
	if i := bytes.LastIndex(breq, xffLine); c.x.replay && i >= 0 {
		req = append(req, breq[:i+2]...)
		req = append(req, "Connection: close\r\n"...)
		breq = breq[i+2:]
	}
	be.req = append(req, breq...)
	be.start(c)
}

var xffLine = []byte("\r\nX-Forwarded-For: ")

// start sends c's request on be.
func (be *bconn) start(c *conn) {
	x := &c.x
	be.c, x.be = c, be
	be.wOff, be.r, be.w, be.gotBytes, be.infos, be.hup, be.paused = 0, 0, 0, false, 0, false, false
	be.resp, be.chunks, be.dechunk, be.wErr = response{}, chunkScanner{}, chunkDecoder{}, nil
	be.idleAt, be.contAt = 0, 0
	if be.state == bIdle {
		be.state = bSending
	}
	if be.state == bSending {
		be.send()
	}
}

// send writes the request; the response is awaited on the next edge.
func (be *bconn) send() {
	c := be.c
	breq := c.x.breq
	if be.req != nil {
		breq = be.req
	}
	for be.wOff < len(breq) {
		n, err := sysWrite(be.fd, breq[be.wOff:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return // on EPOLLOUT
		}
		if err != nil && be.wOff < be.ppLen {
			// As the net/http plane's dialer: nothing of the request was
			// sent, so this is a connection that could not be made.
			c.attemptFailed(be.p.dialErr(fmt.Errorf("proxy protocol header: %w", os.NewSyscallError("write", err))))
			return
		}
		if err != nil {
			c.attemptFailed(&net.OpError{Op: "write", Net: "tcp", Addr: be.p.addr, Err: os.NewSyscallError("write", err)})
			return
		}
		be.wOff += n
	}
	if c.l.h.Observing() {
		c.x.sent = time.Now()
	}
	if be.startBody() {
		return
	}
	be.state = bHeader
	if d := be.p.opts.ResponseHeaderTimeout; d > 0 {
		be.hdrAt = be.l.now + int64(d)
	}
	be.dialAt = 0
	be.rearm()
	if be.w > be.r && !be.process() {
		return // an early answer, read while sending
	}
	if be.hup {
		be.readResp()
	}
}

func (be *bconn) handle(ev uint32) {
	switch be.state {
	case bIdle:
		// Closed by the server, or it sent something unasked: never used
		// again. An edge for data read before the connection went idle
		// can still be pending: look.
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 || ev&unix.EPOLLIN != 0 && !sysPeekIdle(be.fd) {
			be.close()
		}
	case bConnecting:
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			be.connected()
		}
	case bSending:
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
			be.hup = true
		}
		if ev&unix.EPOLLERR != 0 {
			be.readResp() // reports the error
			return
		}
		if ev&unix.EPOLLOUT != 0 {
			be.send()
		}
	case bHeader, bBody:
		if ev&unix.EPOLLOUT != 0 && be.c != nil && be.c.x.rb.sending() {
			be.pumpBody()
			if be.state == bClosed || be.c == nil {
				return
			}
		}
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
			be.hup = true
		}
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			be.readResp()
		}
	}
}

func (be *bconn) connected() {
	errno, err := unix.GetsockoptInt(be.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && errno != 0 {
		err = unix.Errno(errno)
	}
	if err != nil {
		be.c.attemptFailed(be.p.dialErr(os.NewSyscallError("connect", err)))
		return
	}
	be.state = bSending
	be.dialAt = 0
	be.send()
}

// readResp reads the response: up to the first short read, or to EOF once
// the backend closed its side.
func (be *bconn) readResp() {
	for be.state == bHeader || be.state == bBody || be.state == bSending {
		if be.paused {
			return
		}
		if be.buf == nil {
			be.buf = be.l.getBig()
		}
		if be.w == len(be.buf) {
			if be.r > 0 {
				be.w = copy(be.buf, be.buf[be.r:be.w])
				be.r = 0
			} else {
				// Only a header can fill the buffer (a body is passed on
				// as it comes); it is bounded by the parse.
				grown := make([]byte, 2*len(be.buf))
				copy(grown, be.buf[:be.w])
				be.l.putBig(be.buf)
				be.buf = grown
			}
		}
		space := len(be.buf) - be.w
		n, err := sysRead(be.fd, be.buf[be.w:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			be.failed(&net.OpError{Op: "read", Net: "tcp", Addr: be.p.addr, Err: os.NewSyscallError("read", err)})
			return
		}
		if n == 0 {
			be.eof()
			return
		}
		be.gotBytes = true
		be.w += n
		if be.state == bSending {
			continue // an early answer: kept until the request is sent
		}
		if !be.process() {
			return
		}
		if n < space && !be.hup {
			return
		}
	}
}

// failed ends the attempt with err: the retry rule decides whether it is
// sent again (not once any of the response came).
func (be *bconn) failed(err error) {
	if be.gotBytes {
		err = fmt.Errorf("%w: %w", proxy.ErrResponseStarted, err)
	}
	be.c.attemptFailed(err)
}

// eof handles the backend closing the connection.
func (be *bconn) eof() {
	if be.state == bBody && be.resp.mode == bodyClose {
		be.resp.keep = false
		be.finish()
		return
	}
	if be.state == bBody || be.state == bHeader && be.w > be.r {
		be.c.fail(fmt.Errorf("%w: backend %s closed the connection before the response was complete: unexpected EOF",
			proxy.ErrResponseStarted, be.p.up.Name()))
		return
	}
	if be.wErr != nil {
		be.failed(be.wErr) // it stopped reading the body and said nothing
		return
	}
	be.failed(&net.OpError{Op: "read", Net: "tcp", Addr: be.p.addr, Err: errEOF})
}

var errEOF = fmt.Errorf("EOF")

// process handles what was read; false once be is no longer reading
// (finished, failed, or waiting for the client).
func (be *bconn) process() bool {
	c := be.c
	x := &c.x
	for be.state == bHeader {
		if x.be != be {
			return false
		}
		if c.out == nil {
			c.out = be.l.getSmall()[:0]
		}
		// Once: draining begins on another goroutine, and a response whose
		// header did not say "Connection: close" must not be followed by a
		// close the client cannot expect.
		closing := c.closing() || x.rb.unfinished()
		r, out, err := parseResponse(be.buf[be.r:be.w], x.head, c.out[:0], closing, x.v10)
		c.out, c.outR = out[:0], 0
		if err != nil {
			be.c.fail(proxy.UpstreamError(be.p.up.Name(), fmt.Errorf("%w: %w", proxy.ErrResponseStarted, err)))
			return false
		}
		if r.n == 0 {
			if be.w-be.r > be.p.opts.MaxResponseHeaderBytes {
				be.c.fail(proxy.UpstreamError(be.p.up.Name(), fmt.Errorf("%w: %w (over %d bytes)",
					proxy.ErrResponseStarted, proxy.ErrResponseHeaderTooLarge, be.p.opts.MaxResponseHeaderBytes)))
				return false
			}
			return true
		}
		hdr := be.buf[be.r : be.r+r.n]
		be.r += r.n
		if r.status < 200 {
			if r.status == 101 {
				be.c.fail(proxy.UpstreamError(be.p.up.Name(), fmt.Errorf("%w: 101 Switching Protocols to a request without Upgrade", proxy.ErrResponseStarted)))
				return false
			}
			if be.infos++; be.infos > 5 {
				be.c.fail(proxy.UpstreamError(be.p.up.Name(), fmt.Errorf("%w: more than 5 informational (1xx) responses", proxy.ErrResponseStarted)))
				return false
			}
			if !be.informational(r.status, hdr) || be.paused {
				return false
			}
			continue
		}
		c.answered(r.status, nil)
		be.finalWhileWaiting(r.keep)
		c.out = out
		be.resp = r
		x.status = r.status
		if c.l.h.Observing() {
			x.ex.Upstream = time.Since(x.sent)
		}
		if r.mode == bodyClose || closing || x.v10 && r.mode == bodyChunked {
			c.closeAfter = true
		}
		be.state = bBody
		be.hdrAt = 0
		if r.mode == bodyNone {
			be.finish()
			return false
		}
		if d := be.p.opts.ReadTimeout; d > 0 {
			be.readAt = be.l.now + int64(d)
		}
		be.rearm()
	}
	if be.state != bBody {
		return false
	}
	if d := be.p.opts.ReadTimeout; d > 0 {
		be.readAt = be.l.now + int64(d)
	}
	p := be.buf[be.r:be.w]
	done := false
	switch be.resp.mode {
	case bodyLength:
		if int64(len(p)) >= be.resp.length {
			p, done = p[:be.resp.length], true
		}
		be.resp.length -= int64(len(p))
	case bodyChunked:
		if x.v10 {
			return be.forwardDechunked()
		}
		n, end, err := be.chunks.scan(p)
		p, done = p[:n], end
		if err != nil {
			be.c.fail(proxy.UpstreamError(be.p.up.Name(), fmt.Errorf("%w: %w", proxy.ErrResponseStarted, err)))
			return false
		}
	}
	be.r += len(p)
	if !be.forward(p) {
		return false
	}
	if done {
		be.finish()
		return false
	}
	if be.r == be.w {
		be.r, be.w = 0, 0
	}
	if !x.committed && be.flushAt == 0 {
		be.flushAt = be.l.now + int64(headerFlushDelay)
	}
	be.rearm()
	return !be.paused
}

// forward passes body bytes to the client: held back with the header
// while the response is small and may still become an error, else sent.
func (be *bconn) forward(p []byte) bool {
	c := be.c
	x := &c.x
	x.bytesOut += int64(len(p))
	if !x.committed && x.heldBody+len(p) <= heldMax {
		c.out = append(c.out, p...)
		x.heldBody += len(p)
		return true
	}
	be.flushAt = 0
	if !c.send(p) {
		return false
	}
	if c.pending() {
		be.paused = true // the client is slower: wait for it
	}
	return true
}

// commit sends what is held back.
func (be *bconn) commit() {
	c := be.c
	c.x.committed = true
	be.flushAt = 0
	if !c.flush() {
		return
	}
	if c.pending() {
		be.paused = true
	}
}

// resume reads on after the client took what was pending.
func (be *bconn) resume() {
	be.paused = false
	if be.w > be.r && (be.state == bHeader || be.state == bBody) && !be.process() {
		return // what came with an informational response
	}
	be.readResp()
}

// finish ends a complete response: the connection goes back to the pool
// if nothing else came with it and both sides keep it open.
func (be *bconn) finish() {
	c := be.c
	x := &c.x
	reuse := be.resp.keep && be.r == be.w && !be.hup && x.replay && be.ppLen == 0
	x.be, be.c = nil, nil
	up := x.up
	x.up = nil
	if reuse {
		be.pool()
	} else {
		be.close()
	}
	up.Done(nil)
	x.ex.Term = proxy.TermOK
	x.committed = true
	c.endExchange()
	if !c.flush() {
		return
	}
	if !c.pending() {
		c.written()
	}
}

// pool puts be among its upstream's idle connections.
func (be *bconn) pool() {
	p := be.p
	if len(p.idle) >= p.opts.MaxIdle {
		be.close()
		return
	}
	if cu, ok := p.up.(proxy.ConnUpstream); ok && cu.Epoch() != be.epoch {
		// Made before the server's restart began: a graceful restart
		// closes idle connections, and until then this one would count
		// against the server's connection limit for nothing.
		be.close()
		return
	}
	if be.buf != nil {
		be.l.putBig(be.buf)
		be.buf = nil
	}
	be.state = bIdle
	be.idleAt = be.l.now
	be.hdrAt, be.readAt, be.flushAt, be.dialAt, be.contAt = 0, 0, 0, 0, 0
	be.idx = len(p.idle)
	p.idle = append(p.idle, be)
	be.l.nidle++
	if be.l.nidle == 1 {
		be.l.epoch = be.l.now + int64(epochInterval)
	}
	be.rearm()
}

func (be *bconn) unpool() {
	p := be.p
	if be.idx < 0 {
		return
	}
	last := len(p.idle) - 1
	p.idle[be.idx] = p.idle[last]
	p.idle[be.idx].idx = be.idx
	p.idle[last] = nil
	p.idle = p.idle[:last]
	be.idx = -1
	be.l.nidle--
	be.idleAt = 0
}

// rearm schedules be's earliest deadline.
func (be *bconn) rearm() {
	var next int64
	for _, d := range [...]int64{be.dialAt, be.hdrAt, be.readAt, be.flushAt, be.contAt} {
		if d != 0 && (next == 0 || d < next) {
			next = d
		}
	}
	if be.state == bIdle {
		next = be.idleAt + int64(be.p.opts.IdleTimeout)
	}
	be.l.schedule(be, next)
}

func (be *bconn) expire(now int64) {
	switch {
	case be.state == bIdle:
		be.close() // idle too long: the server is about to close it
		return
	case be.state == bClosed || be.c == nil:
		return
	case be.dialAt != 0 && now >= be.dialAt:
		be.c.attemptFailed(be.timeoutErr("dial"))
		return
	case be.hdrAt != 0 && now >= be.hdrAt:
		be.c.fail(proxy.UpstreamError(be.p.up.Name(), be.timeoutErr("read")))
		return
	case be.readAt != 0 && now >= be.readAt:
		be.c.fail(proxy.UpstreamError(be.p.up.Name(), be.timeoutErr("read")))
		return
	case be.contAt != 0 && now >= be.contAt:
		be.contAt = 0
		be.continueTimeout()
		if be.state == bClosed || be.c == nil {
			return
		}
	}
	if be.flushAt != 0 && now >= be.flushAt && !be.c.x.committed {
		be.commit()
	}
	if be.state != bClosed && be.c != nil {
		be.rearm()
	}
}

// close closes be (an idle one leaves its pool).
func (be *bconn) close() {
	if be.state == bClosed {
		return
	}
	be.unpool()
	be.state = bClosed
	be.l.forget(be.fd)
	unix.Close(be.fd)
	be.fd = -1
	be.l.schedule(be, 0)
	if be.buf != nil {
		be.l.putBig(be.buf)
		be.buf = nil
	}
	if be.req != nil {
		be.l.putSmall(be.req)
		be.req = nil
	}
	if be.c != nil && be.c.x.be == be {
		be.c.x.be = nil
	}
	be.c = nil
}
