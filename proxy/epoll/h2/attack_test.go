package h2

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serve plays a loop whose backend answers every request whole (200,
// "ok") at once when answer is true, and holds them otherwise; it gives
// back every stream that is reset. It returns the requests handed over.
func (p *peer) serve(answer bool, held map[*Stream]bool) int {
	n := 0
	for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
		if ev&EventReset != 0 {
			delete(held, s)
			s.Done()
			continue
		}
		if ev&EventRequest != 0 {
			n++
			if !answer {
				held[s] = true
				continue
			}
			s.WriteHeaders(200, []byte("Content-Length: 2\r\n"), false)
			s.Write([]byte("ok"), true)
			s.Done()
		}
	}
	return n
}

// memory is what a connection holds in buffers, roughly.
func (c *Conn) memory() int {
	m := cap(c.out) + cap(c.hbuf) + cap(c.lower)
	for _, s := range c.streams {
		m += cap(s.req.arena) + cap(s.req.fields)*12
		if s.body != nil {
			m += cap(*s.body)
		}
	}
	return m
}

// wantGoAway checks that the connection ended with a GOAWAY of code.
func wantGoAway(t *testing.T, p *peer, fs []http2.Frame, code http2.ErrCode) {
	t.Helper()
	g := goAway(fs)
	if g == nil {
		t.Fatalf("no GOAWAY; connection closed %v, err %v", p.c.Closed(), p.c.Err())
	}
	if g.ErrCode != code {
		t.Fatalf("GOAWAY %v (%s), want %v", g.ErrCode, g.DebugData(), code)
	}
	if !p.c.Closed() {
		t.Fatalf("connection not closed after GOAWAY %v", code)
	}
	if len(p.c.streams) != 0 {
		t.Fatalf("%d streams left after the end", len(p.c.streams))
	}
}

// TestAttacks sends the known HTTP/2 attacks with a raw framer client:
// each ends the connection with GOAWAY and the right code (or resets the
// stream where RFC 9113 says stream error), with the engine's memory
// bounded throughout.
func TestAttacks(t *testing.T) {
	const memBound = 1 << 20
	tests := []struct {
		name   string
		cfg    Config
		attack func(t *testing.T, p *peer) []http2.Frame
		code   http2.ErrCode // GOAWAY
	}{
		{"rapid reset (CVE-2023-44487)", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			held := map[*Stream]bool{}
			var fs []http2.Frame
			served := 0
			for id := uint32(1); id < 2*1000 && !p.c.Closed(); id += 2 {
				p.get(id, "/", true)
				p.fr.WriteRSTStream(id, http2.ErrCodeCancel)
				p.flush()
				served += p.serve(false, held)
				fs = append(fs, p.frames()...)
			}
			if served > DefaultMaxResets+1 {
				t.Errorf("%d requests reached the loop, want at most %d", served, DefaultMaxResets+1)
			}
			if len(held) != 0 {
				t.Errorf("%d streams held after the end", len(held))
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"CONTINUATION flood of empty frames (CVE-2024-27316)", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			blk := p.block(":method", "GET", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk})
			var fs []http2.Frame
			for i := 0; i < 10000 && !p.c.Closed(); i++ {
				p.fr.WriteContinuation(1, false, nil)
				p.flush()
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"CONTINUATION flood of large frames", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			blk := p.block(":method", "GET", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk})
			// Each frame one literal field without indexing: the
			// decoder gets whole fields, and the header list is full
			// long before the block ends.
			var fs []http2.Frame
			for i := 0; i < 1000 && !p.c.Closed(); i++ {
				p.hbuf.Reset()
				_ = p.enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 16000), Sensitive: true})
				p.fr.WriteContinuation(1, false, p.hbuf.Bytes())
				p.flush()
				if m := p.c.memory(); m > memBound {
					t.Fatalf("memory %d after %d frames", m, i)
				}
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"SETTINGS flood", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			var fs []http2.Frame
			for i := 0; i < 10000 && !p.c.Closed(); i++ {
				p.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0})
				p.flush()
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"PING flood", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			var fs []http2.Frame
			for i := 0; i < 10000 && !p.c.Closed(); i++ {
				p.fr.WritePing(false, [8]byte{1})
				p.flush()
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"PING flood, never read", Config{MaxGlitches: 1 << 30}, func(t *testing.T, p *peer) []http2.Frame {
			// The answers pile up: bounded by maxControlOutput.
			for i := 0; i < 100000 && !p.c.Closed(); i++ {
				p.fr.WritePing(false, [8]byte{1})
				p.c.Feed(p.toSrv.Bytes())
				p.toSrv.Reset()
				if m := p.c.pending(); m > maxControlOutput+1<<10 {
					t.Fatalf("%d bytes pending after %d PINGs", m, i)
				}
			}
			out := p.c.Output()
			p.toCli.Write(out)
			p.c.Written(len(out))
			return p.frames()
		}, http2.ErrCodeEnhanceYourCalm},
		{"empty DATA flood", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			p.flush()
			held := map[*Stream]bool{}
			p.serve(false, held)
			var fs []http2.Frame
			for i := 0; i < 10000 && !p.c.Closed(); i++ {
				p.fr.WriteData(1, false, nil)
				p.flush()
				p.serve(false, held)
				fs = append(fs, p.frames()...)
			}
			if len(held) != 0 {
				t.Errorf("%d streams held after the end", len(held))
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"PRIORITY flood", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			var fs []http2.Frame
			for i := uint32(0); i < 10000 && !p.c.Closed(); i++ {
				p.fr.WritePriority(2*i+1, http2.PriorityParam{StreamDep: 0, Weight: 15})
				p.flush()
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"WINDOW_UPDATE(0) flood on closed streams", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			p.get(1, "/", true)
			p.flush()
			p.serve(true, nil)
			var fs []http2.Frame
			for i := 0; i < 10000 && !p.c.Closed(); i++ {
				p.fr.WriteWindowUpdate(1, 0)
				p.flush()
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
		{"WINDOW_UPDATE(0) on the connection", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			p.fr.WriteWindowUpdate(0, 0)
			p.flush()
			return p.frames()
		}, http2.ErrCodeProtocol},
		{"connection window overflow", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			p.fr.WriteWindowUpdate(0, 1<<31-1)
			p.flush()
			return p.frames()
		}, http2.ErrCodeFlowControl},
		{"DATA beyond the connection window", Config{StreamWindow: 1 << 20, ConnWindow: 1 << 20}, func(t *testing.T, p *peer) []http2.Frame {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			chunk := make([]byte, 16384)
			var fs []http2.Frame
			held := map[*Stream]bool{}
			for i := 0; i < 100 && !p.c.Closed(); i++ {
				p.fr.WriteData(1, false, chunk)
				p.flush()
				p.serve(false, held) // never consumed
				if m := p.c.memory(); m > 2<<20 {
					t.Fatalf("memory %d after %d frames", m, i)
				}
				fs = append(fs, p.frames()...)
			}
			return fs
		}, http2.ErrCodeFlowControl},
		{"stream ID reuse", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			p.get(1, "/", true)
			p.flush()
			p.serve(true, nil)
			p.get(1, "/", true)
			p.flush()
			return p.frames()
		}, http2.ErrCodeStreamClosed},
		{"stream ID going down", Config{}, func(t *testing.T, p *peer) []http2.Frame {
			p.get(5, "/", true)
			p.get(3, "/", true)
			p.flush()
			p.serve(true, nil)
			return p.frames()
		}, http2.ErrCodeProtocol},
		{"more than MAX_CONCURRENT_STREAMS, forever", Config{MaxConcurrentStreams: 4}, func(t *testing.T, p *peer) []http2.Frame {
			held := map[*Stream]bool{}
			var fs []http2.Frame
			refused := 0
			for id := uint32(1); id < 2*5000 && !p.c.Closed(); id += 2 {
				p.get(id, "/", true)
				p.flush()
				p.serve(false, held)
				for _, f := range p.frames() {
					if r, ok := f.(*http2.RSTStreamFrame); ok && r.ErrCode == http2.ErrCodeRefusedStream {
						refused++
					}
					fs = append(fs, f)
				}
				if len(held) > 4 {
					t.Fatalf("%d streams in the loop, limit 4", len(held))
				}
			}
			if refused == 0 {
				t.Errorf("no REFUSED_STREAM")
			}
			return fs
		}, http2.ErrCodeEnhanceYourCalm},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t, tt.cfg)
			p.handshake()
			fs := tt.attack(t, p)
			wantGoAway(t, p, fs, tt.code)
			if m := p.c.memory(); m > memBound {
				t.Errorf("memory %d after the attack", m)
			}
		})
	}
}

// TestStreamErrors: what RFC 9113 makes a stream error resets that
// stream and the connection serves the next request.
func TestStreamErrors(t *testing.T) {
	tests := []struct {
		name string
		send func(p *peer)
		code http2.ErrCode
	}{
		{"WINDOW_UPDATE(0) on a stream", func(p *peer) {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			p.fr.WriteWindowUpdate(1, 0)
		}, http2.ErrCodeProtocol},
		{"stream window overflow", func(p *peer) {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			p.fr.WriteWindowUpdate(1, 1<<31-1)
		}, http2.ErrCodeFlowControl},
		{"DATA beyond the stream window", func(p *peer) {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			chunk := make([]byte, 16384)
			for i := 0; i < 5; i++ {
				p.fr.WriteData(1, false, chunk)
			}
		}, http2.ErrCodeFlowControl},
		{"content-length shorter than DATA", func(p *peer) {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/", "content-length", "3")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			p.fr.WriteData(1, true, []byte("four"))
		}, http2.ErrCodeProtocol},
		{"content-length longer than DATA", func(p *peer) {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/", "content-length", "5")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			p.fr.WriteData(1, true, []byte("four"))
		}, http2.ErrCodeProtocol},
		{"trailers without END_STREAM", func(p *peer) {
			blk := p.block(":method", "POST", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true})
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.block("x-t", "1"), EndHeaders: true})
		}, http2.ErrCodeProtocol},
		{"connection-specific field", func(p *peer) {
			blk := p.block(":method", "GET", ":scheme", "https", ":path", "/", "connection", "keep-alive")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
		{"TE other than trailers", func(p *peer) {
			blk := p.block(":method", "GET", ":scheme", "https", ":path", "/", "te", "gzip")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
		{"upper-case name", func(p *peer) {
			blk := p.block(":method", "GET", ":scheme", "https", ":path", "/", "X-Up", "1")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
		{"pseudo-field after a regular one", func(p *peer) {
			blk := p.block(":method", "GET", ":scheme", "https", "x-a", "1", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
		{"duplicate pseudo-field", func(p *peer) {
			blk := p.block(":method", "GET", ":method", "GET", ":scheme", "https", ":path", "/")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
		{":protocol (extended CONNECT not advertised)", func(p *peer) {
			blk := p.block(":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/", ":authority", "x")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
		{":authority and Host disagree", func(p *peer) {
			blk := p.block(":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a", "host", "b")
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk, EndHeaders: true, EndStream: true})
		}, http2.ErrCodeProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t, Config{})
			p.handshake()
			tt.send(p)
			p.flush()
			held := map[*Stream]bool{}
			p.serve(false, held)
			fs := p.frames()
			if r := rst(fs, 1); r == nil || r.ErrCode != tt.code {
				t.Fatalf("frames %v: want RST_STREAM %v on stream 1", fs, tt.code)
			}
			if g := goAway(fs); g != nil {
				t.Fatalf("GOAWAY %v: a stream error must not end the connection", g.ErrCode)
			}
			if len(held) != 0 {
				t.Fatalf("the reset stream is still with the loop")
			}
			p.get(3, "/next", true)
			p.flush()
			if n := p.serve(true, nil); n != 1 {
				t.Fatalf("next request: %d reached the loop, want 1", n)
			}
			if fs := p.frames(); len(fs) < 2 {
				t.Fatalf("next request not answered: %v", fs)
			}
		})
	}
}

// TestHeaderListTooLarge: a header list over MaxHeaderListSize gets 431
// (as through net/http) and an HPACK bomb (a small block that decodes
// huge) too; the arena stays within the bound and the connection goes on.
func TestHeaderListTooLarge(t *testing.T) {
	for _, bomb := range []bool{false, true} {
		p := newPeer(t, Config{})
		p.handshake()
		p.hbuf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":path", "/"}} {
			_ = p.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if bomb {
			// One 4000-byte field into the dynamic table, then indexed
			// references to it: 2 bytes each decode to 4 KB.
			_ = p.enc.WriteField(hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)})
			ref := p.hbuf.Bytes()[len(p.hbuf.Bytes())-0:]
			_ = ref
			for i := 0; i < 5000; i++ {
				p.hbuf.WriteByte(0x80 | 62) // indexed: the newest dynamic entry
			}
		} else {
			_ = p.enc.WriteField(hpack.HeaderField{Name: "x-big", Value: strings.Repeat("v", DefaultMaxHeaderListSize)})
		}
		blk := p.hbuf.Bytes()
		p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:min(len(blk), 16384)], EndStream: true, EndHeaders: len(blk) <= 16384})
		for rest := blk[min(len(blk), 16384):]; len(rest) > 0; {
			n := min(len(rest), 16384)
			p.fr.WriteContinuation(1, n == len(rest), rest[:n])
			rest = rest[n:]
		}
		p.c.Feed(p.toSrv.Bytes()[:0])
		var maxMem int
		for p.toSrv.Len() > 0 {
			k := p.c.Feed(p.toSrv.Bytes()[:min(p.toSrv.Len(), 16384+9)])
			if k == 0 {
				k = p.c.Feed(p.toSrv.Bytes())
			}
			p.toSrv.Next(k)
			maxMem = max(maxMem, p.c.memory())
		}
		if maxMem > 2*DefaultMaxHeaderListSize {
			t.Errorf("bomb %v: memory %d while decoding", bomb, maxMem)
		}
		if n := p.serve(true, nil); n != 0 {
			t.Errorf("bomb %v: %d requests reached the loop", bomb, n)
		}
		var status string
		for _, f := range p.frames() {
			if h, ok := f.(*headersCopy); ok && h.StreamID == 1 {
				status = p.decode(h.frag)[0].Value
			}
		}
		if status != "431" {
			t.Fatalf("bomb %v: status %q, want 431 (err %v)", bomb, status, p.c.Err())
		}
		p.get(3, "/next", true)
		p.flush()
		if n := p.serve(true, nil); n != 1 {
			t.Fatalf("bomb %v: next request: %d reached the loop, want 1 (err %v)", bomb, n, p.c.Err())
		}
	}
}

// TestZeroWindowStall: a client that keeps its window shut holds its
// stream (and the loop's backend place) only until WriteTimeout.
func TestZeroWindowStall(t *testing.T) {
	p := newPeer(t, Config{WriteTimeout: 30 * time.Second})
	p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	p.get(1, "/", true)
	p.get(3, "/", true)
	p.flush()
	var ss []*Stream
	for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
		if ev&EventRequest != 0 {
			ss = append(ss, s)
		}
	}
	if len(ss) != 2 {
		t.Fatalf("%d requests, want 2", len(ss))
	}
	for _, s := range ss {
		s.WriteHeaders(200, nil, false)
		if n := s.Write(bytes.Repeat([]byte("x"), 1000), true); n != 0 {
			t.Fatalf("Write took %d with a shut window", n)
		}
	}
	// Stream 3 gets a little window: it moves, so its clock restarts.
	p.fr.WriteWindowUpdate(3, 10)
	p.clock += int64(20 * time.Second)
	p.flush()
	for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
		if ev != EventWritable || s.ID() != 3 {
			t.Fatalf("event %v on %d, want EventWritable on 3", ev, s.ID())
		}
		if n := s.Write(bytes.Repeat([]byte("x"), 990), true); n != 10 {
			t.Fatalf("Write took %d, want 10", n)
		}
	}
	if d := p.c.Deadline() - peerEpoch; d != int64(30*time.Second) {
		t.Fatalf("deadline %v, want 30s (stream 1's)", time.Duration(d))
	}
	p.clock = p.c.Deadline()
	p.c.Tick(p.clock)
	s, ev := p.c.Next()
	if s == nil || s.ID() != 1 || ev != EventReset || !s.TimedOut() {
		t.Fatalf("after WriteTimeout: %v %v, want stream 1 EventReset, TimedOut", s, ev)
	}
	s.Done()
	fs := p.frames()
	if r := rst(fs, 1); r == nil || r.ErrCode != http2.ErrCodeInternal {
		t.Fatalf("frames %v: want RST_STREAM INTERNAL_ERROR on 1", fs)
	}
	if p.c.Closed() {
		t.Fatal("the connection ended with the stream")
	}
	// Stream 3 stalls in its turn.
	p.clock = p.c.Deadline()
	p.c.Tick(p.clock)
	if s, ev := p.c.Next(); s == nil || s.ID() != 3 || ev != EventReset || !s.TimedOut() {
		t.Fatalf("stream 3: %v %v, want EventReset, TimedOut", s, ev)
	} else {
		s.Done()
	}
}

// TestClientReadsNothing: output the client never takes ends the
// connection at WriteTimeout.
func TestClientReadsNothing(t *testing.T) {
	p := newPeer(t, Config{WriteTimeout: 5 * time.Second})
	p.handshake()
	p.get(1, "/", true)
	p.c.Feed(p.toSrv.Bytes())
	p.toSrv.Reset()
	s, _ := p.c.Next()
	s.WriteHeaders(200, nil, false)
	s.Write(make([]byte, 1000), false)
	_ = p.c.Output() // the loop tried; the socket took nothing
	p.clock = p.c.Deadline()
	if d := p.clock - peerEpoch; d != int64(5*time.Second) {
		t.Fatalf("deadline %v, want 5s", time.Duration(d))
	}
	p.c.Tick(p.clock)
	if !p.c.Closed() {
		t.Fatal("connection not closed")
	}
	if s2, ev := p.c.Next(); s2 != s || ev != EventReset {
		t.Fatalf("event %v, want EventReset", ev)
	}
	s.Done()
}
