package epoll

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy/epoll/internal/tls13"
)

// alertCloseNotify ends a connection that closes normally.
const alertCloseNotify = tls13.AlertCloseNotify

// tlsConn is the TLS side of a connection a loop serves over TLS 1.3:
// conn.in and conn.out hold plaintext as for a plain connection, raw the
// ciphertext read and not opened yet, wbuf the records protected and not
// written yet.
type tlsConn struct {
	rd     *tls13.Reader
	wr     *tls13.Writer
	state  tls.ConnectionState
	raw    []byte // ciphertext not opened yet (a record in part)
	wbuf   []byte
	wR     int
	closed bool // close_notify came, or a protocol error: nothing more is read
	alert  bool // an alert went: nothing more is written
	// drained: a KeyUpdate answer written while the records were opened
	// emptied what was pending, out of the path that resumes a backend
	// paused for this client (see afterAnswer).
	drained bool
}

// adoption is a connection a TLS front hands to a loop.
type adoption struct {
	fd  int
	sa  unix.Sockaddr
	tls *tlsConn
}

// cmdAdopt asks a loop to take the connections queued for it.
const cmdAdopt = cmdPoolReady << 1

// adopt queues a for l; false if l has stopped (the caller closes a).
func (l *loop) adopt(a adoption) bool {
	l.evmu.Lock()
	if l.evclosed {
		l.evmu.Unlock()
		return false
	}
	l.adoptQ = append(l.adoptQ, a)
	l.evmu.Unlock()
	l.post(cmdAdopt)
	return true
}

// takeAdopted serves the connections queued by adopt.
func (l *loop) takeAdopted() {
	l.evmu.Lock()
	q := l.adoptQ
	l.adoptQ = nil
	l.evmu.Unlock()
	for _, a := range q {
		l.nconns++
		c := &conn{l: l, fd: a.fd, sa: a.sa, first: true, idleTimed: true, tls: a.tls}
		if err := l.register(a.fd, c, evConn); err != nil {
			unix.Close(a.fd)
			l.nconns--
			l.s.connClosed()
			continue
		}
		l.schedule(c, l.now+int64(l.s.ReadHeaderTimeout))
		if len(a.tls.raw) > 0 {
			// What the client sent right after its Finished: requests,
			// and maybe already its close_notify.
			raw := append(l.getSmall()[:0], a.tls.raw...)
			a.tls.raw = raw
			open := c.openRecords()
			if c.state == stClosed {
				continue
			}
			c.eof = !open
			c.process()
		} else {
			a.tls.raw = nil
		}
	}
}

// dropAdopted closes what was queued for a loop that stopped.
func (l *loop) dropAdopted() {
	l.evmu.Lock()
	q := l.adoptQ
	l.adoptQ = nil
	l.evmu.Unlock()
	for _, a := range q {
		unix.Close(a.fd)
		l.s.connClosed()
	}
}

// readTLS reads ciphertext once and opens the records complete in it, as
// read does for plain connections; n is the ciphertext read.
func (c *conn) readTLS() (int, error) {
	t := c.tls
	if t.raw == nil {
		t.raw = c.l.getSmall()[:0]
	}
	if cap(t.raw)-len(t.raw) == 0 {
		// A record larger than the buffer is coming (openRecords
		// compacted it): make room for a whole one.
		grown := make([]byte, len(t.raw), max(2*cap(t.raw), tls13.HeaderLen+tls13.MaxCiphertext))
		copy(grown, t.raw)
		c.l.putSmall(t.raw)
		t.raw = grown
	}
	space := cap(t.raw) - len(t.raw)
	n, err := sysRead(c.fd, t.raw[len(t.raw):cap(t.raw)])
	switch {
	case err == unix.EINTR:
		return c.readTLS()
	case err == unix.EAGAIN:
		return 0, unix.EAGAIN
	case err != nil:
		c.abort()
		return -1, err
	}
	if n == 0 || t.closed {
		return 0, nil
	}
	t.raw = t.raw[:len(t.raw)+n]
	if !c.openRecords() {
		if c.state == stClosed {
			return -1, errTLSClosed
		}
		return 0, nil // close_notify: the end of the client's data
	}
	if n == space {
		return n, spaceErr(space)
	}
	return n, nil
}

var errTLSClosed = errors.New("tls: connection closed")

// openRecords moves the application data of the complete records in raw
// to in, and answers a KeyUpdate that asks for one. It returns false if
// the client sent close_notify (c reads nothing more) or c was closed on
// a protocol error.
func (c *conn) openRecords() bool {
	t := c.tls
	off := 0
	asked := false
	for {
		used, data, ask, err := t.rd.Open(t.raw[off:])
		if err != nil {
			if err == io.EOF {
				t.closed = true
				t.raw = t.raw[:0]
				if asked {
					c.answer()
				}
				return false
			}
			// A protocol error ends the connection with its alert, at
			// once: what came before it in this read is not served. After
			// the peer's fatal alert nothing more is sent (RFC 8446
			// section 6.2).
			var e *tls13.Error
			if errors.As(err, &e) {
				c.sendAlert(e.Alert)
			} else {
				t.alert = true
			}
			t.closed = true
			c.abort()
			return false
		}
		if used == 0 {
			break
		}
		off += used
		if ask {
			// Answered once for all that came in this read (Writer.Answer
			// coalesces until the next application data anyway).
			t.wbuf = t.wr.Answer(t.wbufOrNew(c.l))
			asked = true
		}
		c.appendIn(data)
	}
	if asked && !c.answer() {
		return false
	}
	// Keep the record in part at the start.
	t.raw = t.raw[:copy(t.raw, t.raw[off:])]
	if len(t.raw) == 0 {
		c.l.putSmall(t.raw)
		t.raw = nil
		return true
	}
	if need := tls13.RecordLen(t.raw); need > cap(t.raw) {
		grown := make([]byte, len(t.raw), need)
		copy(grown, t.raw)
		c.l.putSmall(t.raw)
		t.raw = grown
	}
	return true
}

// answer writes a KeyUpdate answer sealed after what was pending, at
// once, as crypto/tls does (RFC 8446 section 4.6.3: before any more
// application data; the records sealed before it under the old key go
// first, and what c.out holds is sealed later, under the new one). If
// that empties what was pending, drained tells readable to go on as a
// flush that empties it does: a backend paused for this client resumes
// (it stalled until its read timeout, issue 16 item 11). False if c was
// closed.
func (c *conn) answer() bool {
	t := c.tls
	if !c.writeWbuf() {
		return false
	}
	if t.wR == len(t.wbuf) {
		t.drained = true
	}
	return true
}

// afterAnswer does what a write that empties the pending output does, after
// answer emptied it while records were being opened.
func (c *conn) afterAnswer() {
	t := c.tls
	if t == nil || !t.drained {
		return
	}
	t.drained = false
	if c.state != stClosed && !c.pending() {
		c.written()
	}
}

// appendIn appends application data to c.in.
func (c *conn) appendIn(p []byte) {
	if len(p) == 0 {
		return
	}
	if c.in == nil {
		c.in = c.l.getSmall()
		c.inR, c.inW = 0, 0
	}
	if c.inR == c.inW {
		c.inR, c.inW = 0, 0
	}
	if len(c.in)-c.inW < len(p) {
		c.inW = copy(c.in, c.in[c.inR:c.inW])
		c.inR = 0
		if len(c.in)-c.inW < len(p) {
			grown := make([]byte, max(2*len(c.in), c.inW+len(p)))
			copy(grown, c.in[:c.inW])
			c.l.putSmall(c.in)
			c.in = grown
		}
	}
	c.inW += copy(c.in[c.inW:], p)
}

func (t *tlsConn) wbufOrNew(l *loop) []byte {
	if t.wbuf == nil {
		t.wbuf = l.getBig()[:0]
		t.wR = 0
	}
	return t.wbuf
}

// sealOut protects the plaintext pending in c.out, after what is already
// protected.
func (c *conn) sealOut() {
	t := c.tls
	if c.outR < len(c.out) {
		t.wbuf = t.wr.Seal(t.wbufOrNew(c.l), c.out[c.outR:])
		c.outR = len(c.out)
	}
}

// flushTLS writes the protected records pending; false if c was closed.
func (c *conn) flushTLS() bool {
	c.sealOut()
	return c.writeWbuf()
}

// writeWbuf writes what is protected already; false if c was closed.
func (c *conn) writeWbuf() bool {
	t := c.tls
	for t.wR < len(t.wbuf) {
		n, err := sysWrite(c.fd, t.wbuf[t.wR:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			t.closed = true
			c.abort()
			return false
		}
		t.wR += n
	}
	c.releaseWbuf()
	return true
}

// sendTLS protects p after what is pending and writes; false if c was
// closed.
func (c *conn) sendTLS(p []byte) bool {
	c.x.committed = true
	c.sealOut()
	t := c.tls
	t.wbuf = t.wr.Seal(t.wbufOrNew(c.l), p)
	return c.flushTLS()
}

func (c *conn) releaseWbuf() {
	t := c.tls
	if t.wbuf != nil && t.wR == len(t.wbuf) {
		c.l.putBig(t.wbuf)
		t.wbuf, t.wR = nil, 0
	}
}

// pending reports whether anything is left to write to the client.
func (c *conn) pending() bool {
	return c.outR < len(c.out) || (c.tls != nil && c.tls.wR < len(c.tls.wbuf))
}

// sendAlert seals an alert (close_notify, or a fatal one) after what is
// pending and makes one attempt to write it all; best effort, the
// connection is closing.
func (c *conn) sendAlert(a tls13.Alert) {
	t := c.tls
	if t == nil || t.alert || c.fd < 0 {
		return
	}
	t.alert = true
	t.wbuf = t.wr.Alert(t.wbufOrNew(c.l), a)
	for t.wR < len(t.wbuf) {
		n, err := sysWrite(c.fd, t.wbuf[t.wR:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		t.wR += n
	}
}

// cutShort ends a response that was cut short (its backend failed after
// part of it went out) with an internal_error alert instead of the
// close_notify that would tell the client it is complete: with a body
// delimited by the close, the client could not tell otherwise.
func (c *conn) cutShort() {
	c.sendAlert(tls13.AlertInternalError)
}

// releaseTLS returns c's TLS buffers.
func (c *conn) releaseTLS() {
	t := c.tls
	if t == nil {
		return
	}
	if t.raw != nil {
		c.l.putSmall(t.raw)
		t.raw = nil
	}
	if t.wbuf != nil {
		c.l.putBig(t.wbuf)
		t.wbuf, t.wR = nil, 0
	}
}

// recordConn is a TLS connection a loop hands over to the Fallback: its
// records go on being protected with the loop's keys, now on net/http's
// goroutines.
type recordConn struct {
	net.Conn
	state tls.ConnectionState

	rmu  sync.Mutex
	rd   *tls13.Reader
	pre  []byte // plaintext opened, not read yet
	raw  []byte // ciphertext not opened yet
	rerr error

	wmu    sync.Mutex
	wr     *tls13.Writer
	wbuf   []byte
	wclose bool // close_notify or a fatal alert sent
}

// ConnectionState is the handshake's state (see TLSConnectionState).
func (c *recordConn) ConnectionState() tls.ConnectionState { return c.state }

func (c *recordConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.pre) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		used, data, asked, err := c.rd.Open(c.raw)
		switch {
		case err == io.EOF:
			c.rerr = io.EOF
			continue
		case err != nil:
			var e *tls13.Error
			if errors.As(err, &e) {
				c.alert(e.Alert)
			}
			c.rerr = err
			continue
		case used == 0:
			if need := max(tls13.RecordLen(c.raw), len(c.raw)+1); need > cap(c.raw) {
				grown := make([]byte, len(c.raw), max(4096, 2*cap(c.raw), need))
				copy(grown, c.raw)
				c.raw = grown
			}
			n, err := c.Conn.Read(c.raw[len(c.raw):cap(c.raw)])
			c.raw = c.raw[:len(c.raw)+n]
			if err != nil && n == 0 {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return 0, err // a deadline (net/http moves them): not the end
				}
				if err == io.EOF && len(c.raw) > 0 {
					err = io.ErrUnexpectedEOF
				}
				c.rerr = err
			}
			continue
		}
		c.pre = append(c.pre[:0], data...)
		c.raw = c.raw[:copy(c.raw, c.raw[used:])]
		if asked {
			// Written at once, as crypto/tls does: a client that does not
			// read blocks this Read then, so answers do not pile up.
			c.wmu.Lock()
			if !c.wclose {
				c.wbuf = c.wr.Answer(c.wbuf[:0])
				_, _ = c.Conn.Write(c.wbuf)
			}
			c.wmu.Unlock()
		}
	}
	n := copy(p, c.pre)
	c.pre = c.pre[n:]
	return n, nil
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclose {
		return 0, net.ErrClosed
	}
	c.wbuf = c.wr.Seal(c.wbuf[:0], p)
	if _, err := c.Conn.Write(c.wbuf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// alert sends alert a once, waiting at most as crypto/tls does; nothing
// is written after it.
func (c *recordConn) alert(a tls13.Alert) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclose {
		return
	}
	c.wclose = true
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.wbuf = c.wr.Alert(c.wbuf[:0], a)
	_, _ = c.Conn.Write(c.wbuf)
	_ = c.Conn.SetWriteDeadline(time.Time{})
}

// CloseWrite sends close_notify and closes the sending side.
func (c *recordConn) CloseWrite() error {
	c.alert(alertCloseNotify)
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *recordConn) Close() error {
	c.alert(alertCloseNotify)
	return c.Conn.Close()
}
