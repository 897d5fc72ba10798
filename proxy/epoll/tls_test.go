package epoll_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/batonproxy/baton/internal/tlstest"
	"github.com/batonproxy/baton/proxy"
	"github.com/batonproxy/baton/proxy/epoll"
)

// tlsPlane serves pool over TLS through an epoll.Server and returns its
// address and the client configuration that trusts it.
func tlsPlane(t *testing.T, p proxy.Pool, errLog io.Writer) (string, *tls.Config) {
	t.Helper()
	ca := tlstest.NewCA(t)
	pair := ca.Issue(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "localhost")
	srvCfg := &tls.Config{Certificates: []tls.Certificate{pair.Certificate(t)}, NextProtos: []string{"h2", "http/1.1"}}
	s := &epoll.Server{Handler: proxy.New(p, proxy.Config{HoldTimeout: time.Second}), Loops: 1, TLSConfig: srvCfg}
	if errLog != nil {
		s.ErrorLog = log.New(errLog, "", 0)
	}
	return serveEpoll(t, s), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
}

func tlsBackend() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s proto=%s xfp=%s body=%d\n", r.Method, r.RequestURI, r.Proto, r.Header.Get("X-Forwarded-Proto"), len(body))
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "200000")
		w.Write([]byte(strings.Repeat("x", 200000)))
	})
	return mux
}

func TestTLSKeepAlive(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	tests := []struct {
		name      string
		version   uint16
		protos    []string
		wantProto string
	}{
		{"TLS 1.3 HTTP/1.1 (in a loop)", tls.VersionTLS13, []string{"http/1.1"}, "HTTP/1.1"},
		{"TLS 1.2 HTTP/1.1 (net/http)", tls.VersionTLS12, []string{"http/1.1"}, "HTTP/1.1"},
		{"TLS 1.3 h2 (net/http)", tls.VersionTLS13, []string{"h2"}, "HTTP/2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := cc.Clone()
			cfg.MinVersion, cfg.MaxVersion, cfg.NextProtos = tt.version, tt.version, tt.protos
			var rt http.RoundTripper = &http.Transport{TLSClientConfig: cfg}
			if tt.protos[0] == "h2" {
				h2 := &http2.Transport{TLSClientConfig: cfg}
				defer h2.CloseIdleConnections()
				rt = h2
			}
			dials := 0
			var mu sync.Mutex
			if tr, ok := rt.(*http.Transport); ok {
				tr.DialTLSContext = func(ctx context.Context, network, a string) (net.Conn, error) {
					mu.Lock()
					dials++
					mu.Unlock()
					return tls.Dial(network, a, cfg)
				}
				defer tr.CloseIdleConnections()
			}
			client := &http.Client{Transport: rt, Timeout: 10 * time.Second}
			for i := 0; i < 20; i++ {
				resp, err := client.Get("https://" + addr + fmt.Sprintf("/k%d", i))
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if resp.Proto != tt.wantProto {
					t.Errorf("proto: got %s, want %s", resp.Proto, tt.wantProto)
				}
				if got, want := string(body), fmt.Sprintf("GET /k%d proto=HTTP/1.1 xfp=https body=0\n", i); got != want {
					t.Fatalf("body: got %q, want %q", got, want)
				}
				if resp.TLS == nil || resp.TLS.Version != tt.version {
					t.Fatalf("TLS version: got %+v, want %x", resp.TLS, tt.version)
				}
			}
			// Large responses span many records; bodies go to net/http.
			resp, err := client.Get("https://" + addr + "/big")
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != 200000 {
				t.Fatalf("big: got %d bytes, %v; want 200000", n, err)
			}
			resp, err = client.Post("https://"+addr+"/post", "text/plain", strings.NewReader(strings.Repeat("p", 50000)))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got, want := string(body), "POST /post proto=HTTP/1.1 xfp=https body=50000\n"; got != want {
				t.Fatalf("post: got %q, want %q", got, want)
			}
			resp, err = client.Get("https://" + addr + "/after-post")
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if got, want := string(body), "GET /after-post proto=HTTP/1.1 xfp=https body=0\n"; got != want {
				t.Fatalf("after post: got %q, want %q", got, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if _, ok := rt.(*http.Transport); ok && dials != 1 {
				t.Errorf("connections: got %d, want 1 (keep-alive throughout)", dials)
			}
		})
	}
}

// TestTLSPipelined: requests the client writes in one go with
// (or right after) its Finished reach the loop from the handshake's
// leftovers.
func TestTLSPipelined(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	cfg := cc.Clone()
	cfg.MinVersion, cfg.NextProtos = tls.VersionTLS13, []string{"http/1.1"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var reqs strings.Builder
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&reqs, "GET /p%d HTTP/1.1\r\nHost: localhost\r\n\r\n", i)
	}
	if _, err := io.WriteString(c, reqs.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i := 0; i < 50; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got, want := string(body), fmt.Sprintf("GET /p%d proto=HTTP/1.1 xfp=https body=0\n", i); got != want {
			t.Fatalf("response %d: got %q, want %q", i, got, want)
		}
	}
	// close_notify then EOF, as crypto/tls expects.
	if _, err := io.WriteString(c, "GET /last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after Connection: close: got %v, want io.EOF (a close_notify)", err)
	}
}

func TestTLSBadInput(t *testing.T) {
	b := backend(t, tlsBackend())
	var logBuf syncBuffer
	addr, cc := tlsPlane(t, newPool(true, b), &logBuf)

	t.Run("plain HTTP on the TLS port", func(t *testing.T) {
		rc := dial(t, addr)
		rc.send(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := rc.read(t, "GET")
		if resp.StatusCode != 400 || !strings.Contains(body, "HTTPS server") {
			t.Errorf("got %d %q, want 400 about an HTTPS server", resp.StatusCode, body)
		}
	})
	t.Run("garbage record after the handshake", func(t *testing.T) {
		cfg := cc.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		nc := c.NetConn()
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		// An application data record that does not authenticate.
		if _, err := nc.Write([]byte{23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 10))
		if err == nil || !strings.Contains(err.Error(), "bad record MAC") {
			t.Errorf("got %v, want the bad_record_mac alert", err)
		}
	})
	t.Run("still serving", func(t *testing.T) {
		cfg := cc.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/ok")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("got %d", resp.StatusCode)
		}
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// holdConn sends its first write (the ClientHello) at once and holds every
// later one until flush, which sends them in one write: the client's
// Finished and what follows it arrive together.
type holdConn struct {
	net.Conn
	mu      sync.Mutex
	writes  int
	held    []byte
	flushed bool
}

func (c *holdConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writes++; c.writes == 1 || c.flushed {
		return c.Conn.Write(p)
	}
	c.held = append(c.held, p...)
	return len(p), nil
}

func (c *holdConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.Conn.SetWriteDeadline(time.Time{}) // crypto/tls's CloseWrite ends writing with a past deadline
	_, err := c.Conn.Write(c.held)
	c.held, c.flushed = nil, true
	return err
}

// fixedRand makes every ClientHello random the same.
type fixedRand struct{}

func (fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 7
	}
	return len(p), nil
}

// TestTLSFinishedRequestCloseNotify: the client's Finished, a request and
// its close_notify in one write (they reach the loop with the handshake's
// leftovers): the request is answered, then the connection closes.
func TestTLSFinishedRequestCloseNotify(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	for i := 0; i < 5; i++ {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		hc := &holdConn{Conn: raw}
		cfg := cc.Clone()
		cfg.MinVersion, cfg.NextProtos = tls.VersionTLS13, []string{"http/1.1"}
		c := tls.Client(hc, cfg)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /together HTTP/1.1\r\nHost: localhost\r\n\r\n")
		c.CloseWrite()
		if err := hc.flush(); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("try %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if got, want := string(body), "GET /together proto=HTTP/1.1 xfp=https body=0\n"; got != want {
			t.Fatalf("try %d: got %q, want %q", i, got, want)
		}
		c.Close()
	}
}

// TestTLSCopiedRandom: a second handshake with the same client random (a
// copied ClientHello) while the first has not finished cannot make the
// first one use its keys: both are answered.
func TestTLSCopiedRandom(t *testing.T) {
	b := backend(t, tlsBackend())
	addr, cc := tlsPlane(t, newPool(true, b), nil)
	cfg := cc.Clone()
	cfg.MinVersion, cfg.NextProtos, cfg.Rand = tls.VersionTLS13, []string{"http/1.1"}, fixedRand{}
	get := func(c *tls.Conn, path string) string {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	hv := &holdConn{Conn: raw}
	victim := tls.Client(hv, cfg)
	defer victim.Close()
	if err := victim.Handshake(); err != nil { // its Finished is held back
		t.Fatal(err)
	}
	// The copy's ClientHello comes in records of 30 bytes: its first
	// record does not even hold the random.
	rawOther, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	other := tls.Client(&splitHelloConn{Conn: rawOther}, cfg)
	defer other.Close()
	if err := other.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got := get(other, "/other"); !strings.HasPrefix(got, "GET /other ") {
		t.Fatalf("other: %q", got)
	}
	if err := hv.flush(); err != nil {
		t.Fatal(err)
	}
	if got := get(victim, "/victim"); !strings.HasPrefix(got, "GET /victim ") {
		t.Fatalf("victim: %q", got)
	}
}

// splitHelloConn sends its first write (one record: the ClientHello) as
// records of at most 30 bytes of the handshake message each.
type splitHelloConn struct {
	net.Conn
	done bool
}

func (c *splitHelloConn) Write(p []byte) (int, error) {
	if c.done || len(p) < 5 || p[0] != 22 {
		return c.Conn.Write(p)
	}
	c.done = true
	var out []byte
	for body := p[5:]; len(body) > 0; {
		n := min(30, len(body))
		out = append(out, 22, p[1], p[2], 0, byte(n))
		out = append(out, body[:n]...)
		body = body[n:]
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// TestTLSSuitesInLoop: a TLS 1.3 HTTP/1.1 connection is served in a loop
// whatever its suite; the test runs in this process (AES-GCM) and again in
// one where crypto/tls prefers ChaCha20-Poly1305, as on a machine without
// AES instructions (GODEBUG=cpu.aes=off), which was handed over to
// net/http before (issue 19 item 6).
func TestTLSSuitesInLoop(t *testing.T) {
	want := os.Getenv("EPOLL_WANT_SUITE")
	if want == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTLSSuitesInLoop$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "GODEBUG=cpu.aes=off", "EPOLL_WANT_SUITE=TLS_CHACHA20_POLY1305_SHA256")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestTLSSuitesInLoop") {
			t.Errorf("with ChaCha20-Poly1305: %v\n%s", err, out)
		}
	}
	b := backend(t, tlsBackend())
	ca := tlstest.NewCA(t)
	pair := ca.Issue(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "localhost")
	s := &epoll.Server{Handler: proxy.New(newPool(true, b), proxy.Config{}), Loops: 1,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair.Certificate(t)}, NextProtos: []string{"http/1.1"}}}
	addr := serveEpoll(t, s)
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, path := range []string{"/a", "/big", "/b"} {
		resp, err := client.Get("https://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d, %d bytes, %v", path, resp.StatusCode, n, err)
		}
		suite := tls.CipherSuiteName(resp.TLS.CipherSuite)
		if want != "" && suite != want {
			t.Fatalf("suite %s, want %s", suite, want)
		}
		t.Logf("%s: %s, %d bytes", path, suite, n)
	}
	if n, m := epoll.FrontHandedOver(s), epoll.HandedOver(s); n != 0 || m != 0 {
		t.Errorf("%d connections handed over to net/http after the handshake, %d by the loop, want 0 (served in the loop)", n, m)
	}
}
