package h2

import (
	"sync"
)

// Event is what happened on a stream, as Next reports it (several at
// once, or'ed).
type Event uint8

// Events.
const (
	// EventRequest: the request header is complete (Stream.Request); the
	// stream belongs to the loop until its Done.
	EventRequest Event = 1 << iota
	// EventBody: more request body (Stream.Body), or its end (BodyDone),
	// trailers included.
	EventBody
	// EventWritable: the stream can take response bytes again (Write
	// had taken less than it was offered).
	EventWritable
	// EventReset: the stream is over before its response: the client
	// reset it, the connection ended, or its response could not move for
	// WriteTimeout (Stream.TimedOut). The loop stops its exchange (its
	// backend connection cannot be reused) and calls Done.
	EventReset
)

// Stream is one request and its response. Its methods are called by the
// loop between the EventRequest that hands it over and its Done, which
// gives it back; afterwards the pointer must not be used.
type Stream struct {
	c  *Conn
	id uint32

	req Request

	// Receiving.
	recvWin    int64 // what the client may still send on it
	recvCredit int64 // consumed, not yet given back
	declLen    int64
	received   int64
	body       *[]byte // received, not yet consumed: (*body)[bodyR:]
	bodyR      int
	endRecv    bool // END_STREAM came: half-closed (remote)
	trailersIn bool
	continued  bool // the 100 Continue went (or is no longer wanted)

	// Sending.
	sendWin     int64
	head        bool // a HEAD request: no response body
	headersSent bool // a final response header went
	active      bool // counted in c.nactive: sending a body
	cycle       uint64
	cycleBytes  int  // output taken in this flush cycle
	endSent     bool // END_STREAM went: half-closed (local)

	announced bool // handed to the loop
	inTable   bool // in c.streams (open or half-closed)
	dead      bool // closed: the engine is done with it
	peerReset bool
	timedOut  bool
	code      ErrCode // the reset's code

	ev     Event
	queued bool
	evNext *Stream

	waiting   bool // Write took less than it was offered
	waitSince int64
	wnext     *Stream
	wprev     *Stream
}

var streamPool = sync.Pool{New: func() any { return new(Stream) }}

func (c *Conn) newStream(id uint32) *Stream {
	s := streamPool.Get().(*Stream)
	req := s.req
	*s = Stream{c: c, id: id, req: req, recvWin: c.streamRecvWindow(), sendWin: c.peerInitWindow, declLen: -1, inTable: true}
	s.req.reset()
	c.streams = append(c.streams, s) // IDs only grow
	c.nopen++
	c.idleSince = 0
	return s
}

// ID is the stream's identifier.
func (s *Stream) ID() uint32 { return s.id }

// Request is the decoded request header list.
func (s *Stream) Request() *Request { return &s.req }

// event queues ev for the loop.
func (s *Stream) event(ev Event) {
	if !s.announced {
		return
	}
	s.ev |= ev
	if s.queued {
		return
	}
	s.queued = true
	c := s.c
	if c.evTail == nil {
		c.evHead = s
	} else {
		c.evTail.evNext = s
	}
	c.evTail = s
}

// Next returns a stream with events and what they are, or nil when there
// is none left; the loop calls it after Feed, Written and Tick until nil.
func (c *Conn) Next() (*Stream, Event) {
	s := c.evHead
	if s == nil {
		return nil, 0
	}
	c.evHead = s.evNext
	if c.evHead == nil {
		c.evTail = nil
	}
	s.evNext, s.queued = nil, false
	ev := s.ev
	s.ev = 0
	return s, ev
}

// Body is the request body received and not yet consumed; valid until
// the next call on s or its Conn.
func (s *Stream) Body() []byte {
	if s.body == nil {
		return nil
	}
	return (*s.body)[s.bodyR:]
}

// BodyDone reports whether the whole request body (and its trailers, if
// any) came and Body has been consumed.
func (s *Stream) BodyDone() bool { return s.endRecv && len(s.Body()) == 0 }

// Consume reports that the loop passed on the first n bytes of Body (to
// the backend): only now does the client get that window back, so a
// stream never holds more than its window of body whatever the upload.
func (s *Stream) Consume(n int) {
	if n <= 0 || s.body == nil {
		return
	}
	s.bodyR += n
	if s.bodyR >= len(*s.body) {
		putBuf(s.body)
		s.body, s.bodyR = nil, 0
	}
	c := s.c
	if s.dead {
		return
	}
	c.credit(int64(n))
	if s.endRecv {
		return // nothing more comes: no stream WINDOW_UPDATE
	}
	s.recvCredit += int64(n)
	if s.recvCredit >= int64(c.cfg.StreamWindow)/4 {
		c.writeWindowUpdate(s.id, uint32(s.recvCredit))
		s.recvWin += s.recvCredit
		s.recvCredit = 0
	}
}

// appendBody keeps DATA until the loop consumes it.
func (s *Stream) appendBody(p []byte) {
	if s.body == nil {
		s.body = getBuf(len(p))
	} else if len(*s.body)+len(p) > cap(*s.body) {
		// Move what is left to the front, or to a larger buffer.
		rest := (*s.body)[s.bodyR:]
		if len(rest)+len(p) <= cap(*s.body) {
			n := copy(*s.body, rest)
			*s.body = (*s.body)[:n]
		} else {
			nb := getBuf(len(rest) + len(p))
			*nb = append(*nb, rest...)
			putBuf(s.body)
			s.body = nb
		}
		s.bodyR = 0
	}
	*s.body = append(*s.body, p...)
}

// Continue sends the client a 100 Continue if its request asked for one
// (Expect: 100-continue) and no answer went yet: the loop calls it when
// it starts passing the body on, as net/http's server sends it when the
// handler first reads the body.
func (s *Stream) Continue() {
	if s.continued || !s.req.expect || s.endRecv || s.headersSent || s.dead {
		s.continued = true
		return
	}
	s.continued = true
	s.writeHeaderBlock(100, nil, false)
}

// inactive: no longer sending a body.
func (s *Stream) inactive() {
	if s.active {
		s.active = false
		s.c.nactive--
	}
}

// closeRemote: the client's side ended.
func (s *Stream) closeRemote() {
	if s.endSent {
		s.close()
	}
}

// closeLocal: our side ended.
func (s *Stream) closeLocal() {
	s.endSent = true
	s.inactive()
	if s.endRecv {
		s.close()
		return
	}
	// The response is complete before the request (the backend answered
	// early): the client may stop sending (RFC 9113 §8.1).
	s.c.writeRST(s.id, codeNo)
	s.c.noteReset(s.id)
	s.close()
}

// close ends a stream normally.
func (s *Stream) close() {
	if s.dead {
		return
	}
	c := s.c
	// A request that completed earns back a reset and a glitch.
	if c.resets > 0 {
		c.resets--
	}
	if c.glitches > 0 {
		c.glitches--
	}
	s.finish()
}

// abort ends a stream before its time; rst sends RST_STREAM with code
// (a stream error of ours), otherwise the reset came from the client or
// the connection ended.
func (s *Stream) abort(code ErrCode, rst bool) {
	s.end(code, rst)
	s.event(EventReset)
}

// end is abort without telling the loop.
func (s *Stream) end(code ErrCode, rst bool) {
	if s.dead {
		return
	}
	if rst {
		s.c.writeRST(s.id, code)
		s.c.noteReset(s.id)
	}
	s.code = code
	s.finish()
}

// finish takes a stream out of the connection; it is recycled at once if
// the loop never had it, else at its Done.
func (s *Stream) finish() {
	c := s.c
	s.dead = true
	s.inactive()
	if s.waiting {
		c.unwait(s)
	}
	if s.body != nil && len(s.Body()) > 0 {
		// Never consumed: give the window back.
		c.credit(int64(len(s.Body())))
	}
	if s.inTable {
		s.inTable = false
		c.nopen--
		c.remove(s)
	}
	if !s.announced {
		s.recycle()
	}
}

// Done gives the stream back: the loop has finished with it (its
// response ended, or it had EventReset). A response not ended is reset
// (INTERNAL_ERROR) first.
func (s *Stream) Done() {
	if !s.dead {
		s.Reset(codeInternal)
	}
	s.announced = false
	if s.queued {
		s.c.unqueue(s)
	}
	s.recycle()
}

func (c *Conn) unqueue(s *Stream) {
	var prev *Stream
	for x := c.evHead; x != nil; prev, x = x, x.evNext {
		if x == s {
			if prev == nil {
				c.evHead = x.evNext
			} else {
				prev.evNext = x.evNext
			}
			if c.evTail == x {
				c.evTail = prev
			}
			break
		}
	}
	s.evNext, s.queued = nil, false
}

func (s *Stream) recycle() {
	if s.body != nil {
		putBuf(s.body)
	}
	req := s.req
	*s = Stream{req: req}
	s.req.reset()
	streamPool.Put(s)
}

// Reset ends the stream with RST_STREAM and code (the loop's exchange
// failed: a backend that broke mid-response gets INTERNAL_ERROR, as
// net/http's server sends). It does nothing on a stream already over.
func (s *Stream) Reset(code ErrCode) { s.end(code, true) }

// Closed reports whether the stream is over (ended, or reset either way).
func (s *Stream) Closed() bool { return s.dead }

// ResetCode is the code the stream was reset with (by the client, or by
// the engine), NO_ERROR if it ended normally.
func (s *Stream) ResetCode() ErrCode { return s.code }

// ResetByClient reports whether the client reset the stream.
func (s *Stream) ResetByClient() bool { return s.peerReset }

// TimedOut reports whether the stream was reset because its response
// could not move for WriteTimeout (the client kept its window shut or did
// not read): a slow reader holds a backend no longer than that.
func (s *Stream) TimedOut() bool { return s.timedOut }

// Body buffers come from size classes, so that a connection holds body
// memory only while a body is in it.
var bufPools [6]sync.Pool // 4, 16, 64, 256 KiB, 1, 4 MiB

func bufClass(n int) int {
	size, k := 4<<10, 0
	for size < n && k < len(bufPools)-1 {
		size <<= 2
		k++
	}
	return k
}

func getBuf(n int) *[]byte {
	k := bufClass(n)
	if b, _ := bufPools[k].Get().(*[]byte); b != nil {
		return b
	}
	b := make([]byte, 0, max(4<<10<<(2*k), n))
	return &b
}

func putBuf(b *[]byte) {
	*b = (*b)[:0]
	size, k := 4<<10, 0
	for size < cap(*b) && k < len(bufPools)-1 {
		size <<= 2
		k++
	}
	if size != cap(*b) {
		return // an odd one
	}
	bufPools[k].Put(b)
}
