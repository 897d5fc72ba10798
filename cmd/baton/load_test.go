package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
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
)

// smallBody is testdata/htdocs/small.txt.
var smallBody = strings.Repeat("x", 99) + "\n"

// slowBody is what /cgi-bin/slow.sh answers: 64 numbered lines of 64 bytes.
func slowBody() string {
	var b strings.Builder
	for i := 0; i < 64; i++ {
		fmt.Fprintf(&b, "%063d\n", i)
	}
	return b.String()
}

// loadSpec says how many clients of each kind to run.
type loadSpec struct {
	GoGET int    // net/http clients: keep-alive, GET
	Raw   int    // hand-written HTTP/1.1 keep-alive clients that never retry
	Post  int    // net/http clients: keep-alive, POST with a unique X-Request-Id
	Path  string // GET path (default /small.txt)
	Post2 string // POST path (default /cgi-bin/post.sh)
}

// load runs clients against a target until stop. Every request is checked:
// status 200 and the exact body. Nothing is retried by this code: a raw
// client reconnects only after a response that said Connection: close.
type load struct {
	addr string
	spec loadSpec
	tr   *http.Transport
	stop chan struct{}
	wg   sync.WaitGroup

	ok    [3]atomic.Int64 // by kind: 0 GET, 1 raw, 2 POST
	mu    sync.Mutex
	fails []string
	nfail atomic.Int64
	posts map[string]bool // ids of POSTs answered 200
}

var kindNames = [3]string{"go-get", "raw-keepalive", "go-post"}

// maxLoad bounds any load run, whatever the test does.
const maxLoad = 3 * time.Minute

func startLoad(t testing.TB, addr string, spec loadSpec) *load {
	t.Helper()
	if spec.Path == "" {
		spec.Path = "/small.txt"
	}
	if spec.Post2 == "" {
		spec.Post2 = "/cgi-bin/post.sh"
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	l := &load{addr: addr, spec: spec, stop: make(chan struct{}), posts: map[string]bool{}, tr: tr}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	deadline := time.Now().Add(maxLoad)
	for i := 0; i < spec.GoGET; i++ {
		l.run(deadline, func() { l.goGet(client) })
	}
	for i := 0; i < spec.Post; i++ {
		l.run(deadline, func() { l.goPost(client) })
	}
	for i := 0; i < spec.Raw; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.raw(deadline)
		}()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) run(deadline time.Time, f func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for time.Now().Before(deadline) {
			select {
			case <-l.stop:
				return
			default:
			}
			f()
		}
	}()
}

func (l *load) fail(kind int, format string, args ...any) {
	l.nfail.Add(1)
	msg := kindNames[kind] + ": " + fmt.Sprintf(format, args...)
	l.mu.Lock()
	if len(l.fails) < 20 {
		l.fails = append(l.fails, time.Now().Format("15:04:05.000")+" "+msg)
	}
	l.mu.Unlock()
	time.Sleep(time.Millisecond) // a failing client must not spin
}

func (l *load) goGet(c *http.Client) {
	resp, err := c.Get("http://" + l.addr + l.spec.Path)
	if err != nil {
		l.fail(0, "%v", err)
		return
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || (l.spec.Path == "/small.txt" && string(b) != smallBody) {
		l.fail(0, "status %d, %d bytes, %v: %.200s", resp.StatusCode, len(b), err, b)
		return
	}
	l.ok[0].Add(1)
}

func (l *load) goPost(c *http.Client) {
	idb := make([]byte, 8)
	_, _ = rand.Read(idb)
	id := hex.EncodeToString(idb)
	body := strings.Repeat("p", 512)
	req, _ := http.NewRequest(http.MethodPost, "http://"+l.addr+l.spec.Post2, strings.NewReader(body))
	req.Header.Set("X-Request-Id", id)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.Do(req)
	if err != nil {
		l.fail(2, "%v", err)
		return
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf("id=%s len=%d ", id, len(body))
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(b), want) {
		l.fail(2, "status %d, %v: %.200s", resp.StatusCode, err, b)
		return
	}
	l.mu.Lock()
	l.posts[id] = true
	l.mu.Unlock()
	l.ok[2].Add(1)
}

// raw is an HTTP/1.1 keep-alive client that never retries: any error is a
// failure. It reconnects only after a response with Connection: close.
func (l *load) raw(deadline time.Time) {
	var (
		c  net.Conn
		br *bufio.Reader
	)
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	req := []byte("GET " + l.spec.Path + " HTTP/1.1\r\nHost: baton.test\r\nUser-Agent: raw-keepalive\r\n\r\n")
	for time.Now().Before(deadline) {
		select {
		case <-l.stop:
			return
		default:
		}
		if c == nil {
			var err error
			c, err = net.DialTimeout("tcp", l.addr, 5*time.Second)
			if err != nil {
				l.fail(1, "dial: %v", err)
				c = nil
				continue
			}
			br = bufio.NewReader(c)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(req); err != nil {
			l.fail(1, "write: %v", err)
			c.Close()
			c = nil
			continue
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			l.fail(1, "read response: %v", err)
			c.Close()
			c = nil
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || (l.spec.Path == "/small.txt" && string(b) != smallBody) {
			l.fail(1, "status %d, %v: %.200s", resp.StatusCode, err, b)
			c.Close()
			c = nil
			continue
		}
		l.ok[1].Add(1)
		if resp.Close {
			c.Close()
			c = nil
		}
	}
}

// total is the number of successful requests so far.
func (l *load) total() int64 { return l.ok[0].Load() + l.ok[1].Load() + l.ok[2].Load() }

// progress waits until n more requests of every running kind succeeded:
// proof that the current state serves.
func (l *load) progress(t testing.TB, n int64) {
	t.Helper()
	var start [3]int64
	for i := range start {
		start[i] = l.ok[i].Load()
	}
	counts := [3]int{l.spec.GoGET, l.spec.Raw, l.spec.Post}
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more successful requests of each kind", n), func() bool {
		for i := range start {
			if counts[i] > 0 && l.ok[i].Load()-start[i] < n {
				return false
			}
		}
		return true
	})
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	// Idle keep-alive connections would keep old generations draining
	// until their deadline.
	l.tr.CloseIdleConnections()
}

// check stops the load and asserts zero failures and progress of every
// kind.
func (l *load) check(t testing.TB) {
	t.Helper()
	l.halt()
	var summary []string
	counts := [3]int{l.spec.GoGET, l.spec.Raw, l.spec.Post}
	for i, n := range counts {
		if n == 0 {
			continue
		}
		summary = append(summary, fmt.Sprintf("%s %d ok", kindNames[i], l.ok[i].Load()))
		if l.ok[i].Load() == 0 {
			t.Errorf("%s clients made no successful request", kindNames[i])
		}
	}
	t.Logf("load: %s; %d failed", strings.Join(summary, ", "), l.nfail.Load())
	if n := l.nfail.Load(); n != 0 {
		t.Errorf("%d failed requests, want 0; first ones:\n%s", n, strings.Join(l.fails, "\n"))
	}
}

// postIDs returns the ids of POSTs answered 200.
func (l *load) postIDs() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]bool, len(l.posts))
	for k := range l.posts {
		out[k] = true
	}
	return out
}

// checkPostsOnce asserts that every POST answered 200 was processed
// exactly once by the backends, and nothing else was processed.
func checkPostsOnce(t testing.TB, answered map[string]bool, processed []string) {
	t.Helper()
	seen := map[string]int{}
	for _, id := range processed {
		seen[id]++
	}
	var dup, missing, extra []string
	for id, n := range seen {
		if n > 1 {
			dup = append(dup, fmt.Sprintf("%s x%d", id, n))
		}
		if !answered[id] {
			extra = append(extra, id)
		}
	}
	for id := range answered {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	if len(dup) > 0 {
		t.Errorf("%d POSTs processed more than once: %.300v", len(dup), dup)
	}
	if len(missing) > 0 {
		t.Errorf("%d POSTs answered 200 but never processed: %.300v", len(missing), missing)
	}
	if len(extra) > 0 {
		t.Errorf("%d POSTs processed but not answered 200: %.300v", len(extra), extra)
	}
	t.Logf("POSTs: %d answered, %d processed, each exactly once", len(answered), len(processed))
}

// startSlow sends slowRequest through baton at addr and waits until the
// backend s runs it (counting baton's in-flight requests would not do
// under load: other requests satisfy it).
func startSlow(t testing.TB, addr string, s *backendtest.Server, secs int) <-chan error {
	t.Helper()
	n := s.SlowStarts()
	ch := slowRequest(addr, secs)
	waitFor(t, 10*time.Second, "the slow request to run at the backend", func() bool { return s.SlowStarts() > n })
	return ch
}

// slowRequest starts GET /cgi-bin/slow.sh?secs through addr and delivers
// an error (nil when the full body arrived) on the channel.
func slowRequest(addr string, secs int) <-chan error {
	out := make(chan error, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://%s/cgi-bin/slow.sh?%d", addr, secs))
		if err != nil {
			out <- err
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			out <- fmt.Errorf("slow request: body after %d bytes: %w", len(b), err)
		case resp.StatusCode != 200:
			out <- fmt.Errorf("slow request: status %d: %.200s", resp.StatusCode, b)
		case !bytes.Equal(b, []byte(slowBody())):
			out <- fmt.Errorf("slow request: body of %d bytes differs from the expected %d", len(b), len(slowBody()))
		default:
			out <- nil
		}
	}()
	return out
}
