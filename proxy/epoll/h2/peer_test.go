package h2

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// peer is a raw HTTP/2 client (x/net/http2's Framer) wired to a Conn in
// memory, with a fake clock.
type peer struct {
	t     testing.TB
	c     *Conn
	toSrv bytes.Buffer // what the client wrote, not yet fed
	toCli bytes.Buffer // what the server wrote, not yet read
	fr    *http2.Framer
	enc   *hpack.Encoder
	hbuf  bytes.Buffer
	dec   *hpack.Decoder
	clock int64
}

func newPeer(t testing.TB, cfg Config) *peer {
	t.Helper()
	p := &peer{t: t, clock: peerEpoch}
	cfg.Clock = func() int64 { return p.clock }
	c, err := NewConn(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.c = c
	p.fr = http2.NewFramer(&p.toSrv, &p.toCli)
	p.fr.AllowIllegalWrites = true
	p.fr.AllowIllegalReads = true
	p.fr.SetMaxReadFrameSize(1<<24 - 1)
	p.enc = hpack.NewEncoder(&p.hbuf)
	p.dec = hpack.NewDecoder(4096, nil)
	return p
}

// handshake sends the preface and SETTINGS, and reads the server's
// SETTINGS (and its WINDOW_UPDATE) and the ACK of ours.
func (p *peer) handshake(settings ...http2.Setting) {
	p.t.Helper()
	p.toSrv.WriteString(http2.ClientPreface)
	if err := p.fr.WriteSettings(settings...); err != nil {
		p.t.Fatal(err)
	}
	p.flush()
	for {
		f := p.read()
		if sf, ok := f.(*http2.SettingsFrame); ok && sf.IsAck() {
			break
		}
	}
	if err := p.fr.WriteSettingsAck(); err != nil {
		p.t.Fatal(err)
	}
	p.flush()
}

// flush feeds the server what the client wrote and takes its output.
func (p *peer) flush() {
	for {
		b := p.toSrv.Bytes()
		n := p.c.Feed(b)
		p.toSrv.Next(n)
		out := p.c.Output()
		p.toCli.Write(out)
		p.c.Written(len(out))
		if n == 0 || p.toSrv.Len() == 0 {
			return
		}
	}
}

// read returns the server's next frame; nil when there is none.
func (p *peer) read() http2.Frame {
	p.t.Helper()
	if p.toCli.Len() == 0 {
		p.flush()
		if p.toCli.Len() == 0 {
			return nil
		}
	}
	f, err := p.fr.ReadFrame()
	if err != nil {
		p.t.Fatalf("read frame: %v", err)
	}
	return f
}

// frames returns every frame the server has written.
func (p *peer) frames() []http2.Frame {
	var fs []http2.Frame
	for f := p.read(); f != nil; f = p.read() {
		fs = append(fs, copyFrame(f))
	}
	return fs
}

// copyFrame detaches a frame from the Framer's buffer.
func copyFrame(f http2.Frame) http2.Frame {
	switch f := f.(type) {
	case *http2.DataFrame:
		d := *f
		return &dataCopy{d, append([]byte(nil), f.Data()...)}
	case *http2.HeadersFrame:
		h := *f
		return &headersCopy{h, append([]byte(nil), f.HeaderBlockFragment()...)}
	case *http2.ContinuationFrame:
		h := *f
		return &contCopy{h, append([]byte(nil), f.HeaderBlockFragment()...)}
	}
	return f
}

type dataCopy struct {
	http2.DataFrame
	data []byte
}
type headersCopy struct {
	http2.HeadersFrame
	frag []byte
}
type contCopy struct {
	http2.ContinuationFrame
	frag []byte
}

// headers encodes fields (name, value pairs) into a header block.
func (p *peer) block(kv ...string) []byte {
	p.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = p.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), p.hbuf.Bytes()...)
}

// get sends a GET for path on stream id.
func (p *peer) get(id uint32, path string, end bool) {
	p.t.Helper()
	blk := p.block(":method", "GET", ":scheme", "https", ":authority", "example.com", ":path", path)
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: end, EndHeaders: true}); err != nil {
		p.t.Fatal(err)
	}
}

// goAway returns the first GOAWAY among fs, or nil.
func goAway(fs []http2.Frame) *http2.GoAwayFrame {
	for _, f := range fs {
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g
		}
	}
	return nil
}

// rst returns the RST_STREAM for id among fs, or nil.
func rst(fs []http2.Frame, id uint32) *http2.RSTStreamFrame {
	for _, f := range fs {
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == id {
			return r
		}
	}
	return nil
}

// decode decodes a response header block.
func (p *peer) decode(blk []byte) []hpack.HeaderField {
	p.t.Helper()
	fs, err := p.dec.DecodeFull(blk)
	if err != nil {
		p.t.Fatalf("decode response header: %v", err)
	}
	return fs
}

// events drains the Conn's events.
func (p *peer) events() []evRec {
	var evs []evRec
	for s, ev := p.c.Next(); s != nil; s, ev = p.c.Next() {
		evs = append(evs, evRec{s, ev})
	}
	return evs
}

// peerEpoch is the peer clock's start.
const peerEpoch = int64(1000 * time.Second)

type evRec struct {
	s  *Stream
	ev Event
}
