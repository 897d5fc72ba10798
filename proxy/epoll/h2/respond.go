package h2

import (
	"bytes"
	"strconv"
	"unsafe"

	"golang.org/x/net/http2/hpack"
)

// Responses. The loop passes response header fields as it has them from
// its HTTP/1.1 backend: "Name: value" lines (CRLF or LF), which become
// lower-case HPACK fields, hop-by-hop ones dropped (Connection, the
// fields it names, Keep-Alive, Proxy-Connection, Transfer-Encoding,
// Upgrade, TE), as httputil.ReverseProxy and net/http's HTTP/2 server
// drop them.

// WriteHeaders sends the response header: status and the header lines
// h1 ("Name: value\r\n"...; nil for none). A status below 200 is an
// informational response (100 Continue, 103 Early Hints) and may come
// several times; then a final one. end says the response has no body
// (HEAD, 204, 304, or an empty one). A header block larger than the
// client's frame size goes out in CONTINUATION frames. Header blocks are
// not bound by the output room (their size is the backend's header bound
// at most, per stream). It returns false when the stream is over.
func (s *Stream) WriteHeaders(status int, h1 []byte, end bool) bool {
	if s.dead || s.headersSent || status < 100 || status > 999 || status == 101 {
		return false
	}
	if status < 200 {
		s.continued = true
		s.writeHeaderBlock(status, h1, false)
		return true
	}
	s.headersSent = true
	s.continued = true
	s.writeHeaderBlock(status, h1, end)
	if end {
		s.closeLocal()
	} else {
		s.active = true
		s.c.nactive++
	}
	return true
}

// WriteTrailers ends the response with trailer lines (HEADERS with
// END_STREAM). It returns false when the stream is over.
func (s *Stream) WriteTrailers(h1 []byte) bool {
	if s.dead || !s.headersSent || s.endSent {
		return false
	}
	s.writeHeaderBlock(0, h1, true)
	s.closeLocal()
	return true
}

// respondSelf answers a stream the loop never sees with a status and no
// body.
func (s *Stream) respondSelf(status int) {
	s.headersSent = true
	s.writeHeaderBlock(status, []byte("Content-Length: 0\r\n"), true)
	s.closeLocal()
}

// writeHeaderBlock encodes and frames one header block (status 0:
// trailers).
func (s *Stream) writeHeaderBlock(status int, h1 []byte, end bool) {
	c := s.c
	c.hbuf = c.hbuf[:0]
	if status != 0 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText[status]})
	}
	c.encodeH1(h1)
	blk := c.hbuf
	flags := byte(0)
	if end {
		flags |= flagEndStream
	}
	typ := frameHeaders
	for {
		n := min(len(blk), int(c.peerMaxFrame))
		f := flags
		if n == len(blk) {
			f |= flagEndHeaders
		}
		c.out = appendFrameHeader(c.out, n, typ, f, s.id)
		c.out = append(c.out, blk[:n]...)
		blk = blk[n:]
		if len(blk) == 0 {
			break
		}
		typ, flags = frameContinuation, 0
	}
}

// encodeH1 encodes header lines as HPACK fields into c.hbuf.
func (c *Conn) encodeH1(h1 []byte) {
	if len(h1) == 0 {
		return
	}
	// Names a Connection field lists are dropped too.
	var named [8][]byte
	nnamed := 0
	for rest := h1; len(rest) > 0; {
		var name, v []byte
		name, v, rest = nextField(rest)
		if len(name) == 10 && eqFold(name, "connection") {
			for len(v) > 0 && nnamed < len(named) {
				var tok []byte
				tok, v = nextToken(v)
				if len(tok) > 0 {
					named[nnamed] = tok
					nnamed++
				}
			}
		}
	}
next:
	for rest := h1; len(rest) > 0; {
		var name, v []byte
		name, v, rest = nextField(rest)
		if len(name) == 0 || hopByHop(name) {
			continue
		}
		for _, t := range named[:nnamed] {
			if eqFoldBytes(name, t) {
				continue next
			}
		}
		c.lower = append(c.lower[:0], name...)
		for i, b := range c.lower {
			if 'A' <= b && b <= 'Z' {
				c.lower[i] = b + 'a' - 'A'
			}
		}
		// why: the encoder has no dynamic table (NewConn), so it keeps
		// neither string past this call.
		_ = c.enc.WriteField(hpack.HeaderField{Name: bstr(c.lower), Value: bstr(v)})
	}
}

// bstr views b as a string for a call that does not keep it.
func bstr(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// nextField splits the first "Name: value" line off b, the value without
// surrounding blanks; a line without a colon has an empty name.
func nextField(b []byte) (name, v, rest []byte) {
	line := b
	rest = nil
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		line, rest = b[:i], b[i+1:]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, nil, rest
	}
	name, v = line[:colon], line[colon+1:]
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return name, v, rest
}

// nextToken splits the first comma-separated token off v.
func nextToken(v []byte) (tok, rest []byte) {
	i := 0
	for i < len(v) && v[i] != ',' {
		i++
	}
	tok, rest = v[:i], nil
	if i < len(v) {
		rest = v[i+1:]
	}
	for len(tok) > 0 && (tok[0] == ' ' || tok[0] == '\t') {
		tok = tok[1:]
	}
	for len(tok) > 0 && (tok[len(tok)-1] == ' ' || tok[len(tok)-1] == '\t') {
		tok = tok[:len(tok)-1]
	}
	return tok, rest
}

func hopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return eqFold(name, "te")
	case 7:
		return eqFold(name, "upgrade")
	case 10:
		return eqFold(name, "connection") || eqFold(name, "keep-alive")
	case 16:
		return eqFold(name, "proxy-connection")
	case 17:
		return eqFold(name, "transfer-encoding")
	}
	return false
}

// eqFold compares an ASCII name with a lower-case one.
func eqFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x := b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if x != lower[i] {
			return false
		}
	}
	return true
}

func eqFoldBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

var statusText [1000]string

func init() {
	for i := 100; i < len(statusText); i++ {
		statusText[i] = strconv.Itoa(i)
	}
}

// Write sends response body bytes from p, as many as the client's
// windows, the output room and the stream's fair share of it allow, and
// returns how many it took; end ends the response after the last of p
// (only once all of p was taken). When it takes less than len(p), the
// stream gets EventWritable once it can take more: until then the loop
// stops reading its backend (backpressure). A HEAD response's body is
// taken and dropped. It returns 0 on a stream that is over (EventReset
// follows, or came).
func (s *Stream) Write(p []byte, end bool) int {
	c := s.c
	if s.dead || !s.headersSent || s.endSent {
		return 0
	}
	n := len(p)
	if !s.head {
		n = 0
		for n < len(p) {
			k := min(int64(len(p)-n), s.sendWin, c.sendWin, int64(c.room(s)), int64(c.peerMaxFrame))
			if k <= 0 {
				break
			}
			f := byte(0)
			if end && n+int(k) == len(p) {
				f = flagEndStream
			}
			c.out = appendFrameHeader(c.out, int(k), frameData, f, s.id)
			c.out = append(c.out, p[n:n+int(k)]...)
			s.sendWin -= k
			c.sendWin -= k
			c.took(s, int(k))
			n += int(k)
		}
	}
	if n > 0 || len(p) == 0 {
		s.waitSince = 0
	}
	if n < len(p) {
		c.wait(s)
		return n
	}
	if end {
		if len(p) == 0 || s.head {
			c.out = appendFrameHeader(c.out, 0, frameData, flagEndStream, s.id)
		}
		s.closeLocal()
	}
	return n
}
