package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// fakeUpstream is one backend address as the proxy sees it.
type fakeUpstream struct {
	name   string
	addr   string
	pooled *http.Transport // keep-alive connections, for replayable requests
	fresh  *http.Transport // one connection per request, for the others
	pool   *fakePool

	inflight atomic.Int64
	picks    atomic.Int64
	lastRT   atomic.Int32 // 1: last Transport call asked for replayable, 2: not

	mu   sync.Mutex
	errs []error // what Done was called with, in order
}

func (u *fakeUpstream) Name() string { return u.name }
func (u *fakeUpstream) Addr() string { return u.addr }

func (u *fakeUpstream) Transport(replayable bool) http.RoundTripper {
	if replayable {
		u.lastRT.Store(1)
		return u.pooled
	}
	u.lastRT.Store(2)
	return u.fresh
}

func (u *fakeUpstream) Done(err error) {
	u.inflight.Add(-1)
	u.mu.Lock()
	u.errs = append(u.errs, err)
	u.mu.Unlock()
	if err != nil && u.pool.downOnDialError && isDialErr(err) {
		u.pool.setReady(u, false)
	}
}

func (u *fakeUpstream) doneErrs() []error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]error(nil), u.errs...)
}

func isDialErr(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// fakePool does round-robin over the upstreams marked ready.
type fakePool struct {
	// downOnDialError marks an upstream not ready when a connection to it
	// could not be made, as backends.Set does.
	downOnDialError bool

	mu      sync.Mutex
	ups     []*fakeUpstream
	ready   map[*fakeUpstream]bool
	next    int
	changed chan struct{} // closed and replaced when readiness changes
}

const unavailable = "fake pool: no upstream is ready"

func newPool() *fakePool {
	return &fakePool{ready: map[*fakeUpstream]bool{}, changed: make(chan struct{})}
}

// add registers an upstream for addr (host:port).
func (p *fakePool) add(t *testing.T, name, addr string, ready bool) *fakeUpstream {
	t.Helper()
	dialer := &net.Dialer{Timeout: time.Second}
	u := &fakeUpstream{
		name:   name,
		addr:   addr,
		pool:   p,
		pooled: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 8},
		fresh:  &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
	}
	t.Cleanup(u.pooled.CloseIdleConnections)
	t.Cleanup(u.fresh.CloseIdleConnections)
	p.mu.Lock()
	p.ups = append(p.ups, u)
	p.ready[u] = ready
	p.mu.Unlock()
	return u
}

// addServer starts a backend running h and registers it.
func (p *fakePool) addServer(t *testing.T, name string, h http.Handler, ready bool) *fakeUpstream {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return p.add(t, name, srv.Listener.Addr().String(), ready)
}

func (p *fakePool) setReady(u *fakeUpstream, ready bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ready[u] == ready {
		return
	}
	p.ready[u] = ready
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *fakePool) Pick(avoid proxy.Upstream) (proxy.Upstream, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.ups)
	fallback := -1
	for i := 0; i < n; i++ {
		j := (p.next + i) % n
		u := p.ups[j]
		if !p.ready[u] {
			continue
		}
		if avoid != nil && proxy.Upstream(u) == avoid {
			if fallback < 0 {
				fallback = j
			}
			continue
		}
		return p.take(j), nil
	}
	if fallback >= 0 {
		return p.take(fallback), nil
	}
	return nil, proxy.ErrNoUpstream
}

func (p *fakePool) take(j int) *fakeUpstream {
	u := p.ups[j]
	p.next = (j + 1) % len(p.ups)
	u.inflight.Add(1)
	u.picks.Add(1)
	return u
}

func (p *fakePool) Wait(ctx context.Context) error {
	p.mu.Lock()
	for _, r := range p.ready {
		if r {
			p.mu.Unlock()
			return nil
		}
	}
	ch := p.changed
	p.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *fakePool) Unavailable() string { return unavailable }

// balanced waits until every upstream had Done called once per pick.
func balanced(t *testing.T, ups ...*fakeUpstream) {
	t.Helper()
	for _, u := range ups {
		waitUntil(t, 2*time.Second, u.name+": Done called once per Pick", func() bool {
			return u.inflight.Load() == 0
		})
		if got, want := int64(len(u.doneErrs())), u.picks.Load(); got != want {
			t.Errorf("%s: Done calls: got %d, want %d (one per Pick)", u.name, got, want)
		}
	}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		<-tick.C
	}
}

// front starts the proxy under test.
func front(t *testing.T, pool proxy.Pool, cfg proxy.Config) (*proxy.Handler, *httptest.Server) {
	t.Helper()
	h := proxy.New(pool, cfg)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv
}

func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type result struct {
	code   int
	header http.Header
	body   string
	err    error
}

func do(t *testing.T, c *http.Client, req *http.Request) result {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{code: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

func get(t *testing.T, c *http.Client, url string) result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, c, req)
}

// goGet sends a GET in the background; the result arrives on the channel.
func goGet(t *testing.T, c *http.Client, url string) <-chan result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- result{code: resp.StatusCode, header: resp.Header, body: string(b), err: err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan result, d time.Duration) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("no response within %s", d)
		return result{}
	}
}

func text(s string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, s)
	}
}

// hijackClose reads the request, then closes the connection without an
// answer; seen counts the requests it got.
func hijackClose(t *testing.T, seen *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		_ = conn.Close()
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func wantStatus(t *testing.T, r result, want int) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("request: %v", r.err)
	}
	if r.code != want {
		t.Fatalf("status: got %d, want %d (body %q)", r.code, want, r.body)
	}
}

func wantPlainError(t *testing.T, r result, parts ...string) {
	t.Helper()
	if got, want := r.header.Get("Content-Type"), "text/plain; charset=utf-8"; got != want {
		t.Errorf("Content-Type: got %q, want %q", got, want)
	}
	for _, p := range parts {
		if !strings.Contains(r.body, p) {
			t.Errorf("body: got %q, want it to contain %q", r.body, p)
		}
	}
}

func TestForwardedHeaders(t *testing.T) {
	type seenReq struct {
		host, uri, xff, xfh, xfp string
	}
	seen := make(chan seenReq, 1)
	pool := newPool()
	up := pool.addServer(t, "a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- seenReq{
			host: r.Host, uri: r.RequestURI,
			xff: strings.Join(r.Header.Values("X-Forwarded-For"), ", "),
			xfh: r.Header.Get("X-Forwarded-Host"), xfp: r.Header.Get("X-Forwarded-Proto"),
		}
	}), true)
	_, fr := front(t, pool, proxy.Config{})
	c := newClient(t)

	tests := []struct {
		name    string
		host    string
		header  map[string]string
		wantXFF string
	}{
		{name: "no incoming XFF", host: "example.test", wantXFF: "127.0.0.1"},
		{name: "incoming XFF appended", host: "www.example.test:8443",
			header: map[string]string{"X-Forwarded-For": "203.0.113.7"}, wantXFF: "203.0.113.7, 127.0.0.1"},
		{name: "incoming XFF chain appended", host: "example.test",
			header: map[string]string{"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}, wantXFF: "203.0.113.7, 198.51.100.1, 127.0.0.1"},
		{name: "client's X-Forwarded-Host and -Proto replaced", host: "example.test",
			header: map[string]string{"X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "https"}, wantXFF: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, fr.URL+"/some/path?q=1&r=2", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tt.host
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			wantStatus(t, do(t, c, req), http.StatusOK)
			var got seenReq
			select {
			case got = <-seen:
			default:
				t.Fatal("backend did not see the request")
			}
			if got.host != tt.host {
				t.Errorf("Host: got %q, want %q", got.host, tt.host)
			}
			if want := "/some/path?q=1&r=2"; got.uri != want {
				t.Errorf("request URI: got %q, want %q", got.uri, want)
			}
			if got.xff != tt.wantXFF {
				t.Errorf("X-Forwarded-For: got %q, want %q", got.xff, tt.wantXFF)
			}
			if got.xfh != tt.host {
				t.Errorf("X-Forwarded-Host: got %q, want %q", got.xfh, tt.host)
			}
			if got.xfp != "http" {
				t.Errorf("X-Forwarded-Proto: got %q, want %q", got.xfp, "http")
			}
		})
	}
	balanced(t, up)
}

func TestRoundRobin(t *testing.T) {
	pool := newPool()
	a := pool.addServer(t, "a", text("a"), true)
	b := pool.addServer(t, "b", text("b"), true)
	_, fr := front(t, pool, proxy.Config{})
	c := newClient(t)

	const n = 10
	got := map[string]int{}
	for i := 0; i < n; i++ {
		r := get(t, c, fr.URL+"/")
		wantStatus(t, r, http.StatusOK)
		got[r.body]++
	}
	for _, name := range []string{"a", "b"} {
		if got[name] != n/2 {
			t.Errorf("requests answered by %s: got %d, want %d (all: %v)", name, got[name], n/2, got)
		}
	}
	balanced(t, a, b)
}

func TestDeadUpstream(t *testing.T) {
	tests := []struct {
		name          string
		downOnDialErr bool
		want          []string
	}{
		// The pool keeps offering it: the attempts bound the loop.
		{name: "stays ready", want: []string{"gave up after 5 attempts"}},
		// The pool takes it out: the hold timeout bounds the loop.
		{name: "marked down", downOnDialErr: true, want: []string{"last error from dead-upstream"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := newPool()
			pool.downOnDialError = tt.downOnDialErr
			up := pool.add(t, "dead-upstream", deadAddr(t), true)
			h, fr := front(t, pool, proxy.Config{HoldTimeout: 200 * time.Millisecond})
			c := newClient(t)

			start := time.Now()
			r := get(t, c, fr.URL+"/")
			took := time.Since(start)
			wantStatus(t, r, http.StatusBadGateway)
			wantPlainError(t, r, append([]string{"dead-upstream", "connection refused"}, tt.want...)...)
			if took > time.Second {
				t.Errorf("took %s, want under 1s", took)
			}
			if tt.downOnDialErr && took < 200*time.Millisecond {
				t.Errorf("took %s, want at least the hold timeout 200ms", took)
			}
			if !tt.downOnDialErr {
				if got, want := h.Stats().Retries, int64(proxy.DefaultMaxAttempts-1); got != want {
					t.Errorf("Retries: got %d, want %d", got, want)
				}
				if got, want := up.picks.Load(), int64(proxy.DefaultMaxAttempts); got != want {
					t.Errorf("attempts: got %d, want %d", got, want)
				}
			}
			balanced(t, up)
			for i, err := range up.doneErrs() {
				if !isDialErr(err) {
					t.Errorf("Done #%d: got %v, want a dial error", i, err)
				}
			}
		})
	}
}

func TestHoldUntilReady(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "late", text("ok"), false)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: 10 * time.Second})
	c := newClient(t)

	ch := goGet(t, c, fr.URL+"/")
	waitUntil(t, 2*time.Second, "request held", func() bool { return h.Stats().Held == 1 })
	select {
	case r := <-ch:
		t.Fatalf("request answered while no upstream was ready: %d %q %v", r.code, r.body, r.err)
	default:
	}
	pool.setReady(up, true)
	r := await(t, ch, 2*time.Second)
	wantStatus(t, r, http.StatusOK)
	if r.body != "ok" {
		t.Errorf("body: got %q, want %q", r.body, "ok")
	}
	st := h.Stats()
	if st.Held != 0 {
		t.Errorf("Held: got %d, want 0", st.Held)
	}
	if st.HoldTimeouts != 0 {
		t.Errorf("HoldTimeouts: got %d, want 0", st.HoldTimeouts)
	}
	balanced(t, up)
}

func TestHoldTimeout(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "never", text("ok"), false)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: 100 * time.Millisecond})
	c := newClient(t)

	start := time.Now()
	r := get(t, c, fr.URL+"/")
	took := time.Since(start)
	wantStatus(t, r, http.StatusServiceUnavailable)
	wantPlainError(t, r, "no backend ready within 100ms", unavailable)
	if got, want := r.header.Get("Retry-After"), "1"; got != want {
		t.Errorf("Retry-After: got %q, want %q", got, want)
	}
	if took < 100*time.Millisecond || took > time.Second {
		t.Errorf("took %s, want about the hold timeout 100ms", took)
	}
	st := h.Stats()
	if st.HoldTimeouts != 1 {
		t.Errorf("HoldTimeouts: got %d, want 1", st.HoldTimeouts)
	}
	if st.Held != 0 {
		t.Errorf("Held: got %d, want 0", st.Held)
	}
	if got := up.picks.Load(); got != 0 {
		t.Errorf("picks of an upstream never ready: got %d, want 0", got)
	}
}

func TestMaxHeld(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "late", text("ok"), false)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: 10 * time.Second, MaxHeld: 1})
	c := newClient(t)

	first := goGet(t, c, fr.URL+"/first")
	waitUntil(t, 2*time.Second, "first request held", func() bool { return h.Stats().Held == 1 })

	start := time.Now()
	r := get(t, c, fr.URL+"/second")
	took := time.Since(start)
	wantStatus(t, r, http.StatusServiceUnavailable)
	wantPlainError(t, r, "max_held 1")
	if r.header.Get("Retry-After") == "" {
		t.Error("Retry-After: missing")
	}
	if took > 500*time.Millisecond {
		t.Errorf("second request took %s, want an answer at once", took)
	}

	pool.setReady(up, true)
	wantStatus(t, await(t, first, 2*time.Second), http.StatusOK)
	if got := h.Stats().Held; got != 0 {
		t.Errorf("Held: got %d, want 0", got)
	}
	balanced(t, up)
}

func TestPostNotReplayed(t *testing.T) {
	var closerSeen atomic.Int64
	pool := newPool()
	closer := pool.addServer(t, "closer", hijackClose(t, &closerSeen), true)
	other := pool.addServer(t, "other", text("ok"), true)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: time.Second})
	c := newClient(t)

	req, err := http.NewRequest(http.MethodPost, fr.URL+"/order", strings.NewReader("buy=1"))
	if err != nil {
		t.Fatal(err)
	}
	r := do(t, c, req)
	wantStatus(t, r, http.StatusBadGateway)
	wantPlainError(t, r, "closer", "not retried", "POST")
	if got := closerSeen.Load(); got != 1 {
		t.Errorf("requests the closing backend saw: got %d, want 1", got)
	}
	if got := other.picks.Load(); got != 0 {
		t.Errorf("requests sent to the other backend: got %d, want 0", got)
	}
	if got := h.Stats().Retries; got != 0 {
		t.Errorf("Retries: got %d, want 0", got)
	}
	balanced(t, closer, other)
}

func TestGetRetried(t *testing.T) {
	var closerSeen atomic.Int64
	pool := newPool()
	closer := pool.addServer(t, "closer", hijackClose(t, &closerSeen), true)
	good := pool.addServer(t, "good", text("from good"), true)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: time.Second})
	c := newClient(t)

	r := get(t, c, fr.URL+"/")
	wantStatus(t, r, http.StatusOK)
	if r.body != "from good" {
		t.Errorf("body: got %q, want %q", r.body, "from good")
	}
	if got := closerSeen.Load(); got != 1 {
		t.Errorf("requests the closing backend saw: got %d, want 1", got)
	}
	if got := h.Stats().Retries; got != 1 {
		t.Errorf("Retries: got %d, want 1", got)
	}
	balanced(t, closer, good)
}

func TestPostRetriedAfterDialError(t *testing.T) {
	pool := newPool()
	dead := pool.add(t, "dead", deadAddr(t), true)
	type got struct {
		body []byte
		cl   int64
	}
	seen := make(chan got, 1)
	echo := pool.addServer(t, "echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("backend: reading body: %v", err)
		}
		seen <- got{b, r.ContentLength}
		_, _ = w.Write(b)
	}), true)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: time.Second})
	c := newClient(t)

	body := bytes.Repeat([]byte("0123456789abcdef-"), 20000) // 340 kB
	req, err := http.NewRequest(http.MethodPost, fr.URL+"/upload", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r := do(t, c, req)
	wantStatus(t, r, http.StatusOK)
	if !bytes.Equal([]byte(r.body), body) {
		t.Errorf("echoed body: got %d bytes, want the %d bytes sent", len(r.body), len(body))
	}
	select {
	case g := <-seen:
		if !bytes.Equal(g.body, body) {
			t.Errorf("body at the backend: got %d bytes, want the %d bytes sent intact", len(g.body), len(body))
		}
		if g.cl != int64(len(body)) {
			t.Errorf("Content-Length at the backend: got %d, want %d", g.cl, len(body))
		}
	default:
		t.Fatal("backend did not see the request")
	}
	if got := dead.picks.Load(); got != 1 {
		t.Errorf("attempts on the dead upstream: got %d, want 1", got)
	}
	if got := h.Stats().Retries; got != 1 {
		t.Errorf("Retries: got %d, want 1", got)
	}
	balanced(t, dead, echo)
}

func TestStats(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "late", text("ok"), false)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: 100 * time.Millisecond})
	c := newClient(t)

	if st := h.Stats(); st.HeldTotal != 0 || st.MaxHold != 0 || st.LastHold != nil {
		t.Fatalf("fresh Stats: got %+v, want zero", st)
	}

	// A request that is held, then served.
	h2 := proxy.New(pool, proxy.Config{HoldTimeout: 10 * time.Second})
	fr2 := httptest.NewServer(h2)
	t.Cleanup(fr2.Close)
	ch := goGet(t, c, fr2.URL+"/")
	waitUntil(t, 2*time.Second, "request held", func() bool { return h2.Stats().Held == 1 })
	pool.setReady(up, true)
	wantStatus(t, await(t, ch, 2*time.Second), http.StatusOK)
	st := h2.Stats()
	if st.HeldTotal != 1 {
		t.Errorf("HeldTotal: got %d, want 1", st.HeldTotal)
	}
	if st.MaxHold <= 0 {
		t.Errorf("MaxHold: got %s, want > 0", st.MaxHold)
	}
	if st.LastHold == nil {
		t.Fatal("LastHold: got nil, want the episode")
	}
	if st.LastHold.Requests != 1 {
		t.Errorf("LastHold.Requests: got %d, want 1", st.LastHold.Requests)
	}
	if st.LastHold.Longest != st.MaxHold {
		t.Errorf("LastHold.Longest: got %s, want MaxHold %s", st.LastHold.Longest, st.MaxHold)
	}

	// On h: one held request served, then one that times out after 100ms.
	pool.setReady(up, false)
	ch = goGet(t, c, fr.URL+"/")
	waitUntil(t, 2*time.Second, "request held", func() bool { return h.Stats().Held == 1 })
	pool.setReady(up, true)
	wantStatus(t, await(t, ch, 2*time.Second), http.StatusOK)
	first := h.Stats()
	if first.HeldTotal != 1 || first.MaxHold <= 0 {
		t.Errorf("after one held request: got HeldTotal %d, MaxHold %s, want 1 and > 0", first.HeldTotal, first.MaxHold)
	}
	pool.setReady(up, false)
	wantStatus(t, get(t, c, fr.URL+"/"), http.StatusServiceUnavailable)
	second := h.Stats()
	if second.HeldTotal != 2 {
		t.Errorf("HeldTotal: got %d, want 2", second.HeldTotal)
	}
	if second.HoldTimeouts != 1 {
		t.Errorf("HoldTimeouts: got %d, want 1", second.HoldTimeouts)
	}
	if second.MaxHold < 100*time.Millisecond || second.MaxHold < first.MaxHold {
		t.Errorf("MaxHold: got %s, want at least 100ms and at least the earlier %s", second.MaxHold, first.MaxHold)
	}
	if second.LastHold == nil || second.LastHold == first.LastHold {
		t.Errorf("LastHold: got %+v, want a new episode", second.LastHold)
	}
	balanced(t, up)
}

// TestTransportChoice checks which requests count as replayable and so may
// travel on a pooled connection; the others must get a fresh one.
func TestTransportChoice(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "a", text("ok"), true)
	_, fr := front(t, pool, proxy.Config{})
	c := newClient(t)

	tests := []struct {
		method string
		body   string
		header string // set to "1" if not empty
		want   bool
	}{
		{method: http.MethodGet, want: true},
		{method: http.MethodHead, want: true},
		{method: http.MethodOptions, want: true},
		{method: http.MethodPost, body: "x=1", want: false},
		{method: http.MethodPost, want: false},
		{method: http.MethodPost, header: "Idempotency-Key", want: true},
		{method: http.MethodPost, header: "X-Idempotency-Key", want: true},
		// The body cannot be sent twice, key or not.
		{method: http.MethodPost, body: "x=1", header: "Idempotency-Key", want: false},
		{method: http.MethodGet, body: "x=1", want: false},
	}
	for _, tt := range tests {
		name := tt.method
		if tt.body != "" {
			name += " with body"
		}
		if tt.header != "" {
			name += " with " + tt.header
		}
		t.Run(name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, err := http.NewRequest(tt.method, fr.URL+"/", body)
			if err != nil {
				t.Fatal(err)
			}
			if tt.header != "" {
				req.Header.Set(tt.header, "1")
			}
			up.lastRT.Store(0)
			wantStatus(t, do(t, c, req), http.StatusOK)
			got := up.lastRT.Load()
			if got == 0 {
				t.Fatal("Transport was not called")
			}
			if got == 1 != tt.want {
				t.Errorf("replayable: got %v, want %v", got == 1, tt.want)
			}
		})
	}
	balanced(t, up)
}

func TestHeldClientGone(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "never", text("ok"), false)
	h, fr := front(t, pool, proxy.Config{HoldTimeout: 10 * time.Second})
	c := newClient(t)

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fr.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitUntil(t, 2*time.Second, "request held", func() bool { return h.Stats().Held == 1 })
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("request: got a response, want the client's cancellation")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("client did not return after cancelling")
	}
	// The proxy stops holding a request whose client went away.
	waitUntil(t, 2*time.Second, "held request released", func() bool { return h.Stats().Held == 0 })
	st := h.Stats()
	if st.HoldTimeouts != 0 {
		t.Errorf("HoldTimeouts: got %d, want 0 (the client left, nothing timed out)", st.HoldTimeouts)
	}
	if st.HeldTotal != 1 {
		t.Errorf("HeldTotal: got %d, want 1", st.HeldTotal)
	}
	if got := up.picks.Load(); got != 0 {
		t.Errorf("picks: got %d, want 0", got)
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestErrorLogOncePerBurst(t *testing.T) {
	var buf syncBuffer
	pool := newPool()
	_, fr := front(t, pool, proxy.Config{
		HoldTimeout:      20 * time.Millisecond,
		ErrorLogInterval: time.Hour,
		Logger:           slog.New(slog.NewTextHandler(&buf, nil)),
	})
	c := newClient(t)

	const n = 3
	for i := 0; i < n; i++ {
		wantStatus(t, get(t, c, fr.URL+fmt.Sprintf("/%d", i)), http.StatusServiceUnavailable)
	}
	count := func(s string) int { return strings.Count(buf.String(), s) }
	if got := count("proxy error"); got != 1 {
		t.Errorf("proxy error lines after %d hold timeouts: got %d, want 1\n%s", n, got, buf.String())
	}
	if got := count("status=503"); got != 1 {
		t.Errorf("status=503 lines: got %d, want 1", got)
	}
	if got := count("requests were held"); got != n {
		t.Errorf("hold episode lines: got %d, want %d", got, n)
	}

	// Another kind of error is logged on its own.
	up := pool.add(t, "dead", deadAddr(t), true)
	wantStatus(t, get(t, c, fr.URL+"/"), http.StatusBadGateway)
	if got := count("proxy error"); got != 2 {
		t.Errorf("proxy error lines after a new kind of error: got %d, want 2\n%s", got, buf.String())
	}
	if got := count("status=502"); got != 1 {
		t.Errorf("status=502 lines: got %d, want 1", got)
	}
	balanced(t, up)
}

// TestUpgrade checks that a 101 Switching Protocols answer gives the client
// a two-way connection to the backend, and that the upstream's turn ends
// once, at the switch.
func TestUpgrade(t *testing.T) {
	pool := newPool()
	up := pool.addServer(t, "ws", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_, _ = io.Copy(conn, brw)
	}), true)
	_, fr := front(t, pool, proxy.Config{})

	conn, err := net.Dial("tcp", fr.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status: got %d, want %d", resp.StatusCode, http.StatusSwitchingProtocols)
	}
	for _, msg := range []string{"ping", "pong!"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo: got %q, %v, want %q", buf, err, msg)
		}
	}
	// A switched connection is not a request in flight: it must not hold
	// a backend's drain before a restart.
	if got := up.inflight.Load(); got != 0 {
		t.Errorf("in flight during the session: got %d, want 0", got)
	}
	_ = conn.Close()
	balanced(t, up)
}
