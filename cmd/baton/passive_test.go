package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/cmd/internal/control"
)

// TestPassiveDetection: passive_fails 5xx answers in a row take the
// backend out for passive_cooldown, on both planes (the epoll loop
// reports each attempt through proxy.PassiveUpstream, as the net/http
// plane's transport does); an answer below 500 clears the count.
func TestPassiveDetection(t *testing.T) { forEngines(t, testPassiveDetection) }

func testPassiveDetection(t *testing.T) {
	var boom atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			boom.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "",
			backendTOML("app", srv.URL, "passive_fails = 3", `passive_cooldown = "1m"`))
	})
	c := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) int {
		t.Helper()
		resp, err := c.Get("http://" + b.addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	up := func(st control.Status) bool { return st.Backends[0].State == "up" }
	b.waitStatus(10*time.Second, "the backend up", up)
	for i, tc := range []struct {
		path string
		want int
	}{
		{"/boom", 500}, {"/boom", 500}, {"/ok", 200}, {"/boom", 500}, {"/boom", 500},
	} {
		if got := get(tc.path); got != tc.want {
			t.Fatalf("request %d %s: got %d, want %d", i, tc.path, got, tc.want)
		}
	}
	if st := b.status(); !up(st) {
		t.Fatalf("after two 500s in a row: state %q (%s), want up", st.Backends[0].State, st.Backends[0].LastError)
	}
	if got := get("/boom"); got != 500 {
		t.Fatalf("third 500 in a row: got %d", got)
	}
	st := b.status().Backends[0]
	if st.State != "down" || !strings.Contains(st.LastError, "status 500 (3 in a row") || st.CooldownUntil == nil {
		t.Fatalf("after three 500s in a row: state %q, last error %q, cooldown %v; want down by passive detection", st.State, st.LastError, st.CooldownUntil)
	}
	// Out: the request is held (the hold timeout is long), and the backend
	// never sees it.
	short := &http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := short.Get("http://" + b.addr() + "/boom"); err == nil {
		resp.Body.Close()
		t.Errorf("while cooling down: got %d, want the request held", resp.StatusCode)
	}
	if n := boom.Load(); n != 5 {
		t.Errorf("requests for /boom at the backend: %d, want 5", n)
	}
}
