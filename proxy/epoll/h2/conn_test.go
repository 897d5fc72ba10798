package h2

import (
	"testing"

	"golang.org/x/net/http2"
)

func TestRoundTrip(t *testing.T) {
	p := newPeer(t, Config{})
	p.handshake()
	p.get(1, "/a?b=c", true)
	p.flush()
	evs := p.events()
	if len(evs) != 1 || evs[0].ev != EventRequest {
		t.Fatalf("events %v, want one EventRequest", evs)
	}
	s := evs[0].s
	head, h, err := s.AppendRequest(nil, &Forward{ClientIP: "192.0.2.1", Backend: "127.0.0.1:8080", TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: example.com\r\nX-Forwarded-Proto: https\r\n\r\n"
	if g := string(head); g != want || !h.Replay || h.Body != BodyNone {
		t.Fatalf("request\n%q %+v, want\n%q replayable without body", g, h, want)
	}
	s.WriteHeaders(200, []byte("Content-Type: text/plain\r\nConnection: close\r\nKeep-Alive: 5\r\nContent-Length: 5\r\n"), false)
	if n := s.Write([]byte("hello"), true); n != 5 {
		t.Fatalf("Write took %d, want 5", n)
	}
	s.Done()
	fs := p.frames()
	var gotHdr, gotData bool
	for _, f := range fs {
		switch f := f.(type) {
		case *headersCopy:
			hf := p.decode(f.frag)
			got := ""
			for _, x := range hf {
				got += x.Name + "=" + x.Value + ";"
			}
			if want := ":status=200;content-type=text/plain;content-length=5;"; got != want {
				t.Errorf("response header %s, want %s", got, want)
			}
			gotHdr = true
		case *dataCopy:
			if string(f.data) != "hello" || !f.StreamEnded() {
				t.Errorf("DATA %q end %v", f.data, f.StreamEnded())
			}
			gotData = true
		}
	}
	if !gotHdr || !gotData {
		t.Fatalf("frames %v: no response", fs)
	}
	if len(p.c.streams) != 0 || p.c.nopen != 0 {
		t.Fatalf("streams left: %d open %d", len(p.c.streams), p.c.nopen)
	}
	_ = http2.ClientPreface
}
