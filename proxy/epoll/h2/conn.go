package h2

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Conn is the server side of one HTTP/2 connection, without I/O: the loop
// hands it what it read from the client (Feed) and writes what it has to
// send (Output, Written); in between it takes what the engine reports
// (Next) and answers streams through their methods. A Conn is driven by
// one goroutine (the loop's); none of its methods may be called
// concurrently. It owns its output buffer and every Stream's buffers; a
// Stream handed out by Next stays valid until the loop calls its Done.
type Conn struct {
	cfg Config
	now func() int64

	out  []byte // output: out[outR:] is still to be written
	outR int

	preface     int  // bytes of the client preface matched
	gotSettings bool // the client's first frame, SETTINGS, came
	oursAcked   bool // the client acknowledged our SETTINGS

	// What the client said.
	peerMaxFrame   uint32
	peerInitWindow int64

	// Flow control. sendWin: what the client lets us send; recvWin: what
	// we let it send, less what it did; recvCredit: body bytes consumed
	// (or discarded) and not yet given back by a WINDOW_UPDATE.
	sendWin    int64
	recvWin    int64
	recvCredit int64

	streams []*Stream // open and half-closed streams, by increasing ID
	nopen   int       // of them, the ones the client counts against our limit
	maxID   uint32    // the highest stream ID the client used
	lastOK  uint32    // the highest stream ID handed to the loop (or refused after)
	reset   [16]uint32
	nreset  int // reset[nreset%len] is next: streams we reset lately, whose frames in flight are ignored
	gone    [16]uint32
	ngone   int // the same for streams that closed lately (HEADERS on one is STREAM_CLOSED)

	hb    headerBlock
	dec   *hpack.Decoder
	enc   *hpack.Encoder
	hbuf  []byte // an encoded header block being framed
	lower []byte // a response field name in lower case

	evHead, evTail *Stream // streams with events for the loop
	waitHead       *Stream // streams that wait to send (FIFO), linked by wnext
	waitTail       *Stream
	nactive        int    // streams sending a response body
	cycle          uint64 // flush cycles: the output emptied this many times
	ctl            int    // control-frame bytes queued since the output last emptied

	glitches int
	resets   int // resets of requests in the loop, less requests completed

	state    uint8
	err      error // why the connection ended
	closed   bool  // nothing more will be read; close once Output is empty
	peerGone bool  // the client sent GOAWAY

	// Timers (Clock ns; 0: none).
	started     int64 // connection start: the preface deadline
	idleSince   int64 // when the last stream ended, 0 while streams are open
	outSince    int64 // when output began to wait without any of it being written
	drainPingAt int64 // graceful GOAWAY sent; the final one is due
	drainPing   [8]byte
}

// Connection states.
const (
	stateActive   uint8 = iota
	stateGraceful       // the GOAWAY of 2^31-1 and a PING went; new streams are still taken
	stateFinal          // the final GOAWAY went: no new stream; close when none is left
)

// ErrProtocol wraps every error a connection ends with because of what the
// client sent; the text names the HTTP/2 error code sent in the GOAWAY.
var ErrProtocol = errors.New("h2: client broke the protocol")

// ErrTimeout is the error of a connection ended by one of its timeouts.
var ErrTimeout = errors.New("h2: timeout")

// connError ends the connection after a GOAWAY with code.
type connError struct {
	code ErrCode
	why  string
}

func (e connError) Error() string { return fmt.Sprintf("h2: connection error %v: %s", e.code, e.why) }

func (e connError) Unwrap() error { return ErrProtocol }

// NewConn returns a connection that has queued its SETTINGS (the server
// preface) in its Output; cfg's zero fields take their defaults.
func NewConn(cfg *Config) (*Conn, error) {
	var in Config
	if cfg != nil {
		in = *cfg
	}
	norm, err := in.normalize()
	if err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:            norm,
		now:            norm.Clock,
		peerMaxFrame:   minFrameSize,
		peerInitWindow: initialWindow,
		sendWin:        initialWindow,
		recvWin:        int64(norm.ConnWindow),
	}
	c.dec = hpack.NewDecoder(norm.HeaderTableSize, c.emit)
	c.dec.SetMaxStringLength(int(norm.MaxHeaderListSize))
	c.enc = hpack.NewEncoder((*hbufWriter)(c))
	// why: a response encoder without a dynamic table keeps no strings,
	// so response headers are encoded straight from the loop's bytes (as
	// HAProxy encodes: static table and literals).
	c.enc.SetMaxDynamicTableSizeLimit(0)
	c.started = c.stamp()
	c.idleSince = c.started
	c.writeServerPreface()
	return c, nil
}

// hbufWriter is the encoder's writer: it appends to the header block
// being encoded.
type hbufWriter Conn

func (w *hbufWriter) Write(p []byte) (int, error) {
	w.hbuf = append(w.hbuf, p...)
	return len(p), nil
}

// MaxFrameLen is the room the loop's input buffer needs for one frame:
// Feed consumes whole frames only.
func (c *Conn) MaxFrameLen() int { return int(c.cfg.MaxFrameSize) + frameHeaderLen }

// Feed processes the whole frames at the start of p, which the client
// sent, and returns how many bytes it consumed; the loop keeps the rest
// and passes it again, with more, next time. Feed copies what it keeps
// (body bytes, header fields), so p may be reused at once. After Feed,
// the loop takes the events (Next) and the output (Output). Once the
// connection is Closed, Feed consumes everything and does nothing.
func (c *Conn) Feed(p []byte) int {
	n := 0
	if c.closed {
		return len(p)
	}
	if c.preface < prefaceLen {
		k := min(len(p), prefaceLen-c.preface)
		if string(p[:k]) != http2.ClientPreface[c.preface:c.preface+k] {
			c.fail(codeProtocol, "bad client preface")
			return len(p)
		}
		c.preface += k
		n = k
	}
	for !c.closed && len(p)-n >= frameHeaderLen {
		fh := parseFrameHeader(p[n:])
		if fh.length > c.cfg.MaxFrameSize {
			c.fail(codeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE")
			return len(p)
		}
		end := n + frameHeaderLen + int(fh.length)
		if end > len(p) {
			break
		}
		c.frame(fh, p[n+frameHeaderLen:end])
		n = end
	}
	if c.closed {
		return len(p)
	}
	return n
}

// Output is what the connection has to send, in order; the loop writes
// (or seals into TLS records) as much as it can and reports it with
// Written. The slice is valid until the next call of any other method.
func (c *Conn) Output() []byte {
	if c.outSince == 0 && c.pending() > 0 {
		c.outSince = c.stamp() // WriteTimeout runs from here
	}
	return c.out[c.outR:]
}

// Written reports that the first n bytes of Output left for the client.
// It may wake streams that wait for output room (EventWritable).
func (c *Conn) Written(n int) {
	if n <= 0 {
		return
	}
	c.outR += n
	c.outSince = 0
	if c.outR >= len(c.out) {
		c.out, c.outR = c.out[:0], 0
		c.cycle++
		c.ctl = 0
		if cap(c.out) > 2*c.cfg.MaxOutput+64<<10 {
			c.out = nil // a burst of header blocks: give it back
		}
	} else {
		c.outSince = c.stamp()
		if c.outR > len(c.out)/2 && c.outR > 16<<10 {
			c.out = c.out[:copy(c.out, c.out[c.outR:])]
			c.outR = 0
		}
	}
	c.wakeWriters()
}

// pending is how many output bytes wait.
func (c *Conn) pending() int { return len(c.out) - c.outR }

// Closed reports whether the connection is over: the loop writes what
// Output still holds (a GOAWAY, perhaps) and closes the socket. Every
// stream the loop holds has had EventReset, or ended.
func (c *Conn) Closed() bool { return c.closed }

// Err says why the connection ended: nil after a drain, an idle timeout
// or the client's own GOAWAY; an error wrapping ErrProtocol or ErrTimeout
// otherwise.
func (c *Conn) Err() error { return c.err }

// Abort ends the connection at once because the client is gone (its
// socket failed or closed): every stream the loop holds gets EventReset.
// Nothing more is written.
func (c *Conn) Abort() {
	c.out, c.outR = c.out[:0], 0
	c.closed = true
	c.closeAll(codeCancel)
}

// fail ends the connection with a GOAWAY naming code.
func (c *Conn) fail(code ErrCode, why string) {
	if c.closed {
		return
	}
	c.writeGoAway(c.maxID, code)
	c.err = connError{code, why}
	c.closed = true // from here on nothing more is written
	c.closeAll(codeCancel)
}

// end ends the connection without error (idle, drained, the client left).
func (c *Conn) end() {
	if c.closed {
		return
	}
	c.closed = true
	c.closeAll(codeCancel)
}

// closeAll closes every stream: those the loop holds get EventReset.
func (c *Conn) closeAll(code ErrCode) {
	for len(c.streams) > 0 {
		s := c.streams[len(c.streams)-1]
		s.abort(code, false)
	}
	c.hb.reset()
}

// glitch counts one frame that made the server work for nothing.
func (c *Conn) glitch() {
	c.glitches++
	if c.glitches > c.cfg.MaxGlitches {
		c.fail(codeEnhanceYourCalm, "too many frames that do no work (flood)")
	}
}

// frame processes one frame.
func (c *Conn) frame(fh frameHeader, p []byte) {
	if !c.gotSettings {
		if fh.typ != frameSettings || fh.flags&flagAck != 0 {
			c.fail(codeProtocol, "first frame is not SETTINGS")
			return
		}
		c.gotSettings = true
	}
	if c.hb.active && fh.typ != frameContinuation {
		c.fail(codeProtocol, "header block interrupted by "+fh.typ.String())
		return
	}
	switch fh.typ {
	case frameData:
		c.data(fh, p)
	case frameHeaders:
		c.headers(fh, p)
	case frameContinuation:
		c.continuation(fh, p)
	case framePriority:
		c.priority(fh, p)
	case frameRSTStream:
		c.rstStream(fh, p)
	case frameSettings:
		c.settings(fh, p)
	case framePing:
		c.ping(fh, p)
	case frameGoAway:
		c.goAway(fh, p)
	case frameWindowUpdate:
		c.windowUpdate(fh, p)
	case framePushPromise:
		c.fail(codeProtocol, "PUSH_PROMISE from a client")
	default:
		// Unknown types are ignored (RFC 9113 §4.1), but not free.
		c.glitch()
	}
}

func (c *Conn) settings(fh frameHeader, p []byte) {
	switch {
	case fh.stream != 0:
		c.fail(codeProtocol, "SETTINGS on a stream")
		return
	case fh.flags&flagAck != 0:
		if fh.length != 0 {
			c.fail(codeFrameSize, "SETTINGS ACK with a payload")
			return
		}
		if c.oursAcked {
			c.glitch()
			return
		}
		c.oursAcked = true
		c.settingsAcked()
		return
	case fh.length%6 != 0:
		c.fail(codeFrameSize, "SETTINGS length not a multiple of 6")
		return
	}
	if c.oursAcked || len(c.streams) > 0 || c.maxID > 0 {
		c.glitch() // the first SETTINGS is due; more are a cost
		if c.closed {
			return
		}
	}
	for ; len(p) >= 6; p = p[6:] {
		id, v := http2.SettingID(uint16(p[0])<<8|uint16(p[1])), u32(p[2:])
		switch id {
		case http2.SettingEnablePush:
			if v > 1 {
				c.fail(codeProtocol, "SETTINGS_ENABLE_PUSH not 0 or 1")
				return
			}
		case http2.SettingInitialWindowSize:
			if v > maxWindow {
				c.fail(codeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
				return
			}
			// Applied one by one: given twice, the last wins.
			delta := int64(v) - c.peerInitWindow
			c.peerInitWindow = int64(v)
			for _, s := range c.streams {
				s.sendWin += delta
				if s.sendWin > maxWindow {
					c.fail(codeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window")
					return
				}
			}
		case http2.SettingMaxFrameSize:
			if v < minFrameSize || v > maxFrameSize {
				c.fail(codeProtocol, "SETTINGS_MAX_FRAME_SIZE out of range")
				return
			}
			c.peerMaxFrame = v
		case http2.SettingHeaderTableSize:
			// Our encoder has no dynamic table: nothing to resize.
		case http2.SettingEnableConnectProtocol:
			if v > 1 {
				c.fail(codeProtocol, "SETTINGS_ENABLE_CONNECT_PROTOCOL not 0 or 1")
				return
			}
		}
		// MAX_CONCURRENT_STREAMS limits server-initiated streams (none);
		// MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored.
	}
	c.writeSettingsAck()
	c.wakeAll()
}

// settingsAcked applies our SETTINGS once the client has them: a stream
// window smaller than the protocol's initial one binds from now on.
func (c *Conn) settingsAcked() {
	if d := int64(c.cfg.StreamWindow) - initialWindow; d < 0 {
		for _, s := range c.streams {
			s.recvWin += d
		}
	}
}

// streamRecvWindow is the window a new stream starts with.
func (c *Conn) streamRecvWindow() int64 {
	if !c.oursAcked {
		return max(int64(c.cfg.StreamWindow), initialWindow)
	}
	return int64(c.cfg.StreamWindow)
}

func (c *Conn) ping(fh frameHeader, p []byte) {
	switch {
	case fh.stream != 0:
		c.fail(codeProtocol, "PING on a stream")
		return
	case fh.length != 8:
		c.fail(codeFrameSize, "PING length not 8")
		return
	}
	if fh.flags&flagAck != 0 {
		if c.state == stateGraceful && string(p) == string(c.drainPing[:]) {
			c.finalGoAway()
			return
		}
		c.glitch()
		return
	}
	c.glitch()
	if c.closed {
		return
	}
	c.writePing(true, p)
}

// control counts n bytes of control frames queued; a client that asks for
// more of them than maxControlOutput and does not read them is ended
// (they have no other bound).
func (c *Conn) control(n int) {
	c.ctl += n
	if c.ctl > maxControlOutput {
		c.fail(codeEnhanceYourCalm, "client does not read the frames it asks for")
	}
}

// maxControlOutput bounds the output beyond MaxOutput (control frames,
// header blocks) while the client does not read.
const maxControlOutput = 256 << 10

func (c *Conn) goAway(fh frameHeader, p []byte) {
	switch {
	case fh.stream != 0:
		c.fail(codeProtocol, "GOAWAY on a stream")
		return
	case fh.length < 8:
		c.fail(codeFrameSize, "GOAWAY shorter than 8")
		return
	}
	c.peerGone = true
	if code := ErrCode(u32(p[4:])); code != codeNo {
		c.err = fmt.Errorf("h2: client sent GOAWAY %v", code)
		c.end()
		return
	}
	// The client opens no more streams; the ones in flight finish.
	if len(c.streams) == 0 {
		c.end()
	}
}

func (c *Conn) windowUpdate(fh frameHeader, p []byte) {
	if fh.length != 4 {
		c.fail(codeFrameSize, "WINDOW_UPDATE length not 4")
		return
	}
	incr := int64(u32(p) & (1<<31 - 1))
	if fh.stream == 0 {
		if incr == 0 {
			c.fail(codeProtocol, "WINDOW_UPDATE of 0 on the connection")
			return
		}
		c.sendWin += incr
		if c.sendWin > maxWindow {
			c.fail(codeFlowControl, "connection window over 2^31-1")
			return
		}
		c.wakeAll()
		return
	}
	s := c.stream(fh.stream)
	if s == nil {
		if fh.stream > c.maxID {
			c.fail(codeProtocol, "WINDOW_UPDATE on an idle stream")
			return
		}
		if incr == 0 {
			c.glitch()
		}
		return // closed: allowed, ignored
	}
	if incr == 0 {
		s.abort(codeProtocol, true)
		c.glitch()
		return
	}
	s.sendWin += incr
	if s.sendWin > maxWindow {
		s.abort(codeFlowControl, true)
		return
	}
	s.wake()
}

func (c *Conn) rstStream(fh frameHeader, p []byte) {
	switch {
	case fh.length != 4:
		c.fail(codeFrameSize, "RST_STREAM length not 4")
		return
	case fh.stream == 0:
		c.fail(codeProtocol, "RST_STREAM on stream 0")
		return
	case fh.stream > c.maxID:
		c.fail(codeProtocol, "RST_STREAM on an idle stream")
		return
	}
	s := c.stream(fh.stream)
	if s == nil {
		c.glitch()
		return
	}
	if s.announced && !s.endSent {
		// Work done for nothing (rapid reset): the loop has begun.
		c.resets++
		if c.resets > c.cfg.MaxResets {
			s.abort(codeCancel, false)
			c.fail(codeEnhanceYourCalm, "too many requests reset by the client (rapid reset)")
			return
		}
	}
	s.peerReset = true
	s.abort(ErrCode(u32(p)), false)
}

func (c *Conn) priority(fh frameHeader, p []byte) {
	switch {
	case fh.stream == 0:
		c.fail(codeProtocol, "PRIORITY on stream 0")
		return
	case fh.length != 5:
		// A stream error (RFC 9113 §6.3).
		c.resetID(fh.stream, codeFrameSize)
		return
	}
	if u32(p)&(1<<31-1) == fh.stream {
		c.resetID(fh.stream, codeProtocol)
		return
	}
	// Parsed and ignored (RFC 9113 §5.3.2), but counted.
	c.glitch()
}

// resetID sends a stream error for id, whatever its state.
func (c *Conn) resetID(id uint32, code ErrCode) {
	if s := c.stream(id); s != nil {
		s.abort(code, true)
		return
	}
	c.writeRST(id, code)
	c.noteReset(id)
	c.glitch()
}

// noteReset remembers a stream we reset: what the client sent on it
// before it knew is ignored.
func (c *Conn) noteReset(id uint32) {
	c.reset[c.nreset%len(c.reset)] = id
	c.nreset++
}

func (c *Conn) wasReset(id uint32) bool {
	for _, x := range c.reset {
		if x == id && id != 0 {
			return true
		}
	}
	return false
}

// wasClosed reports whether id is a stream that closed lately.
func (c *Conn) wasClosed(id uint32) bool {
	for _, x := range c.gone {
		if x == id && id != 0 {
			return true
		}
	}
	return false
}

// stream finds an open or half-closed stream.
func (c *Conn) stream(id uint32) *Stream {
	lo, hi := 0, len(c.streams)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if c.streams[m].id < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(c.streams) && c.streams[lo].id == id {
		return c.streams[lo]
	}
	return nil
}

// remove takes s out of the stream table.
func (c *Conn) remove(s *Stream) {
	c.gone[c.ngone%len(c.gone)] = s.id
	c.ngone++
	for i, x := range c.streams {
		if x == s {
			copy(c.streams[i:], c.streams[i+1:])
			c.streams[len(c.streams)-1] = nil
			c.streams = c.streams[:len(c.streams)-1]
			break
		}
	}
	if len(c.streams) == 0 {
		c.idleSince = c.stamp()
		if !c.closed && (c.state == stateFinal || c.peerGone) {
			c.end()
		}
	}
}

// credit gives back n bytes of the connection window (consumed or
// discarded), in WINDOW_UPDATEs of a quarter window at least.
func (c *Conn) credit(n int64) {
	if c.closed {
		return
	}
	c.recvCredit += n
	if c.recvCredit >= int64(c.cfg.ConnWindow)/4 {
		c.writeWindowUpdate(0, uint32(c.recvCredit))
		c.recvWin += c.recvCredit
		c.recvCredit = 0
	}
}

func (c *Conn) data(fh frameHeader, p []byte) {
	if fh.stream == 0 {
		c.fail(codeProtocol, "DATA on stream 0")
		return
	}
	size := int64(fh.length)
	if size > c.recvWin {
		c.fail(codeFlowControl, "DATA beyond the connection window")
		return
	}
	c.recvWin -= size
	pad := 0
	if fh.flags&flagPadded != 0 {
		if len(p) == 0 || int(p[0]) >= len(p) {
			c.fail(codeProtocol, "DATA padding longer than the frame")
			return
		}
		pad = int(p[0]) + 1
		p = p[1 : len(p)-int(p[0])]
	}
	s := c.stream(fh.stream)
	if s == nil || s.endRecv || s.trailersIn {
		c.credit(size)
		switch {
		case fh.stream > c.maxID:
			c.fail(codeProtocol, "DATA on an idle stream")
		case s == nil && c.wasReset(fh.stream):
			// In flight when we reset it.
		case s != nil:
			s.abort(codeStreamClosed, true)
		default:
			c.writeRST(fh.stream, codeStreamClosed)
			c.glitch()
		}
		return
	}
	if size > s.recvWin {
		c.credit(size)
		s.abort(codeFlowControl, true)
		return
	}
	s.recvWin -= size
	if pad > 0 {
		// Padding is consumed at once.
		c.credit(int64(pad))
		s.recvWin += int64(pad)
	}
	s.received += int64(len(p))
	if s.declLen >= 0 && s.received > s.declLen {
		c.credit(int64(len(p)))
		s.abort(codeProtocol, true)
		return
	}
	end := fh.flags&flagEndStream != 0
	if len(p) == 0 && !end {
		c.glitch()
		return
	}
	if len(p) > 0 {
		s.appendBody(p)
	}
	if end {
		if s.declLen >= 0 && s.received != s.declLen {
			s.abort(codeProtocol, true)
			return
		}
		s.endRecv = true
		s.closeRemote()
	}
	if s.announced {
		s.event(EventBody)
	}
}

// stamp is the time now as a timer start (never 0, which means none).
func (c *Conn) stamp() int64 { return max(c.now(), 1) }
