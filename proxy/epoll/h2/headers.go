package h2

import (
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// Request header blocks: HEADERS and its CONTINUATIONs are decoded as
// they arrive (the HPACK decoder keeps a field cut between two frames),
// into the stream's Request; nothing of the encoded block is kept.

// maxContinuations bounds the CONTINUATION frames of one header block
// (CVE-2024-27316: a flood of them, each tiny, never ends the block).
const maxContinuations = 64

// headerBlock is the header block being received.
type headerBlock struct {
	active    bool
	id        uint32
	s         *Stream // receives the fields; nil: decoded (for HPACK's state) and dropped
	refuse    bool    // then answer REFUSED_STREAM
	trailers  bool
	endStream bool
	size      uint32 // decoded, in HPACK's measure
	encoded   int
	frames    int
	bad       bool // malformed: a stream error (PROTOCOL_ERROR) at the end
	truncated bool // over MaxHeaderListSize: answered 431
	regular   bool // a regular field was seen (pseudo-fields must come first)
	started   int64
}

func (hb *headerBlock) reset() { *hb = headerBlock{} }

func (c *Conn) headers(fh frameHeader, p []byte) {
	id := fh.stream
	if id == 0 || id%2 == 0 {
		c.fail(codeProtocol, "HEADERS on stream 0 or an even stream")
		return
	}
	frag := p
	if fh.flags&flagPadded != 0 {
		if len(frag) == 0 {
			c.fail(codeProtocol, "HEADERS padding longer than the frame")
			return
		}
		pad := int(frag[0])
		frag = frag[1:]
		if pad > len(frag) {
			c.fail(codeProtocol, "HEADERS padding longer than the frame")
			return
		}
		frag = frag[:len(frag)-pad]
	}
	selfDep := false
	if fh.flags&flagPriority != 0 {
		if len(frag) < 5 {
			c.fail(codeFrameSize, "HEADERS too short for its priority")
			return
		}
		selfDep = u32(frag)&(1<<31-1) == id
		frag = frag[5:]
	}
	hb := &c.hb
	*hb = headerBlock{active: true, id: id, endStream: fh.flags&flagEndStream != 0, started: c.stamp(), bad: selfDep}
	if s := c.stream(id); s != nil {
		// Trailers, or a second HEADERS that is not.
		hb.s, hb.trailers = s, true
		if s.endRecv || s.trailersIn {
			hb.s = nil // half-closed (remote): STREAM_CLOSED once decoded
			hb.refuse = false
			hb.bad = true
		}
	} else if id <= c.maxID {
		switch {
		case c.wasReset(id):
		case c.wasClosed(id):
			c.fail(codeStreamClosed, "HEADERS on a closed stream")
			return
		default:
			c.fail(codeProtocol, "stream ID lower than one used already")
			return
		}
		// In flight when we reset it: decoded, dropped.
	} else {
		c.maxID = id
		switch {
		case c.state == stateFinal:
			// After the final GOAWAY: ignored (RFC 9113 §6.8).
		case c.nopen >= int(c.cfg.MaxConcurrentStreams):
			hb.refuse = true
		default:
			hb.s = c.newStream(id)
		}
	}
	c.fragment(frag)
	if !c.closed && fh.flags&flagEndHeaders != 0 {
		c.endHeaders()
	}
}

func (c *Conn) continuation(fh frameHeader, p []byte) {
	hb := &c.hb
	if !hb.active || fh.stream != hb.id {
		c.fail(codeProtocol, "CONTINUATION without a header block on its stream")
		return
	}
	if hb.frames++; hb.frames > maxContinuations {
		c.fail(codeEnhanceYourCalm, "too many CONTINUATION frames (flood)")
		return
	}
	if len(p) == 0 {
		c.glitch()
		if c.closed {
			return
		}
	}
	c.fragment(p)
	if !c.closed && fh.flags&flagEndHeaders != 0 {
		c.endHeaders()
	}
}

// fragment decodes a piece of the header block.
func (c *Conn) fragment(p []byte) {
	hb := &c.hb
	hb.encoded += len(p)
	if hb.encoded > 2*int(c.cfg.MaxHeaderListSize) {
		// Decoding must go on for HPACK's state, and this is no request
		// anyone sends: end it here.
		c.fail(codeEnhanceYourCalm, "header block too large")
		return
	}
	if _, err := c.dec.Write(p); err != nil {
		c.fail(codeCompression, "HPACK: "+err.Error())
	}
}

// endHeaders finishes a header block.
func (c *Conn) endHeaders() {
	hb := &c.hb
	err := c.dec.Close()
	c.dec.SetEmitEnabled(true)
	if err != nil {
		c.fail(codeCompression, "HPACK: "+err.Error())
		return
	}
	blk := *hb
	hb.reset()
	s := blk.s
	switch {
	case blk.trailers && s == nil:
		// HEADERS on a half-closed (remote) stream.
		if t := c.stream(blk.id); t != nil {
			t.abort(codeStreamClosed, true)
		}
		return
	case s == nil:
		if blk.refuse {
			c.writeRST(blk.id, codeRefusedStream)
			c.noteReset(blk.id)
			c.glitch()
		}
		return
	case blk.trailers:
		if blk.bad || !blk.endStream || blk.truncated {
			// Trailers must end the stream and carry no pseudo-field.
			s.abort(codeProtocol, true)
			return
		}
		s.trailersIn = true
		if s.declLen >= 0 && s.received != s.declLen {
			s.abort(codeProtocol, true)
			return
		}
		s.endRecv = true
		s.closeRemote()
		if s.announced {
			s.event(EventBody)
		}
		return
	}
	r := &s.req
	if blk.bad || !r.complete() {
		s.abort(codeProtocol, true)
		return
	}
	if blk.truncated {
		// As net/http: 431, without a body here.
		s.respondSelf(431)
		c.glitch()
		return
	}
	if !r.check() {
		s.abort(codeProtocol, true)
		return
	}
	if string(r.Path()) == "*" && string(r.Method()) == "OPTIONS" {
		// net/http's server answers it itself (globalOptionsHandler).
		s.respondSelf(200)
		return
	}
	if r.trailerDecl && !(blk.endStream || r.declLen == 0) || r.trailerDecl && !replayMethod(r.Method()) && !r.idem {
		// net/http's Transport refuses a Trailer key that is no token.
		if !r.validTrailerKeys() {
			s.abort(codeProtocol, true)
			return
		}
	}
	s.declLen = r.declLen
	s.head = r.isHead()
	if blk.endStream {
		if s.declLen > 0 {
			s.abort(codeProtocol, true)
			return
		}
		s.endRecv = true
		s.req.endAtHeaders = true
		s.closeRemote()
	}
	c.lastOK = s.id
	s.announced = true
	s.event(EventRequest)
}

// emit receives each decoded field of the block being received.
func (c *Conn) emit(f hpack.HeaderField) {
	hb := &c.hb
	size := f.Size()
	if hb.size+size > c.cfg.MaxHeaderListSize || hb.size+size < hb.size {
		hb.truncated = true
		c.dec.SetEmitEnabled(false)
		return
	}
	hb.size += size
	if hb.s == nil || hb.bad {
		return
	}
	if !httpguts.ValidHeaderFieldValue(f.Value) {
		hb.bad = true
		return
	}
	r := &hb.s.req
	if len(f.Name) > 0 && f.Name[0] == ':' {
		if hb.trailers || hb.regular || !r.pseudo(f.Name, f.Value) {
			hb.bad = true
		}
		return
	}
	hb.regular = true
	if !validWireName(f.Name) || !r.add(f.Name, f.Value, hb.trailers) {
		hb.bad = true
	}
}

// validWireName: a token without upper case letters (RFC 9113 §8.2.1).
func validWireName(s string) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !wireName[s[i]] {
			return false
		}
	}
	return true
}

var wireName [256]bool

func init() {
	for c := 0; c < 256; c++ {
		wireName[c] = httpguts.IsTokenRune(rune(c)) && !('A' <= c && c <= 'Z')
	}
}
