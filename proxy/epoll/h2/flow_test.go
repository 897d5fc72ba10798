package h2

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

func post(p *peer, id uint32, extra ...string) {
	kv := append([]string{":method", "POST", ":scheme", "https", ":authority", "x", ":path", "/up"}, extra...)
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(kv...), EndHeaders: true})
}

// TestUploadBounded: a large upload is held at most one stream window at
// a time, and the client gets window back only for what the loop passed
// on.
func TestUploadBounded(t *testing.T) {
	const total = 1 << 20
	p := newPeer(t, Config{})
	p.handshake()
	post(p, 1)
	p.flush()
	s, ev := p.c.Next()
	if ev != EventRequest {
		t.Fatalf("event %v", ev)
	}
	var got bytes.Buffer
	sent := 0
	sendWin, connWin := int64(DefaultStreamWindow), int64(DefaultConnWindow) // handshake read the WINDOW_UPDATE of the connection
	chunk := make([]byte, 16384)
	for steps := 0; got.Len() < total && steps < 10000; steps++ {
		// Send what the windows allow.
		for sent < total {
			n := min(int64(len(chunk)), sendWin, connWin, int64(total-sent))
			if n <= 0 {
				break
			}
			for i := range chunk[:n] {
				chunk[i] = byte((sent + i) % 251)
			}
			p.fr.WriteData(1, sent+int(n) == total, chunk[:n])
			sent += int(n)
			sendWin -= n
			connWin -= n
		}
		p.flush()
		if held := len(s.Body()); held > DefaultStreamWindow {
			t.Fatalf("engine holds %d body bytes, window %d", held, DefaultStreamWindow)
		}
		// The loop passes on a little at a time.
		b := s.Body()
		k := min(len(b), 5000)
		got.Write(b[:k])
		s.Consume(k)
		for _, f := range p.frames() {
			if wu, ok := f.(*http2.WindowUpdateFrame); ok {
				if wu.StreamID == 0 {
					connWin += int64(wu.Increment)
				} else {
					sendWin += int64(wu.Increment)
				}
			}
		}
		for x, ev := p.c.Next(); x != nil; x, ev = p.c.Next() {
			if x != s || ev&^EventBody != 0 {
				t.Fatalf("event %v", ev)
			}
		}
	}
	if got.Len() != total || !s.BodyDone() {
		t.Fatalf("got %d of %d body bytes, done %v", got.Len(), total, s.BodyDone())
	}
	for i, c := range got.Bytes() {
		if c != byte(i%251) {
			t.Fatalf("body byte %d is %d", i, c)
		}
	}
	s.WriteHeaders(200, nil, true)
	s.Done()
}

// TestDownloadBackpressure: Write takes only what the client's windows
// allow; EventWritable says when to offer the rest; several responses
// share the output.
func TestDownloadBackpressure(t *testing.T) {
	const size = 200 << 10
	p := newPeer(t, Config{MaxOutput: 32 << 10})
	p.handshake()
	for id := uint32(1); id <= 5; id += 2 {
		p.get(id, "/big", true)
	}
	p.flush()
	type dl struct {
		s    *Stream
		left []byte
		got  int
	}
	dls := map[uint32]*dl{}
	for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
		if ev != EventRequest {
			t.Fatalf("event %v", ev)
		}
		s.WriteHeaders(200, nil, false)
		dls[s.ID()] = &dl{s: s, left: bytes.Repeat([]byte{byte(s.ID())}, size)}
	}
	offer := func(d *dl) {
		n := d.s.Write(d.left, true)
		d.left = d.left[n:]
		if len(d.left) == 0 {
			d.s.Done()
		}
	}
	for _, id := range []uint32{1, 3, 5} {
		offer(dls[id])
	}
	connRead := 0
	for steps := 0; steps < 10000; steps++ {
		out := p.c.Output()
		if len(out) > 32<<10+64<<10 {
			t.Fatalf("output %d over its bound", len(out))
		}
		p.toCli.Write(out)
		p.c.Written(len(out))
		// The client reads and gives the windows back.
		perStream := map[uint32]int{}
		for f := p.read(); f != nil; f = p.read() {
			if d, ok := f.(*http2.DataFrame); ok && len(d.Data()) > 0 {
				x := dls[d.StreamID]
				for _, c := range d.Data() {
					if c != byte(d.StreamID) {
						t.Fatalf("stream %d got a byte of %d", d.StreamID, c)
					}
				}
				x.got += len(d.Data())
				perStream[d.StreamID] += len(d.Data())
				connRead += len(d.Data())
				p.fr.WriteWindowUpdate(d.StreamID, uint32(len(d.Data())))
				p.fr.WriteWindowUpdate(0, uint32(len(d.Data())))
			}
		}
		p.flush()
		for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
			if ev != EventWritable {
				t.Fatalf("event %v on %d", ev, s.ID())
			}
			offer(dls[s.ID()])
		}
		if connRead == 3*size {
			break
		}
	}
	for id, d := range dls {
		if d.got != size {
			t.Errorf("stream %d got %d of %d", id, d.got, size)
		}
	}
	if len(p.c.streams) != 0 {
		t.Errorf("%d streams left", len(p.c.streams))
	}
}

// TestDrain: graceful GOAWAY and PING, streams taken until the PING
// comes back, the final GOAWAY naming the last, later streams ignored,
// the connection closed once the streams in flight are done.
func TestDrain(t *testing.T) {
	for _, ack := range []bool{true, false} {
		p := newPeer(t, Config{DrainTimeout: time.Second})
		p.handshake()
		p.get(1, "/", true)
		p.flush()
		s1, _ := p.c.Next()
		p.c.Drain()
		fs := p.frames()
		g := goAway(fs)
		if g == nil || g.LastStreamID != 1<<31-1 || g.ErrCode != http2.ErrCodeNo {
			t.Fatalf("first GOAWAY %v, want 2^31-1 NO_ERROR", g)
		}
		var ping *http2.PingFrame
		for _, f := range fs {
			if pf, ok := f.(*http2.PingFrame); ok {
				ping = pf
			}
		}
		if ping == nil || ping.IsAck() {
			t.Fatal("no PING after the graceful GOAWAY")
		}
		// A stream in flight before the client saw the GOAWAY is taken.
		p.get(3, "/", true)
		p.flush()
		s3, ev := p.c.Next()
		if s3 == nil || ev != EventRequest {
			t.Fatal("stream 3 after the graceful GOAWAY was not taken")
		}
		if ack {
			p.fr.WritePing(true, ping.Data)
			p.flush()
		} else {
			p.clock = p.c.Deadline()
			p.c.Tick(p.clock)
		}
		g = goAway(p.frames())
		if g == nil || g.LastStreamID != 3 || g.ErrCode != http2.ErrCodeNo {
			t.Fatalf("ack %v: final GOAWAY %v, want last stream 3", ack, g)
		}
		p.get(5, "/", true)
		p.flush()
		if s, _ := p.c.Next(); s != nil {
			t.Fatalf("stream %d taken after the final GOAWAY", s.ID())
		}
		for _, s := range []*Stream{s1, s3} {
			if p.c.Closed() {
				t.Fatal("closed with streams in flight")
			}
			s.WriteHeaders(200, nil, false)
			s.Write([]byte("done"), true)
			s.Done()
		}
		if !p.c.Closed() || p.c.Err() != nil {
			t.Fatalf("closed %v err %v, want closed without error", p.c.Closed(), p.c.Err())
		}
		var data int
		for _, f := range p.frames() {
			if d, ok := f.(*dataCopy); ok {
				data += len(d.data)
			}
		}
		if data != 8 {
			t.Fatalf("%d body bytes after the drain, want both responses", data)
		}
	}
}

// TestIdleTimeout: a connection without streams ends with GOAWAY
// NO_ERROR after IdleTimeout; one with a stream open does not.
func TestIdleTimeout(t *testing.T) {
	p := newPeer(t, Config{IdleTimeout: 10 * time.Second})
	p.handshake()
	p.get(1, "/", true)
	p.flush()
	s, _ := p.c.Next()
	if d := p.c.Deadline(); d != 0 {
		t.Fatalf("deadline %v with a stream open", time.Duration(d-peerEpoch))
	}
	p.clock += int64(time.Second)
	s.WriteHeaders(204, nil, true)
	s.Done()
	if d := p.c.Deadline() - p.clock; d != int64(10*time.Second) {
		t.Fatalf("idle deadline in %v, want 10s", time.Duration(d))
	}
	p.clock = p.c.Deadline()
	p.c.Tick(p.clock)
	if g := goAway(p.frames()); g == nil || g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v, want NO_ERROR last 1", g)
	}
	if !p.c.Closed() {
		t.Fatal("not closed")
	}
}

// TestResponseKinds: informational responses, trailers, HEAD, 100
// Continue, and a header block split into CONTINUATION.
func TestResponseKinds(t *testing.T) {
	p := newPeer(t, Config{})
	p.handshake()
	post(p, 1, "expect", "100-continue")
	blk := p.block(":method", "HEAD", ":scheme", "https", ":authority", "x", ":path", "/h")
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: blk, EndHeaders: true, EndStream: true})
	p.flush()
	s1, _ := p.c.Next()
	s3, _ := p.c.Next()
	s1.Continue()
	s1.Continue() // once only
	p.fr.WriteData(1, true, []byte("body"))
	p.flush()
	if _, ev := p.c.Next(); ev != EventBody || string(s1.Body()) != "body" {
		t.Fatalf("event %v body %q", ev, s1.Body())
	}
	s1.Consume(4)
	s1.WriteHeaders(103, []byte("Link: </a.css>; rel=preload\r\n"), false)
	big := bytes.Repeat([]byte("x"), 40000)
	s1.WriteHeaders(200, []byte("X-Big: "+string(big)+"\r\nTransfer-Encoding: chunked\r\nConnection: x-drop\r\nX-Drop: 1\r\n"), false)
	s1.Write([]byte("resp"), false)
	s1.WriteTrailers([]byte("Grpc-Status: 0\r\n"))
	s1.Done()
	s3.WriteHeaders(200, []byte("Content-Length: 10\r\n"), false)
	if n := s3.Write([]byte("0123456789"), true); n != 10 {
		t.Fatalf("HEAD Write took %d", n)
	}
	s3.Done()
	var statuses []string
	var trailers, data []string
	var cur []byte
	for _, f := range p.frames() {
		switch f := f.(type) {
		case *headersCopy:
			cur = f.frag
			if !f.HeadersEnded() {
				continue
			}
		case *contCopy:
			cur = append(cur, f.frag...)
			if !f.HeadersEnded() {
				continue
			}
		case *dataCopy:
			data = append(data, string(f.data))
			continue
		default:
			continue
		}
		fields := p.decode(cur)
		if fields[0].Name == ":status" {
			st := fields[0].Value
			for _, x := range fields[1:] {
				switch x.Name {
				case "x-big":
					if len(x.Value) != len(big) {
						t.Errorf("x-big of %d bytes", len(x.Value))
					}
				case "transfer-encoding", "connection", "x-drop":
					t.Errorf("hop-by-hop %s passed on", x.Name)
				default:
					st += " " + x.Name + "=" + x.Value
				}
			}
			statuses = append(statuses, st)
		} else {
			trailers = append(trailers, fields[0].Name+"="+fields[0].Value)
		}
	}
	want := []string{"100", "103 link=</a.css>; rel=preload", "200", "200 content-length=10"}
	if len(statuses) != len(want) {
		t.Fatalf("statuses %q, want %q", statuses, want)
	}
	for i := range want {
		if statuses[i] != want[i] {
			t.Errorf("status %d: %q, want %q", i, statuses[i], want[i])
		}
	}
	if len(trailers) != 1 || trailers[0] != "grpc-status=0" {
		t.Errorf("trailers %q", trailers)
	}
	if got := bytes.Join(toBytes(data), nil); string(got) != "resp" {
		t.Errorf("DATA %q, want only resp (HEAD has none)", got)
	}
}

func toBytes(ss []string) [][]byte {
	var bs [][]byte
	for _, s := range ss {
		bs = append(bs, []byte(s))
	}
	return bs
}
