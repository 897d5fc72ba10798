package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/proxy"
)

// realUpstream is one backend reached through the transports baton uses:
// proxy.Transport for replayable requests, a fresh-connection
// http.Transport for the rest.
type realUpstream struct {
	addr   string
	pooled *proxy.Transport
	fresh  *http.Transport
	picks  atomic.Int64
}

func (u *realUpstream) Name() string   { return "bad" }
func (u *realUpstream) Addr() string   { return u.addr }
func (u *realUpstream) Done(err error) {}
func (u *realUpstream) Transport(replayable bool) http.RoundTripper {
	if replayable {
		return u.pooled
	}
	return u.fresh
}

// onePool always picks its one upstream.
type onePool struct{ u *realUpstream }

func (p onePool) Pick(proxy.Upstream) (proxy.Upstream, error) { p.u.picks.Add(1); return p.u, nil }
func (p onePool) Wait(ctx context.Context) error              { <-ctx.Done(); return ctx.Err() }
func (p onePool) Unavailable() string                         { return "never" }

const testReadTimeout = 300 * time.Millisecond

// misbehaving starts the misbehaving backend and a proxy in front of it.
func misbehaving(t *testing.T) (*backendtest.Misbehaving, *realUpstream, string) {
	t.Helper()
	m, err := backendtest.StartMisbehaving()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	d := &net.Dialer{Timeout: time.Second}
	u := &realUpstream{
		addr: m.Addr,
		pooled: &proxy.Transport{Addr: m.Addr, ReadTimeout: testReadTimeout, MaxResponseHeaderBytes: 64 << 10,
			Fallback: &http.Transport{DialContext: d.DialContext}},
		fresh: &http.Transport{DialContext: proxy.ReadTimeoutDialer(d.DialContext, testReadTimeout),
			DisableKeepAlives: true, MaxResponseHeaderBytes: 64 << 10},
	}
	t.Cleanup(u.pooled.CloseIdleConnections)
	_, srv := front(t, onePool{u}, proxy.Config{HoldTimeout: time.Second})
	return m, u, srv.URL
}

// TestOversendNeverReachesAnotherClient: a backend that sends more than
// its Content-Length (a second, unasked-for response) must not make baton
// hand that response to the next client; the connection is not reused.
// Before the fix, B received "EVIL" and every answer after was one behind.
func TestOversendNeverReachesAnotherClient(t *testing.T) {
	for _, path := range []string{"/oversend", "/oversend-late"} {
		t.Run(path, func(t *testing.T) {
			m, _, url := misbehaving(t)
			a, b := newClient(t), newClient(t)
			for i := 0; i < 5; i++ {
				ra := get(t, a, url+path)
				if ra.err != nil || ra.code != 200 || ra.body != "HELLO" {
					t.Fatalf("round %d: A got %d %q %v, want 200 HELLO", i, ra.code, ra.body, ra.err)
				}
				if path == "/oversend-late" {
					// The unsolicited response arrives while the connection is idle.
					waitUntil(t, 2*time.Second, "the late response", func() bool { return m.Hits(path+"#late") == i+1 })
				}
				rb := get(t, b, url+"/b")
				if rb.err != nil || rb.code != 200 || rb.body != "/b\n" {
					t.Fatalf("round %d: B got %d %q %v, want 200 \"/b\\n\" (another client's response leaked)", i, rb.code, rb.body, rb.err)
				}
			}
			if got := m.Hits("/b"); got != 5 {
				t.Errorf("backend saw /b %d times, want 5", got)
			}
		})
	}
}

// TestBadResponseNotRetried: a backend that answered with something that
// is not a valid HTTP response did answer: one attempt, then 502 (before
// the fix a GET was sent 5 times).
func TestBadResponseNotRetried(t *testing.T) {
	for _, path := range []string{"/garbage", "/http09", "/bad-status", "/huge-header", "/many-1xx"} {
		t.Run(path, func(t *testing.T) {
			m, _, url := misbehaving(t)
			r := get(t, newClient(t), url+path)
			if r.err != nil || r.code != http.StatusBadGateway {
				t.Fatalf("got %d %q %v, want 502", r.code, r.body, r.err)
			}
			if got := m.Hits(path); got != 1 {
				t.Errorf("backend was asked %d times, want 1", got)
			}
			if !strings.Contains(r.body, "backend bad") {
				t.Errorf("body %q does not name the backend", r.body)
			}
			// The proxy still serves.
			if r := get(t, newClient(t), url+"/after"); r.code != 200 || r.body != "/after\n" {
				t.Errorf("next request: %d %q %v", r.code, r.body, r.err)
			}
		})
	}
}

// TestFailedBeforeAnyByteIs502: a response that breaks before any of it
// reached the client is a 502 with a reason, not an empty reply.
func TestFailedBeforeAnyByteIs502(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			_, _, url := misbehaving(t)
			var body io.Reader
			if method == "POST" {
				body = strings.NewReader("x")
			}
			req, _ := http.NewRequest(method, url+"/headers-close", body)
			r := do(t, newClient(t), req)
			if r.err != nil || r.code != http.StatusBadGateway {
				t.Fatalf("got %d %q %v, want 502", r.code, r.body, r.err)
			}
		})
	}
}

// TestStalledResponse: a backend that sends its header and then stalls:
// the client gets the header at once, and the read timeout ends the
// response instead of leaving the client hanging.
func TestStalledResponse(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			_, _, url := misbehaving(t)
			var body io.Reader
			if method == "POST" {
				body = strings.NewReader("x")
			}
			req, _ := http.NewRequest(method, url+"/stall-headers", body)
			start := time.Now()
			resp, err := newClient(t).Do(req)
			if err != nil {
				t.Fatalf("no header: %v", err)
			}
			defer resp.Body.Close()
			if d := time.Since(start); d > testReadTimeout/2 {
				t.Errorf("header took %s, want it at once (before the %s read timeout)", d, testReadTimeout)
			}
			if resp.StatusCode != 200 || resp.Header.Get("X-Stall") != "yes" {
				t.Errorf("got %d %v", resp.StatusCode, resp.Header)
			}
			_, err = io.ReadAll(resp.Body)
			if err == nil {
				t.Error("the stalled body ended without an error; want it cut")
			}
			if d := time.Since(start); d > 5*testReadTimeout {
				t.Errorf("the stalled response lasted %s; want it cut after about %s", d, testReadTimeout)
			}
		})
	}
}

// TestShortBodyCut: 10 of 100 promised bytes then close, all at once:
// nothing reached the client before the failure, so it is a 502 (before
// the fix: an empty reply).
func TestShortBodyCut(t *testing.T) {
	_, _, url := misbehaving(t)
	r := get(t, newClient(t), url+"/short-close")
	if r.err != nil || r.code != http.StatusBadGateway || !strings.Contains(r.body, "backend bad") {
		t.Errorf("got %d %q %v, want a 502 naming the backend", r.code, r.body, r.err)
	}
}

// TestClientBadChunkedBody: a malformed chunked request body is the
// client's fault: 400, not 502 blaming the backend.
func TestClientBadChunkedBody(t *testing.T) {
	for _, tc := range []struct{ name, body string }{
		{"not hex", "zz\r\nabc\r\n0\r\n\r\n"},
		{"negative", "-5\r\nabc\r\n0\r\n\r\n"},
		{"overflow", "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"},
		{"bare LF", "3\nabc\n0\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, url := misbehaving(t)
			addr := strings.TrimPrefix(url, "http://")
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%s", tc.body)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("got %d %q, want 400", resp.StatusCode, b)
			}
			if strings.Contains(string(b), "backend") {
				t.Errorf("body %q blames the backend", b)
			}
			_ = m
		})
	}
}

// TestIdleConnsClosedWithoutTraffic: pooled connections are closed at the
// idle timeout even when no request comes, so none lingers in CLOSE_WAIT.
func TestIdleConnsClosedWithoutTraffic(t *testing.T) {
	closed := make(chan struct{}, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); err == io.EOF {
			closed <- struct{}{}
		}
	}()
	tr := &proxy.Transport{Addr: ln.Addr().String(), IdleTimeout: 200 * time.Millisecond}
	t.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequest("GET", "http://x/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	start := time.Now()
	select {
	case <-closed:
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Errorf("closed after %s, before the 200ms idle timeout", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the idle pooled connection was not closed within 5s of its 200ms idle timeout")
	}
}

// recorder is an Observer that keeps copies of what it saw.
type recorder struct {
	mu sync.Mutex
	ex []proxy.Exchange
}

func (r *recorder) Observe(e *proxy.Exchange) {
	r.mu.Lock()
	r.ex = append(r.ex, *e)
	r.mu.Unlock()
}

func (r *recorder) last(t *testing.T) proxy.Exchange {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ex) == 0 {
		t.Fatal("the observer saw nothing")
	}
	return r.ex[len(r.ex)-1]
}

// TestObserver: every request, answered or failed, reaches the Observer
// once, with the status the client saw, the backend, bytes and how it
// ended.
func TestObserver(t *testing.T) {
	m, err := backendtest.StartMisbehaving()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	u := &realUpstream{addr: m.Addr, pooled: &proxy.Transport{Addr: m.Addr},
		fresh: &http.Transport{DisableKeepAlives: true}}
	t.Cleanup(u.pooled.CloseIdleConnections)
	rec := &recorder{}
	_, srv := front(t, onePool{u}, proxy.Config{Observer: rec})
	for _, tc := range []struct {
		method, path string
		body         string
		status       int
		term         proxy.Termination
		bytesOut     int64
	}{
		{"GET", "/hello", "", 200, proxy.TermOK, int64(len("/hello\n"))},
		{"POST", "/post", "12345", 200, proxy.TermOK, int64(len("/post\n"))},
		{"GET", "/garbage", "", 502, proxy.TermBackendError, -1},
		{"GET", "/short-close", "", 502, proxy.TermBackendError, -1},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, body)
			req.Header.Set("User-Agent", "observer-test")
			r := do(t, newClient(t), req)
			if r.code != tc.status {
				t.Fatalf("status %d, want %d", r.code, tc.status)
			}
			e := rec.last(t)
			if e.Status != tc.status || e.Term != tc.term || e.Backend != "bad" || e.Method != tc.method ||
				e.URI != tc.path || e.UserAgent != "observer-test" || e.Attempts != 1 || e.Total <= 0 {
				t.Errorf("got %+v, want status %d term %s backend bad", e, tc.status, tc.term)
			}
			if tc.bytesOut >= 0 && e.BytesOut != tc.bytesOut {
				t.Errorf("bytes out %d, want %d", e.BytesOut, tc.bytesOut)
			}
			if tc.body != "" && e.BytesIn != int64(len(tc.body)) {
				t.Errorf("bytes in %d, want %d", e.BytesIn, len(tc.body))
			}
		})
	}
	t.Run("hold timeout", func(t *testing.T) {
		pool := newPool()
		rec := &recorder{}
		_, srv := front(t, pool, proxy.Config{Observer: rec, HoldTimeout: 50 * time.Millisecond})
		if r := get(t, newClient(t), srv.URL+"/x"); r.code != 503 {
			t.Fatalf("status %d, want 503", r.code)
		}
		e := rec.last(t)
		if e.Status != 503 || e.Term != proxy.TermHoldTimeout || e.Held < 50*time.Millisecond {
			t.Errorf("got %+v, want 503 hold_timeout held >= 50ms", e)
		}
	})
}
