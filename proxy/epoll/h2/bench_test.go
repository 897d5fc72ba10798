package h2

import (
	"bytes"
	"runtime"
	"testing"

	"golang.org/x/net/http2"
)

// BenchmarkRoundTrip is one request and its response through the engine,
// as the loop drives it: the client's HEADERS fed (HPACK-indexed after
// the first, as browsers and h2load send them), the event, the HTTP/1.1
// request head, an nginx-like response header and a body, the output
// taken.
func BenchmarkRoundTrip(b *testing.B) {
	for _, size := range []int{100, 16 << 10} {
		b.Run(itoa(size), func(b *testing.B) {
			p := newPeer(b, Config{})
			p.handshake(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
			p.fr.WriteWindowUpdate(0, 1<<30)
			p.flush()
			p.frames()
			c := p.c
			body := make([]byte, size)
			hdr := []byte("Server: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 13:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: " + itoa(size) + "\r\nLast-Modified: Mon, 07 Dec 2026 12:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6932a0a0-64\"\r\nAccept-Ranges: bytes\r\n")
			fw := &Forward{ClientIP: "127.0.0.1", Backend: "127.0.0.1:8080", TLS: true}
			var head []byte
			frames := make([][]byte, 0, 1)
			id := uint32(1)
			mk := func() []byte {
				blk := p.block(":method", "GET", ":scheme", "https", ":authority", "127.0.0.1:8443", ":path", "/index.html",
					"user-agent", "h2load nghttp2/1.52.0", "accept", "*/*", "accept-encoding", "gzip, deflate")
				p.toSrv.Reset()
				p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: true, EndHeaders: true})
				return append([]byte(nil), p.toSrv.Bytes()...)
			}
			frames = append(frames, mk())
			frames = append(frames, mk()) // indexed from here on
			tmpl := frames[1]
			frame := append([]byte(nil), tmpl...)
			// The client gives the connection window back, as it reads.
			p.toSrv.Reset()
			p.fr.WriteWindowUpdate(0, uint32(size))
			frame = append(frame, p.toSrv.Bytes()...)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id += 2
				if i == 0 {
					c.Feed(frames[0])
					id = 1
				}
				frame[5], frame[6], frame[7], frame[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
				if i == 0 {
					id = 3
					frame[8] = 3
				}
				c.Feed(frame)
				for s, ev := c.Next(); s != nil; s, ev = c.Next() {
					if ev&EventRequest == 0 {
						b.Fatalf("event %v", ev)
					}
					head, _, _ = s.AppendRequest(head[:0], fw)
					s.WriteHeaders(200, hdr, false)
					if n := s.Write(body, true); n != size {
						b.Fatalf("Write took %d", n)
					}
					s.Done()
				}
				c.Written(len(c.Output()))
				if c.Closed() {
					b.Fatalf("closed: %v", c.Err())
				}
			}
		})
	}
}

// TestIdleMemory measures the heap an idle connection holds after a
// request (HPACK tables included): issue 19 wants 10,000 idle h2 clients
// at no more than HAProxy's RSS.
func TestIdleMemory(t *testing.T) {
	const n = 2000
	conns := make([]*peer, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range conns {
		p := newPeer(t, Config{})
		p.handshake()
		p.get(1, "/index.html", true)
		p.flush()
		p.serve(true, nil)
		p.frames()
		p.fr, p.enc, p.dec = nil, nil, nil // the client's side is not the server's memory
		p.toCli, p.toSrv, p.hbuf = bytes.Buffer{}, bytes.Buffer{}, bytes.Buffer{}
		conns[i] = p
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (after.HeapAlloc - before.HeapAlloc) / n
	t.Logf("heap per idle connection: %d bytes", per)
	if per > 16<<10 {
		t.Errorf("an idle connection holds %d bytes, want at most 16 KiB", per)
	}
	runtime.KeepAlive(conns)
}
