package epoll_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// ppUpstream is an upstream that is sent the PROXY protocol version v
// ("v1" or "v2", as backends.Backend writes it).
type ppUpstream struct {
	*upstream
	v string
}

func (u *ppUpstream) ProxyHeader(dst []byte, client, local netip.AddrPort) []byte {
	return append(dst, ppHeader(u.v, client, local)...)
}

// ppHeader is a PROXY protocol header for TCP over IPv4.
func ppHeader(v string, src, dst netip.AddrPort) string {
	if v == "v1" {
		return fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\n", src.Addr(), dst.Addr(), src.Port(), dst.Port())
	}
	b := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return string(binary.BigEndian.AppendUint16(b, dst.Port()))
}

// ppBackend is a raw HTTP/1.1 server whose connections must begin with
// a PROXY header of version v. It answers each request with the header
// its connection began with and whether the request said Connection:
// close, keeps the connection open, and counts connections that carried
// more than one request.
type ppBackend struct {
	ln     net.Listener
	v      string
	reused atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startPPBackend(t *testing.T, v string) *ppBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &ppBackend{ln: ln, v: v}
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *ppBackend) accept() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns = append(b.conns, c)
		b.mu.Unlock()
		b.wg.Add(1)
		go b.serve(c)
	}
}

func (b *ppBackend) serve(c net.Conn) {
	defer b.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	hdr, err := readPPHeader(br, b.v)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s", len(err.Error()), err)
		return
	}
	for n := 0; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if n > 0 {
			b.reused.Add(1)
		}
		body := fmt.Sprintf("%q close=%v", hdr, req.Close)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
}

// readPPHeader reads a header of version v: a line (v1), or 16 bytes and
// the length they give (v2).
func readPPHeader(br *bufio.Reader, v string) (string, error) {
	if v == "v1" {
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "PROXY ") {
			return "", fmt.Errorf("no v1 header: %q", line)
		}
		return line, nil
	}
	fixed := make([]byte, 16)
	if _, err := io.ReadFull(br, fixed); err != nil || string(fixed[:12]) != "\r\n\r\n\x00\r\nQUIT\n" {
		return "", fmt.Errorf("no v2 header: %q", fixed)
	}
	rest := make([]byte, binary.BigEndian.Uint16(fixed[14:]))
	if _, err := io.ReadFull(br, rest); err != nil {
		return "", fmt.Errorf("v2 header cut short: %w", err)
	}
	return string(fixed) + string(rest), nil
}

// TestProxyProtocol: a backend sent the PROXY protocol gets each request
// on a connection of its own that begins with a header naming the client
// and the address it connected to, and says Connection: close.
func TestProxyProtocol(t *testing.T) {
	tests := []struct {
		name, v, method, body string
	}{
		{"v1 GET", "v1", "GET", ""},
		{"v2 GET", "v2", "GET", ""},
		{"v1 POST", "v1", "POST", "hello"},
		{"v2 DELETE", "v2", "DELETE", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := startPPBackend(t, tc.v)
			up := &ppUpstream{upstream: &upstream{name: "pp", addr: be.ln.Addr().String(), tr: &http.Transport{}}, v: tc.v}
			p := fixedPool{up: up, u: up.upstream}
			addr := plane(t, "epoll", p, proxy.Config{})
			for range 2 {
				rc := dial(t, addr)
				want := fmt.Sprintf("%q close=true", ppHeader(tc.v,
					netip.MustParseAddrPort(rc.c.LocalAddr().String()), netip.MustParseAddrPort(rc.c.RemoteAddr().String())))
				for i := range 3 {
					raw := tc.method + " /x HTTP/1.1\r\nHost: x\r\n"
					if tc.body != "" {
						raw += "Content-Length: " + strconv.Itoa(len(tc.body)) + "\r\n"
					}
					rc.send(t, raw+"\r\n"+tc.body)
					resp, got := rc.read(t, tc.method)
					if resp.StatusCode != 200 || got != want {
						t.Fatalf("request %d: got %d %s, want 200 %s", i, resp.StatusCode, got, want)
					}
				}
			}
			if n := be.reused.Load(); n != 0 {
				t.Errorf("requests on a connection that carried another: %d, want 0", n)
			}
			waitUntil(t, 2*time.Second, "in flight back to 0", func() bool { return up.inflight.Load() == 0 })
		})
	}
}

// fixedPool always picks up, counting it in u.
type fixedPool struct {
	up proxy.Upstream
	u  *upstream
}

func (p fixedPool) Pick(proxy.Upstream) (proxy.Upstream, error) {
	p.u.inflight.Add(1)
	p.u.picks.Add(1)
	return p.up, nil
}
func (p fixedPool) Wait(context.Context) error { return nil }
func (p fixedPool) Unavailable() string        { return "" }

// passiveUpstream records how its attempts ended and, like
// backends.Backend, counts failures in a row: after fails of them it is
// marked (taken out, in baton).
type passiveUpstream struct {
	*upstream
	fails int

	mu       sync.Mutex
	outcomes []string
	inARow   int
	marked   bool
}

func (u *passiveUpstream) Answered(status int, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	o := strconv.Itoa(status)
	if err != nil {
		o = "error"
		if errors.Is(err, context.Canceled) {
			o = "canceled"
		}
	}
	u.outcomes = append(u.outcomes, o)
	if err != nil || status >= 500 {
		if u.inARow++; u.inARow >= u.fails {
			u.marked = true
		}
		return
	}
	u.inARow = 0
}

func (u *passiveUpstream) state() ([]string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.outcomes...), u.marked
}

// TestPassiveOutcomes: the loop reports each attempt's outcome once, as
// the net/http plane's passive detection sees it: the response's status,
// or the error of a round trip that failed; never a client that went
// away.
func TestPassiveOutcomes(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{}, 1)
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/stall":
			arrived <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			io.WriteString(w, "ok")
		}
	}))
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name     string
		addr     string
		paths    []string
		status   int
		want     []string
		wantMark bool
	}{
		{"5xx fewer than fails", srv.Listener.Addr().String(), []string{"/fail", "/fail", "/ok", "/fail"}, 0, []string{"503", "503", "200", "503"}, false},
		{"5xx fails in a row", srv.Listener.Addr().String(), []string{"/fail", "/fail", "/fail"}, 0, []string{"503", "503", "503"}, true},
		{"refused, once per attempt", dead, []string{"/x"}, 502, []string{"error", "error"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := &passiveUpstream{upstream: &upstream{name: "b1", addr: tc.addr, tr: &http.Transport{}}, fails: 3}
			addr := plane(t, "epoll", fixedPool{up: up, u: up.upstream}, proxy.Config{MaxAttempts: 2})
			rc := dial(t, addr)
			for _, path := range tc.paths {
				rc.send(t, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, _ := rc.read(t, "GET")
				if tc.status != 0 && resp.StatusCode != tc.status {
					t.Fatalf("%s: got %d, want %d", path, resp.StatusCode, tc.status)
				}
			}
			got, marked := up.state()
			if strings.Join(got, " ") != strings.Join(tc.want, " ") || marked != tc.wantMark {
				t.Errorf("outcomes: got %v marked %v, want %v marked %v", got, marked, tc.want, tc.wantMark)
			}
		})
	}

	t.Run("client gone", func(t *testing.T) {
		up := &passiveUpstream{upstream: &upstream{name: "b1", addr: srv.Listener.Addr().String(), tr: &http.Transport{}}, fails: 1}
		addr := plane(t, "epoll", fixedPool{up: up, u: up.upstream}, proxy.Config{})
		rc := dial(t, addr)
		rc.send(t, "GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
		select {
		case <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("the request did not reach the backend")
		}
		rc.c.Close()
		waitUntil(t, 2*time.Second, "in flight back to 0", func() bool { return up.inflight.Load() == 0 })
		if got, marked := up.state(); len(got) != 0 || marked {
			t.Errorf("outcomes: got %v marked %v, want none", got, marked)
		}
	})
}
