package epoll

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

// This file streams request bodies from a client to its backend, with
// backpressure both ways: the loop reads the client only while its input
// buffer (at most maxBuffered) has room, and takes from that buffer only
// what the backend socket accepts. A Content-Length body goes through as
// it is; a chunked one is decoded (as strictly as net/http decodes it) and
// re-chunked, as net/http's Transport does, trailers dropped.

// reqBody is the request body of an exchange on its way to the backend.
type reqBody struct {
	mode    int   // reqNoBody, reqLength, reqChunked
	left    int64 // reqLength: bytes still to come from the client
	dec     chunkDecoder
	done    bool   // all of it was read from the client
	sent    bool   // all of it was handed to the backend socket
	wbuf    []byte // reqChunked: re-chunked bytes to write, wbuf[wR:]
	wR      int
	expect  bool // the client sent Expect: 100-continue
	waiting bool // held back until 100 Continue or ExpectContinueTimeout
	skipped bool // not sent (the backend answered first, or stopped reading)
	cont    bool // a 100 Continue went to the client
	read    int64
}

// unfinished reports whether the client has yet to send some of the body:
// what follows it on the connection cannot be read as the next request.
func (b *reqBody) unfinished() bool { return b.mode != reqNoBody && !b.done }

// sending reports whether body bytes may still go to the backend.
func (b *reqBody) sending() bool {
	return b.mode != reqNoBody && !b.sent && !b.skipped && !b.waiting
}

func (b *reqBody) release(l *loop) {
	if b.wbuf != nil {
		l.putSmall(b.wbuf)
		b.wbuf = nil
	}
}

// errBodyShort is a body cut short by the client's FIN.
var errBodyShort = errors.New("unexpected EOF")

// startBody begins the body once the request header is written; false if
// there is none to send.
func (be *bconn) startBody() bool {
	c := be.c
	b := &c.x.rb
	if b.mode == reqNoBody || b.sent || b.skipped {
		return false
	}
	// Responses are read while the body goes (an early answer).
	be.state = bHeader
	be.dialAt = 0
	if b.expect && !b.cont {
		b.waiting = true
		be.contAt = be.l.now + int64(be.p.opts.ExpectContinueTimeout)
	}
	be.rearm()
	if be.w > be.r && !be.process() {
		return true
	}
	if be.c != nil && be.hup {
		be.readResp()
	}
	if be.c != nil && be.state != bClosed {
		be.pumpBody()
	}
	return true
}

// pumpBody sends what the client sent of the body, reading the client on
// while the backend takes it.
func (be *bconn) pumpBody() {
	c := be.c
	if c == nil || be.state != bHeader && be.state != bBody {
		return // the header is not sent yet, or it is over
	}
	b := &c.x.rb
	for b.sending() {
		for b.wR < len(b.wbuf) {
			n, err := sysWrite(be.fd, b.wbuf[b.wR:])
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				return // on EPOLLOUT
			}
			if err != nil {
				be.bodyWriteFailed(err)
				return
			}
			b.wR += n
		}
		if b.done {
			b.sent = true
			b.release(be.l)
			be.bodySent()
			return
		}
		switch b.mode {
		case reqLength:
			if avail := min(b.left, int64(c.inW-c.inR)); avail > 0 {
				n, err := sysWrite(be.fd, c.in[c.inR:c.inR+int(avail)])
				if err == unix.EINTR {
					continue
				}
				if err == unix.EAGAIN {
					return
				}
				if err != nil {
					be.bodyWriteFailed(err)
					return
				}
				c.inR += n
				b.left -= int64(n)
				b.read += int64(n)
				b.done = b.left == 0
				continue
			}
		case reqChunked:
			progress, err := b.rechunk(be.l, c)
			if err != nil {
				c.bodyError(err)
				return
			}
			if progress {
				continue
			}
		}
		// Everything buffered went: read the client on.
		if !c.readMore() || be.c != c {
			return
		}
	}
}

// rechunk decodes what is buffered of a chunked body into wbuf as one
// chunk (and the last chunk, at the end); progress if it consumed input.
func (b *reqBody) rechunk(l *loop, c *conn) (bool, error) {
	// wbuf: room for the size line before the data, "\r\n0\r\n\r\n" after.
	const pre, post = 18, 7
	if b.wbuf == nil {
		b.wbuf = l.getSmall()
	}
	buf := b.wbuf[:cap(b.wbuf)]
	k := pre
	progress := false
	for c.inR < c.inW && k < len(buf)-post && !b.done {
		p := c.in[c.inR:c.inW]
		n, data, done, err := b.dec.next(p, len(buf)-post-k)
		if err != nil {
			return progress, err
		}
		if n > 0 {
			progress = true
		}
		c.inR += n
		k += copy(buf[k:], data)
		b.read += int64(len(data))
		b.done = done
		if n == 0 {
			break
		}
	}
	start := pre
	if k > pre {
		size := strconv.AppendInt(buf[:0:pre], int64(k-pre), 16) // fits: 16 hex digits at most
		hl := len(size) + 2
		start = pre - hl
		copy(buf[start:], size)
		buf[pre-2], buf[pre-1] = '\r', '\n'
		buf[k], buf[k+1] = '\r', '\n'
		k += 2
	}
	if b.done {
		k += copy(buf[k:], "0\r\n\r\n")
	}
	b.wbuf, b.wR = buf[:k], start
	if k == pre {
		b.wbuf, b.wR = buf[:0], 0
	}
	return progress, nil
}

// bodySent runs once the whole request went: the response header is
// awaited from now on (ResponseHeaderTimeout, as net/http's Transport).
func (be *bconn) bodySent() {
	if be.state == bHeader {
		if d := be.p.opts.ResponseHeaderTimeout; d > 0 {
			be.hdrAt = be.l.now + int64(d)
			be.rearm()
		}
	}
}

// bodyWriteFailed handles a backend that stopped taking the body: what it
// answered, if anything, is read; failing that the attempt failed (a
// request with a body is never sent again but after a dial error).
func (be *bconn) bodyWriteFailed(err error) {
	c := be.c
	c.x.rb.skipped = true
	c.x.rb.release(be.l)
	werr := &net.OpError{Op: "write", Net: "tcp", Addr: be.p.addr, Err: os.NewSyscallError("write", err)}
	if be.state == bBody {
		return // the response is on its way; the client connection closes after it
	}
	be.wErr = werr
	be.hup = true // read to EOF: an answer may be there
	be.bodySent()
	be.readResp()
}

// continueTimeout ends the wait for 100 Continue: the client is told to
// send the body (net/http's server does so when the Transport starts
// reading it, ExpectContinueTimeout after sending the header).
func (be *bconn) continueTimeout() {
	c := be.c
	b := &c.x.rb
	if !b.waiting {
		return
	}
	if !b.cont {
		b.cont = true
		if !c.sendInfo(continueLine(c.x.v10)) {
			return
		}
	}
	b.waiting = false
	be.pumpBody()
}

func continueLine(v10 bool) []byte {
	if v10 {
		return []byte("HTTP/1.0 100 Continue\r\n\r\n")
	}
	return []byte("HTTP/1.1 100 Continue\r\n\r\n")
}

// informational handles a 1xx response (not 101) whose header block is
// hdr. The net/http plane passes it to the client for a request it sends
// through net/http's Transport (one that is not replayable), and a 100
// Continue releases a body held back for it.
func (be *bconn) informational(status int, hdr []byte) bool {
	c := be.c
	x := &c.x
	if x.replay {
		return true // proxy.Transport skips them
	}
	if status == 100 {
		x.rb.cont = true
	}
	out := make([]byte, 0, 64+len(hdr))
	out = appendStatusLine(out, x.v10, status)
	_, rest := nextLine(hdr)
	for ln, more := nextLine(rest); len(ln) > 0 || len(more) > 0; ln, more = nextLine(more) {
		if ln = trim(ln); len(ln) > 0 {
			out = append(out, ln...)
			out = append(out, crlf...)
		}
	}
	out = append(out, crlf...)
	if !c.sendInfo(out) {
		return false
	}
	if status == 100 && x.rb.waiting {
		x.rb.waiting = false
		be.contAt = 0
		be.pumpBody()
	}
	return be.c == c && be.state != bClosed
}

// finalWhileWaiting handles a final response that came while the body was
// held back for 100 Continue: net/http's Transport then sends the body
// only if the connection stays open.
func (be *bconn) finalWhileWaiting(keep bool) {
	b := &be.c.x.rb
	if !b.waiting {
		return
	}
	b.waiting = false
	be.contAt = 0
	if !keep {
		b.skipped = true
	}
}

// appendStatusLine appends a status line as net/http's server writes it.
func appendStatusLine(out []byte, v10 bool, status int) []byte {
	if v10 {
		out = append(out, "HTTP/1.0 "...)
	} else {
		out = append(out, "HTTP/1.1 "...)
	}
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	if t := statusText(status); t != "" {
		out = append(out, t...)
	} else {
		out = append(out, "status code "...)
		out = strconv.AppendInt(out, int64(status), 10)
	}
	return append(out, crlf...)
}

// sendInfo writes an informational response to the client: it commits
// nothing (a failure later is still answered with an error status), and
// the backend is not read while it waits in the socket.
func (c *conn) sendInfo(p []byte) bool {
	committed := c.x.committed
	ok := c.send(p)
	c.x.committed = committed
	if ok && c.pending() && c.x.be != nil {
		c.x.be.paused = true
	}
	return ok
}

// readMore reads the client once more if it may have sent more, for a
// body being passed on; false if nothing came (or c went away).
func (c *conn) readMore() bool {
	if !c.more && !c.rdhup {
		return false
	}
	if c.inW-c.inR >= maxBuffered {
		return false
	}
	n, err := c.read()
	switch {
	case n < 0:
		return false
	case err == unix.EAGAIN:
		c.more = false
		return false
	case n == 0:
		c.eof = true
		c.abort() // net/http cancels a request whose client went away
		return false
	}
	c.more = n == err2space(err)
	return true
}

// bodyError answers a request whose body the client framed wrongly (a bad
// chunk) with 400, as the net/http plane does, and closes the connection.
func (c *conn) bodyError(err error) {
	x := &c.x
	x.rb.skipped = true
	if x.up != nil {
		x.up.Done(nil) // the client's fault, not the backend's
		x.up = nil
	}
	c.fail(proxy.ClientError(fmt.Errorf("%w", err)))
}

// chunkDecoder decodes a chunked body incrementally with net/http's rules
// (net/http/internal.chunkedReader and the body's trailer): a size line is
// hex digits (at most 16), then either an extension after ';' or only
// spaces and tabs, ending in CRLF with no other CR and no bare LF, at most
// maxChunkLine bytes; chunk data ends in CRLF; a sender whose framing
// outweighs its data too much is refused; trailer lines must be
// well-formed header lines, continuations allowed (they are dropped, as the net/http plane drops
// undeclared trailers).
type chunkDecoder struct {
	state  uint8
	line   int // bytes of the current line, line ending excluded
	size   uint64
	digits int
	left   uint64 // data bytes left in the chunk
	excess int64
	tlen   int  // trailer bytes, once one begins
	tline  bool // a trailer line was read: a continuation may follow
}

const (
	dHex = iota
	dWS
	dExt
	dSizeLF
	dData
	dDataCR
	dDataLF
	dTrailerLine // at the start of a trailer line (or the final CRLF)
	dTrailerName
	dTrailerValue
	dTrailerLF
	dEndLF
	dDone
)

// maxTrailerPeek is how far net/http looks for the end of a trailer.
const maxTrailerPeek = 4096

// maxChunkLine is the longest size line net/http reads (its 4 KiB read
// buffer, CRLF included).
const maxChunkLine = 4094

// maxChunkExcess is net/http's bound on framing bytes beyond 16 per chunk.
const maxChunkExcess = 16 << 10

var (
	errChunkBareLF   = errors.New("chunked line ends with bare LF")
	errChunkCR       = errors.New("invalid CR in chunked line")
	errChunkLine     = errors.New("header line too long")
	errChunkHex      = errors.New("invalid byte in chunk length")
	errChunkEmpty    = errors.New("empty hex number for chunk length")
	errChunkTooLarge = errors.New("http chunk length too large")
	errChunkExcess   = errors.New("chunked encoding contains too much non-data")
	errChunkEnd      = errors.New("malformed chunked encoding")
	errTrailer       = errors.New("malformed trailer")
)

// next consumes p up to the end of the first run of data bytes in it (at
// most max of them), or to the end of the body: n is how much of p it
// consumed, data that run (part of p), done the end of the body.
func (d *chunkDecoder) next(p []byte, max int) (n int, data []byte, done bool, err error) {
	i := 0
	for i < len(p) {
		c := p[i]
		switch d.state {
		case dHex, dWS, dExt:
			switch {
			case c == '\n':
				return i, nil, false, errChunkBareLF
			case c == '\r':
				if d.digits == 0 {
					return i, nil, false, errChunkEmpty
				}
				d.state = dSizeLF
				i++
				continue
			}
			if d.line++; d.line > maxChunkLine {
				return i, nil, false, errChunkLine
			}
			switch d.state {
			case dHex:
				switch {
				case isHex(c):
					if d.digits == 16 {
						return i, nil, false, errChunkTooLarge
					}
					d.digits++
					d.size = d.size<<4 | uint64(unhex(c))
				case c == ';':
					if d.digits == 0 {
						return i, nil, false, errChunkEmpty
					}
					d.state = dExt
				case c == ' ' || c == '\t':
					if d.digits == 0 {
						return i, nil, false, errChunkHex
					}
					d.state = dWS
				default:
					return i, nil, false, errChunkHex
				}
			case dWS:
				switch c {
				case ' ', '\t':
				default:
					// "5 x" or "5 ;x": net/http trims only trailing
					// white space, then cuts at ';'.
					return i, nil, false, errChunkHex
				}
			}
		case dSizeLF:
			if c != '\n' {
				return i, nil, false, errChunkCR
			}
			i++
			d.excess += int64(d.line) + 2
			d.excess -= 16 + 2*int64(d.size)
			d.excess = maxInt64(d.excess, 0)
			if d.excess > maxChunkExcess {
				return i, nil, false, errChunkExcess
			}
			d.left = d.size
			d.size, d.digits, d.line = 0, 0, 0
			if d.left == 0 {
				d.state = dTrailerLine
			} else {
				d.state = dData
			}
			continue
		case dData:
			k := uint64(len(p) - i)
			if k > d.left {
				k = d.left
			}
			if k > uint64(max) {
				k = uint64(max)
			}
			if k == 0 {
				return i, nil, false, nil
			}
			d.left -= k
			if d.left == 0 {
				d.state = dDataCR
			}
			return i + int(k), p[i : i+int(k)], false, nil
		case dDataCR:
			if c != '\r' {
				return i, nil, false, errChunkEnd
			}
			d.state = dDataLF
		case dDataLF:
			if c != '\n' {
				return i, nil, false, errChunkEnd
			}
			d.state = dHex
		case dTrailerLine:
			if d.tlen == 0 {
				// The trailer starts: net/http reads one only if it sees
				// CRLF CRLF within its read buffer from here (which may
				// take bytes of the next request), and then lines ending
				// in LF or CRLF, as textproto reads a header.
				rest := p[i:]
				if len(rest) < 2 {
					return i, nil, false, nil
				}
				if rest[0] != '\r' || rest[1] != '\n' {
					if !bytes.Contains(rest[:min(len(rest), maxTrailerPeek)], crlfcrlf) {
						if len(rest) >= maxTrailerPeek {
							return i, nil, false, errTrailer
						}
						return i, nil, false, nil
					}
				}
			}
			switch {
			case c == '\n':
				d.state = dDone
				return i + 1, nil, true, nil
			case c == '\r':
				d.state = dEndLF
			case (c == ' ' || c == '\t') && d.tline:
				d.state = dTrailerValue // obs-fold, as textproto reads it
			case tchar[c]:
				d.state = dTrailerName
			default:
				return i, nil, false, errTrailer
			}
		case dTrailerName:
			switch {
			case c == '\n':
				return i, nil, false, errTrailer
			case c == ':':
				d.state, d.tline = dTrailerValue, true
			case !tchar[c]:
				return i, nil, false, errTrailer
			}
		case dTrailerValue:
			switch {
			case c == '\r':
				d.state = dTrailerLF
			case c == '\n':
				d.state = dTrailerLine
			case c < ' ' && c != '\t' || c == 0x7f:
				return i, nil, false, errTrailer
			}
		case dTrailerLF:
			if c != '\n' {
				return i, nil, false, errTrailer
			}
			d.state = dTrailerLine
		case dEndLF:
			if c != '\n' {
				return i, nil, false, errTrailer
			}
			d.state = dDone
			return i + 1, nil, true, nil
		case dDone:
			return i, nil, true, nil
		}
		if d.state >= dTrailerLine && d.state <= dTrailerLF {
			if d.tlen++; d.tlen > maxChunkLine {
				return i, nil, false, errTrailer
			}
		}
		i++
	}
	return i, nil, false, nil
}

func maxInt64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// forwardDechunked passes a chunked response body to an HTTP/1.0 client
// decoded (its end is the connection's); false once be no longer reads.
func (be *bconn) forwardDechunked() bool {
	for be.r < be.w {
		n, data, done, err := be.dechunk.next(be.buf[be.r:be.w], be.w-be.r)
		if err != nil {
			be.c.fail(proxy.UpstreamError(be.p.up.Name(), fmt.Errorf("%w: %w", proxy.ErrResponseStarted, err)))
			return false
		}
		be.r += n
		if len(data) > 0 && !be.forward(data) {
			return false
		}
		if done {
			be.finish()
			return false
		}
		if be.paused {
			break
		}
		if n == 0 {
			break
		}
	}
	if be.r == be.w {
		be.r, be.w = 0, 0
	}
	if !be.c.x.committed && be.flushAt == 0 {
		be.flushAt = be.l.now + int64(headerFlushDelay)
	}
	be.rearm()
	return !be.paused
}

// skipCRLF skips the CR and LF bytes among the next four after a POST, as
// net/http's server does ("tolerance for old buggy clients"); false if it
// must see more bytes to know.
func (c *conn) skipCRLF() bool {
	p := c.in[c.inR:c.inW]
	k := 0
	for k < len(p) && k < 4 && (p[k] == '\r' || p[k] == '\n') {
		k++
	}
	if k == len(p) && k < 4 && !c.eof {
		return false // net/http peeks at four bytes
	}
	c.inR += k
	c.afterPost = false
	return true
}
