package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/batonproxy/baton/internal/wstest"
)

// TestTLSBadInput: bad clients on the TLS port each get their answer while
// HTTPS load goes on undisturbed: plaintext HTTP gets 400, a handshake
// that never finishes is closed at read_header_timeout, an unknown SNI
// name gets the default certificate, garbage after the h2 preface gets
// GOAWAY with an error code, and a WebSocket client that stops reading is
// dropped after idle_timeout.
func TestTLSBadInput(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("/ws", wstest.Echo)
	mux.HandleFunc("/small.txt", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, smallBody) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	backend := httptest.NewServer(mux)
	defer backend.Close()
	var site *tlsSite
	b := startBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, "read_header_timeout = \"1s\"\nidle_timeout = \"2s\"", backendTOML("go", backend.URL)) + tlsTOML
	})
	addr := b.tlsAddr()
	l := startHTTPSLoad(t, addr, site.clientConfig("site.test"), httpsSpec{H2Get: 2, H1Get: 1, RawTLS: 1})
	l.progress(t, 10)

	t.Run("plaintext", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /small.txt HTTP/1.1\r\nHost: site.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || !strings.Contains(string(body), "HTTPS") {
			t.Errorf("got %d %q, want 400 saying HTTPS", resp.StatusCode, body)
		}
	})
	t.Run("stalled handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello record, then nothing
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c)
		took := time.Since(start)
		if err != nil || took < 900*time.Millisecond || took > 5*time.Second {
			t.Errorf("closed after %s (%v); want EOF at read_header_timeout (1s)", took, err)
		}
	})
	t.Run("unknown SNI", func(t *testing.T) {
		if names, _ := servedCert(t, addr, "nobody.test"); len(names) == 0 || names[0] != "site.test" {
			t.Errorf("served %v, want the default site.test", names)
		}
	})
	t.Run("h2 garbage", func(t *testing.T) {
		cfg := site.clientConfig("site.test")
		cfg.NextProtos = []string{"h2"}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fr := http2.NewFramer(c, c)
		fr.AllowIllegalWrites = true
		io.WriteString(c, http2.ClientPreface)
		fr.WriteSettings()
		// A DATA frame on stream 0 is a connection error (PROTOCOL_ERROR).
		fr.WriteData(0, false, []byte("garbage"))
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("no GOAWAY before %v", err)
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				if ga.ErrCode == http2.ErrCodeNo {
					t.Errorf("GOAWAY with NO_ERROR, want an error code")
				}
				t.Logf("GOAWAY %v", ga.ErrCode)
				break
			}
		}
		if _, err := io.Copy(io.Discard, c); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Logf("after GOAWAY: %v", err)
		}
	})
	t.Run("WebSocket client that stops reading", func(t *testing.T) {
		c, err := tls.Dial("tcp", addr, site.clientConfig("site.test"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ws, err := wstest.Client(c, "site.test", "/ws")
		if err != nil {
			t.Fatal(err)
		}
		// Send and never read: the echoes pile up until baton gives up on
		// this client, idle_timeout after its writes stopped progressing.
		start := time.Now()
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		chunk := strings.Repeat("x", 32<<10)
		var werr error
		for i := 0; i < 100000 && werr == nil; i++ {
			werr = ws.WriteText(chunk)
		}
		took := time.Since(start)
		if werr == nil || took > 20*time.Second || strings.Contains(werr.Error(), "timeout") {
			t.Errorf("writes ended after %s with %v; want the connection dropped by baton", took, werr)
		}
		t.Logf("dropped after %s: %v", took.Round(time.Millisecond), werr)
	})
	l.progress(t, 10)
	l.check(t)
}
