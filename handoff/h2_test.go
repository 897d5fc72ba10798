package handoff_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/internal/tlstest"
)

// serveTLS starts a handoff.Server with TLS (h2 and http/1.1 offered) on
// a loopback port; the returned config trusts its certificate.
func serveTLS(t *testing.T, h http.Handler, goAwayDelay time.Duration) (*handoff.Server, *tls.Config) {
	t.Helper()
	ca := tlstest.NewCA(t)
	cert := ca.Issue(t, time.Time{}, time.Time{}, "site.test").Certificate(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &handoff.Server{
		Handler:     h,
		ErrorLog:    log.New(io.Discard, "", 0),
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		GoAwayDelay: goAwayDelay,
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 0)
		defer cancel()
		_ = s.Drain(ctx)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Drain")
		}
	})
	waitUntil(t, 2*time.Second, "Serve started", func() bool { return s.Addr() != nil })
	return s, &tls.Config{RootCAs: ca.Pool(), ServerName: "site.test"}
}

// TestServerTLS: HTTP/2 by ALPN, HTTP/1.1 otherwise, r.TLS set for both.
func TestServerTLS(t *testing.T) {
	s, tc := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "no TLS", 500)
			return
		}
		io.WriteString(w, r.Proto)
	}), 0)
	for _, tt := range []struct {
		name string
		rt   http.RoundTripper
		want string
	}{
		{"h2", &http2.Transport{TLSClientConfig: tc}, "HTTP/2.0"},
		{"http/1.1", &http.Transport{TLSClientConfig: tc}, "HTTP/1.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &http.Client{Transport: tt.rt, Timeout: 5 * time.Second}
			resp, err := c.Get("https://" + s.Addr().String() + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if g, e := string(body), tt.want; resp.StatusCode != 200 || g != e {
				t.Errorf("got %d %q; want 200 %q", resp.StatusCode, g, e)
			}
		})
	}
}

// h2Client is a raw HTTP/2 client connection that sees every frame.
type h2Client struct {
	t    *testing.T
	conn *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

func dialH2(t *testing.T, s *handoff.Server, tc *tls.Config) *h2Client {
	t.Helper()
	tc = tc.Clone()
	tc.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", s.Addr().String(), tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN: got %q, want h2", p)
	}
	c := &h2Client{t: t, conn: conn}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.fr = http2.NewFramer(conn, conn)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// get opens stream id with a GET for path.
func (c *h2Client) get(id uint32, path string) {
	c.t.Helper()
	c.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "site.test"}, {":path", path}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next frame that is not SETTINGS, WINDOW_UPDATE or PING;
// nil at EOF.
func (c *h2Client) next() http2.Frame {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			c.t.Fatalf("reading frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame, *http2.PingFrame:
		default:
			return f
		}
	}
}

// TestServerDrainH2 checks the HTTP/2 drain frame by frame: a graceful
// GOAWAY (last stream 2^31-1, NO_ERROR) as soon as draining starts, then
// the final one naming the last stream processed; the stream in flight
// and one opened between the two GOAWAYs are answered; then EOF.
func TestServerDrainH2(t *testing.T) {
	release := make(chan struct{})
	s, tc := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	}), 300*time.Millisecond)
	c := dialH2(t, s, tc)
	c.get(1, "/fast")
	// wantData reads stream id's answer to its END_STREAM.
	wantData := func(id uint32, body string) {
		t.Helper()
		var got []byte
		for {
			f := c.next()
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				continue
			case *http2.DataFrame:
				if f.StreamID != id {
					t.Fatalf("DATA on stream %d; want stream %d", f.StreamID, id)
				}
				got = append(got, f.Data()...)
				if !f.StreamEnded() {
					continue
				}
				if string(got) != body {
					t.Fatalf("stream %d: got %q, want %q", id, got, body)
				}
				return
			default:
				t.Fatalf("got %v, want DATA on stream %d", f, id)
			}
		}
	}
	wantData(1, "done /fast")
	c.get(3, "/slow")

	waitUntil(t, 2*time.Second, "request in flight", func() bool { return s.Connections() == 1 })
	s.StopAccepting()
	ga, ok := c.next().(*http2.GoAwayFrame)
	if !ok || ga.LastStreamID != 1<<31-1 || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("first frame after drain: %v; want GOAWAY last stream 2147483647 NO_ERROR", ga)
	}
	// A stream the client opened before it read the graceful GOAWAY.
	c.get(5, "/fast")
	wantData(5, "done /fast")
	ga, ok = c.next().(*http2.GoAwayFrame)
	if !ok || ga.LastStreamID != 5 || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("second GOAWAY: %v; want last stream 5 NO_ERROR", ga)
	}
	close(release)
	wantData(3, "done /slow")
	if f := c.next(); f != nil {
		t.Fatalf("after the last stream: %v, want EOF", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Drain(ctx); err != nil {
		t.Errorf("Drain: %v", err)
	}
}
