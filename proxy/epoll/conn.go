package epoll

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

// Client connection states.
const (
	stIdle   uint8 = iota // waiting for (the rest of) a request header
	stHeld                // its request waits for a ready upstream
	stProxy               // its request is with an upstream, or answered and being written
	stLinger              // answered with Connection: close; reading to EOF before closing
	stClosed
)

// heldMax is how much of a response body is held back with its header: a
// small response reaches the client whole or becomes a 502 (as in the
// net/http plane); headerFlushDelay is how long it is held back while the
// backend sends nothing more.
const (
	heldMax          = 4 << 10
	headerFlushDelay = 5 * time.Millisecond
	lingerTimeout    = time.Second
	// maxBuffered bounds what is read ahead of the request being served
	// (pipelined requests); beyond it the client waits.
	maxBuffered = 64 << 10
)

// conn is a client connection.
type conn struct {
	timer
	l     *loop
	fd    int
	sa    unix.Sockaddr
	state uint8
	first bool // no request yet: ReadHeaderTimeout runs from accept

	in         []byte // read, not yet consumed: in[inR:inW]
	inR, inW   int
	out        []byte // to write: out[outR:]
	outR       int
	more       bool // the last read filled the buffer: the socket may hold more
	eof        bool // the client sent FIN
	rdhup      bool // the client shut its sending side: read on to EOF
	closeAfter bool // close once the response is written
	busy       bool // process is running (it is re-entered through callbacks)
	again      bool
	idleTimed  bool // the idle (or first header) deadline is set
	hdrTimed   bool // the header deadline of a started request is set
	afterPost  bool // the last request was a POST: CR and LF before the next are skipped
	ip         string
	local      netip.AddrPort // the address the client connected to, once looked up (addrs)
	tls        *tlsConn       // nil for plain HTTP

	x exchange
}

// exchange is the request being served on a conn.
type exchange struct {
	active    bool
	head      bool
	replay    bool // proxy.Replayable: a pooled connection, retried
	v10       bool // an HTTP/1.0 client
	rb        reqBody
	breq      []byte // the request as sent to the backend
	method    string // for errors and the Observer; set lazily
	uri       string
	up        proxy.Upstream
	be        *bconn
	attempt   int
	redialed  bool
	answered  bool // the attempt's outcome went to the upstream (answered)
	avoid     proxy.Upstream
	lastErr   error
	lastUp    string
	holdUntil time.Time
	holdStart time.Time
	held      time.Duration
	start     time.Time
	sent      time.Time
	committed bool // bytes of the response were handed to the socket
	heldBody  int  // body bytes held back with the header
	status    int
	bytesOut  int64
	ex        proxy.Exchange
}

func (c *conn) tm() *timer { return &c.timer }

// idle reports whether c waits for a request and has none of one.
func (c *conn) idle() bool {
	return c.state == stIdle && c.inR == c.inW && !c.pending() && !c.x.active
}

func (c *conn) expire(now int64) {
	switch c.state {
	case stHeld:
		c.l.unhold(c, true)
		c.fail(c.l.h.HoldTimeoutError(c.x.lastErr, c.x.lastUp))
	case stIdle, stLinger:
		// Idle keep-alive, a request header too slow, or a client that
		// does not close after Connection: close: net/http closes
		// without an answer too.
		c.close()
	}
}

func (c *conn) handle(ev uint32) {
	if c.state == stClosed {
		return
	}
	if ev&unix.EPOLLERR != 0 {
		c.abort()
		return
	}
	if ev&unix.EPOLLOUT != 0 && c.pending() {
		if !c.flush() {
			return
		}
		if !c.pending() {
			c.written()
			if c.state == stClosed {
				return
			}
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
			c.rdhup = true
		}
		c.readable(c.rdhup)
	}
}

// readable reads what the client sent: up to the first short read, or to
// EOF once the client closed its side (data and FIN can come in one edge).
func (c *conn) readable(hup bool) {
	if c.state == stLinger {
		c.linger()
		return
	}
	for {
		if c.inW-c.inR >= maxBuffered && (c.x.active || c.pending()) {
			c.more = true // read on when the buffer drains
			break
		}
		n, err := c.read()
		if n < 0 {
			return // closed
		}
		if err == unix.EAGAIN {
			c.more = false
			break
		}
		if n == 0 {
			c.eof = true
			break
		}
		if c.more = n == err2space(err); !c.more && !hup {
			break
		}
	}
	if c.eof && (c.x.active || c.state == stHeld) {
		// net/http cancels a request whose client went away.
		c.abort()
		return
	}
	if c.tls != nil {
		if c.afterAnswer(); c.state == stClosed {
			return
		}
	}
	if be := c.x.be; be != nil && c.x.rb.sending() {
		be.pumpBody()
		if c.state == stClosed {
			return
		}
	}
	c.process()
}

// err2space is a trick to keep read's signature small: read returns the
// space it had as the error when it filled it.
func err2space(err error) int {
	if s, ok := err.(spaceErr); ok {
		return int(s)
	}
	return -1
}

type spaceErr int

func (spaceErr) Error() string { return "buffer filled" }

// read reads once into c.in. It returns n < 0 if c was closed, n == 0 at
// EOF, unix.EAGAIN when nothing was there, and spaceErr when the read
// filled the space it had.
func (c *conn) read() (int, error) {
	if c.tls != nil {
		return c.readTLS()
	}
	if c.in == nil {
		c.in = c.l.getSmall()
		c.inR, c.inW = 0, 0
	}
	if c.inR == c.inW {
		c.inR, c.inW = 0, 0
	}
	if c.inW == len(c.in) {
		if c.inR > 0 {
			c.inW = copy(c.in, c.in[c.inR:c.inW])
			c.inR = 0
		} else {
			grown := make([]byte, 2*len(c.in))
			copy(grown, c.in[:c.inW])
			c.l.putSmall(c.in)
			c.in = grown
		}
	}
	space := len(c.in) - c.inW
	n, err := sysRead(c.fd, c.in[c.inW:])
	switch {
	case err == unix.EINTR:
		return c.read()
	case err == unix.EAGAIN:
		return 0, unix.EAGAIN
	case err != nil:
		c.abort()
		return -1, err
	}
	c.inW += n
	if n == space {
		return n, spaceErr(space)
	}
	return n, nil
}

// process serves the requests buffered on c, one at a time, while nothing
// is in flight and the previous response was written.
func (c *conn) process() {
	if c.busy {
		c.again = true
		return
	}
	c.busy = true
	defer func() { c.busy = false }()
	for {
		c.again = false
		if c.state == stClosed || c.state == stLinger || c.state == stHeld || c.x.active || c.pending() {
			return
		}
		c.state = stIdle
		if c.closeAfter {
			c.startLinger()
			return
		}
		if c.inR == c.inW {
			if c.eof {
				c.close()
				return
			}
			if c.more {
				if n, _ := c.read(); n < 0 {
					return
				}
				c.more = false
				if c.inR < c.inW {
					continue
				}
			}
			c.releaseIn()
			c.releaseOut()
			if c.l.closeIdle {
				c.close()
				return
			}
			if !c.idleTimed {
				// Waiting for the next request (the first one's header
				// deadline runs from accept).
				c.idleTimed, c.hdrTimed = true, false
				c.l.schedule(c, c.l.now+int64(c.l.s.IdleTimeout))
			}
			return
		}
		if c.afterPost && !c.skipCRLF() {
			if !c.hdrTimed {
				c.hdrTimed = true
				c.l.schedule(c, c.l.now+int64(c.l.s.ReadHeaderTimeout))
			}
			if c.more {
				if n, _ := c.read(); n < 0 {
					return
				}
				continue
			}
			return
		}
		if c.inR == c.inW {
			continue
		}
		breq := c.l.getSmall()[:0]
		r, breq, st := parseRequest(c.in[c.inR:c.inW], c.l.s.MaxHeaderBytes, breq, c.clientIP(), c.tls != nil)
		switch st {
		case parseMore:
			c.l.putSmall(breq)
			if c.eof {
				c.close()
				return
			}
			if !c.hdrTimed {
				// A request began: its header must be complete within
				// ReadHeaderTimeout.
				c.hdrTimed = true
				if !c.first {
					c.l.schedule(c, c.l.now+int64(c.l.s.ReadHeaderTimeout))
				}
			}
			if c.more {
				if n, _ := c.read(); n < 0 {
					return
				}
				continue
			}
			return
		case parseHandOver:
			c.l.putSmall(breq)
			c.handOver()
			return
		}
		c.startExchange(&r, breq)
		if !c.again && (c.x.active || c.state == stHeld) {
			return
		}
	}
}

// startExchange begins serving r, whose backend request is breq.
func (c *conn) startExchange(r *request, breq []byte) {
	l := c.l
	c.first, c.idleTimed, c.hdrTimed = false, false, false
	x := &c.x
	*x = exchange{active: true, head: r.head, replay: r.replay, v10: r.v10, breq: breq, attempt: 1, start: time.Now()}
	x.rb = reqBody{mode: r.body, left: r.length, expect: r.expect}
	if r.close {
		c.closeAfter = true
	}
	if l.h.Observing() {
		hdr := c.in[c.inR : c.inR+r.n]
		x.method, x.uri = string(r.method(hdr)), string(r.target(hdr))
		proto := "HTTP/1.1"
		if r.v10 {
			proto = "HTTP/1.0"
		}
		x.ex = proxy.Exchange{Start: x.start, RemoteAddr: c.remoteAddr(), Method: x.method, URI: x.uri, Proto: proto,
			Host: string(r.host(hdr)), Referer: string(r.referer(hdr)), UserAgent: string(r.userAgent(hdr)), TLS: c.tls != nil}
	}
	c.inR += r.n
	c.afterPost = r.meth.j == 4 && string(c.in[c.inR-r.n:c.inR-r.n+4]) == "POST"
	c.state = stProxy
	l.schedule(c, 0)
	l.attempt(c)
}

// methodURI are the request's method and target, for error logs.
func (c *conn) methodURI() (string, string) {
	x := &c.x
	if x.method == "" && len(x.breq) > 0 {
		line := x.breq
		for i, b := range line {
			if b == '\r' {
				line = line[:i]
				break
			}
		}
		sp1 := indexByte(line, ' ')
		if sp1 > 0 {
			rest := line[sp1+1:]
			sp2 := indexByte(rest, ' ')
			if sp2 > 0 {
				x.method, x.uri = string(line[:sp1]), string(rest[:sp2])
			}
		}
	}
	return x.method, x.uri
}

func indexByte(b []byte, c byte) int {
	for i, v := range b {
		if v == c {
			return i
		}
	}
	return -1
}

// attemptFailed handles a failed attempt: a pooled connection found closed
// before any of the response came is replaced once, as proxy.Transport
// does; otherwise the retry rule decides.
func (c *conn) attemptFailed(err error) {
	l, x := c.l, &c.x
	if be := x.be; be != nil {
		x.be = nil
		reused, started := be.reused, be.gotBytes
		be.close()
		if reused && !started && !x.redialed {
			x.redialed = true
			nb, derr := l.conn(x.up, false)
			if derr == nil {
				nb.start(c)
				return
			}
			l.pools[x.up].closeIdle() // cannot even connect: the pooled ones are dead too
			err = derr
		}
	}
	c.answered(0, err)
	up := x.up
	x.up = nil
	up.Done(err)
	method, _ := c.methodURI()
	if ferr := l.h.RetryAfter(err, method, x.replay, x.rb.read > 0, up.Name(), x.attempt); ferr != nil {
		c.fail(ferr)
		return
	}
	if proxy.IsDialError(err) {
		x.ex.DialRetries++
	}
	x.attempt++
	x.lastErr, x.lastUp, x.avoid = err, up.Name(), up
	l.attempt(c)
}

// answered tells the upstream of the attempt how it ended, for passive
// health detection (proxy.PassiveUpstream), once per attempt: where
// net/http's RoundTrip would return, with the response's status or the
// error that came before one. A client that went away is never reported
// (abort), nor is a body the client framed wrongly (bodyError).
func (c *conn) answered(status int, err error) {
	x := &c.x
	if x.answered || x.up == nil {
		return
	}
	x.answered = true
	if pu, ok := x.up.(proxy.PassiveUpstream); ok {
		pu.Answered(status, err)
	}
}

// fail answers the request with the failure err maps to, or cuts the
// connection when part of the response already went out.
func (c *conn) fail(err error) {
	x := &c.x
	if x.be != nil {
		x.be.close()
		x.be = nil
	}
	if x.up != nil {
		c.answered(0, err)
		x.up.Done(err)
		x.up = nil
	}
	if x.committed {
		x.ex.Term = proxy.TermBackendError
		c.endExchange()
		c.cutShort()
		c.close()
		return
	}
	method, uri := c.methodURI()
	f := c.l.h.Fail(err, method, uri)
	x.ex.Term, x.status = f.Term, f.Status
	body := f.Body()
	c.releaseOutHeld()
	out := c.out
	if out == nil {
		out = c.l.getSmall()[:0]
	}
	out = appendStatusLine(out, x.v10, f.Status)
	out = append(out, "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\n"...)
	out = c.l.appendDate(out)
	if f.RetryAfter {
		out = append(out, "Retry-After: 1\r\n"...)
	}
	switch {
	case f.Close || c.closing() || x.rb.unfinished():
		// The rest of a body cannot be told from a next request.
		c.closeAfter = true
		if !x.v10 {
			out = append(out, "Connection: close\r\n"...) // HTTP/1.0 closes without saying
		}
	case x.v10:
		out = append(out, "Connection: keep-alive\r\n"...)
	}
	out = append(out, "\r\n"...)
	if !x.head {
		out = append(out, body...)
		x.bytesOut = int64(len(body))
	}
	c.out = out
	x.committed = true
	c.endExchange()
	if c.flush() && !c.pending() {
		c.written()
	}
}

// closing reports whether the response being written must close c.
func (c *conn) closing() bool {
	return c.closeAfter || c.l.s.draining.Load() || c.l.closeIdle
}

// endExchange completes the exchange's accounting and hands it to the
// Observer.
func (c *conn) endExchange() {
	x := &c.x
	if !x.active {
		return
	}
	x.active = false
	c.l.putSmall(x.breq)
	x.breq = nil
	x.rb.release(c.l)
	if c.x.rb.unfinished() {
		c.closeAfter = true
	}
	if c.l.h.Observing() {
		e := &x.ex
		e.Status, e.BytesOut, e.Held, e.BytesIn = x.status, x.bytesOut, x.held, x.rb.read
		e.Total = time.Since(x.start)
		c.l.h.Observe(e)
	}
	x.ex = proxy.Exchange{}
	x.start = time.Time{}
}

// flush writes what is pending; false if c was closed.
func (c *conn) flush() bool {
	if c.tls != nil {
		return c.flushTLS()
	}
	for c.outR < len(c.out) {
		n, err := sysWrite(c.fd, c.out[c.outR:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			c.abort()
			return false
		}
		c.outR += n
	}
	return true
}

// send hands p to the socket after what is pending, keeping what the
// socket does not take; false if c was closed.
func (c *conn) send(p []byte) bool {
	if c.tls != nil {
		return c.sendTLS(p)
	}
	x := &c.x
	x.committed = true
	pending := c.out[c.outR:]
	var n int
	var err error
	for {
		if len(pending) == 0 {
			n, err = sysWrite(c.fd, p)
		} else {
			n, err = sysWritev(c.fd, pending, p)
		}
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		c.abort()
		return false
	}
	if n < len(pending) {
		c.outR += n
		c.out = append(c.out, p...)
		return true
	}
	n -= len(pending)
	c.outR = len(c.out)
	if n < len(p) {
		if c.out == nil {
			c.out = c.l.getSmall()[:0]
		}
		c.out = append(c.out[:0], p[n:]...)
		c.outR = 0
	}
	return true
}

// written runs when everything pending reached the socket.
func (c *conn) written() {
	if be := c.x.be; be != nil && be.paused {
		be.resume()
		return
	}
	if !c.x.active {
		c.releaseOut()
		c.process()
	}
}

func (c *conn) releaseIn() {
	if c.in != nil && c.inR == c.inW {
		c.l.putSmall(c.in)
		c.in, c.inR, c.inW = nil, 0, 0
	}
}

func (c *conn) releaseOut() {
	if c.out != nil && c.outR == len(c.out) {
		c.l.putSmall(c.out)
		c.out, c.outR = nil, 0
	}
}

// releaseOutHeld drops a response held back (it became an error answer).
func (c *conn) releaseOutHeld() {
	if !c.x.committed && c.out != nil {
		c.out, c.outR = c.out[:0], 0
	}
}

// startLinger closes c's sending side and reads until the client closes,
// so that a client still sending does not get a reset that destroys the
// response it has not read yet.
func (c *conn) startLinger() {
	c.state = stLinger
	c.releaseIn()
	c.releaseOut()
	if c.eof {
		c.close()
		return
	}
	c.sendAlert(alertCloseNotify)
	_ = unix.Shutdown(c.fd, unix.SHUT_WR)
	c.l.schedule(c, c.l.now+int64(lingerTimeout))
	c.linger()
}

func (c *conn) linger() {
	var buf [512]byte
	for i := 0; i < 64; i++ {
		n, err := sysRead(c.fd, buf[:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			c.close()
			return
		}
	}
}

// abort ends c after the client went away or failed: the request in
// flight, if any, is abandoned.
func (c *conn) abort() {
	x := &c.x
	if c.state == stHeld {
		c.l.unhold(c, false)
	}
	if x.be != nil {
		x.be.close()
		x.be = nil
	}
	if x.up != nil {
		x.up.Done(context.Canceled)
		x.up = nil
	}
	if x.active {
		x.ex.Term = proxy.TermClientAborted
		c.endExchange()
	}
	c.close()
}

// close closes c now.
func (c *conn) close() {
	if c.state == stClosed {
		return
	}
	if c.x.active || c.state == stHeld {
		c.abort()
		return
	}
	c.state = stClosed
	c.l.forget(c.fd)
	if c.tls != nil {
		c.sendAlert(alertCloseNotify)
		c.releaseTLS()
	}
	unix.Close(c.fd)
	c.fd = -1
	c.l.schedule(c, 0)
	if c.in != nil {
		c.l.putSmall(c.in)
		c.in = nil
	}
	if c.out != nil {
		c.l.putSmall(c.out)
		c.out = nil
	}
	c.l.connGone()
}

// handOver gives c to net/http with what was read from it: the request it
// starts is one the loop does not serve itself.
func (c *conn) handOver() {
	l := c.l
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	l.forget(c.fd)
	l.schedule(c, 0)
	f := os.NewFile(uintptr(c.fd), "client")
	nc, err := net.FileConn(f) // a copy of the descriptor, in Go's poller
	f.Close()
	c.fd = -1
	c.state = stClosed
	pre := append([]byte(nil), c.in[c.inR:c.inW]...)
	if c.in != nil {
		l.putSmall(c.in)
		c.in = nil
	}
	if c.out != nil {
		l.putSmall(c.out)
		c.out = nil
	}
	var hc net.Conn
	if t := c.tls; t != nil && err == nil {
		rc := &recordConn{Conn: nc, state: t.state, rd: t.rd, wr: t.wr, pre: pre, raw: append([]byte(nil), t.raw...)}
		if t.closed {
			rc.rerr = io.EOF
		}
		hc = rc
	} else {
		hc = &handedConn{Conn: nc, pre: pre}
	}
	c.releaseTLS()
	l.nconns--
	if err != nil {
		l.s.connClosed()
		return
	}
	l.s.handed.Add(1)
	l.s.handOver(hc)
}

func (c *conn) clientIP() string {
	if c.ip == "" {
		switch sa := c.sa.(type) {
		case *unix.SockaddrInet4:
			c.ip = net.IP(sa.Addr[:]).String()
		case *unix.SockaddrInet6:
			c.ip = net.IP(sa.Addr[:]).String()
		}
	}
	return c.ip
}

func (c *conn) remoteAddr() string {
	switch sa := c.sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	}
	return ""
}

// addrs are the client's address and the address it connected to (the
// accepted socket's own, looked up once per connection), for a PROXY
// protocol header.
func (c *conn) addrs() (client, local netip.AddrPort) {
	if !c.local.IsValid() {
		if sa, err := unix.Getsockname(c.fd); err == nil {
			c.local = addrPort(sa)
		}
	}
	return addrPort(c.sa), c.local
}

// addrPort is sa as a netip.AddrPort; invalid if sa is not TCP/IP.
func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
