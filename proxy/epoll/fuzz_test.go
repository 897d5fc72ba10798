package epoll_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/proxy"
	"github.com/batonproxy/baton/proxy/epoll"
)

// recorder is a backend that writes down every request it receives, in a
// normal form (request line, Host, sorted header lines, body), and answers
// each with its target as the body.
type recorder struct {
	ln net.Listener
	mu sync.Mutex
	rq []string
	wg sync.WaitGroup
}

func newRecorder(t testing.TB) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.wg.Wait()
	})
	return r
}

func (r *recorder) serve() {
	defer r.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				body, err := io.ReadAll(req.Body)
				if err != nil {
					return
				}
				var b strings.Builder
				fmt.Fprintf(&b, "%s %s %s\nHost: %s\n", req.Method, req.RequestURI, req.Proto, req.Host)
				var lines []string
				for k, vs := range req.Header {
					for i, v := range vs {
						lines = append(lines, fmt.Sprintf("%s[%d]: %s", k, i, v))
					}
				}
				sort.Strings(lines)
				b.WriteString(strings.Join(lines, "\n"))
				fmt.Fprintf(&b, "\nbody %q (length %d, transfer-encoding %q, trailer %v)", body, req.ContentLength, req.TransferEncoding, req.Trailer)
				r.mu.Lock()
				// A request without Host gets the backend's address.
				r.rq = append(r.rq, strings.ReplaceAll(b.String(), r.ln.Addr().String(), "<backend>"))
				r.mu.Unlock()
				if strings.HasPrefix(req.RequestURI, "/chunked") {
					// A chunked answer (HTTP/1.0 clients get it decoded).
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(req.RequestURI), req.RequestURI)
					continue
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.RequestURI), req.RequestURI)
			}
		}()
	}
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rq := r.rq
	r.rq = nil
	return rq
}

// fuzzUpstream mirrors backends.Backend: proxy.Transport for replayable
// requests, net/http's Transport without compression for the others.
type fuzzUpstream struct {
	addr     string
	pooled   *proxy.Transport
	fresh    *http.Transport
	inflight atomic.Int64
}

func (u *fuzzUpstream) Name() string { return "rec" }
func (u *fuzzUpstream) Addr() string { return u.addr }
func (u *fuzzUpstream) Transport(replay bool) http.RoundTripper {
	if replay {
		return u.pooled
	}
	return u.fresh
}
func (u *fuzzUpstream) Done(error) { u.inflight.Add(-1) }

// Options and Epoch make it a proxy.ConnUpstream with the settings of its
// transports.
func (u *fuzzUpstream) Options() proxy.UpstreamOptions {
	return proxy.UpstreamOptions{ResponseHeaderTimeout: 5 * time.Second, ExpectContinueTimeout: fuzzExpectContinue}
}
func (u *fuzzUpstream) Epoch() uint64 { return 0 }

const fuzzExpectContinue = 10 * time.Millisecond

type onePool struct{ u *fuzzUpstream }

func (p onePool) Pick(proxy.Upstream) (proxy.Upstream, error) {
	p.u.inflight.Add(1)
	return p.u, nil
}
func (p onePool) Wait(context.Context) error { return nil }
func (p onePool) Unavailable() string        { return "" }

// side is one plane in front of its own recorder.
type side struct {
	name string
	addr string
	rec  *recorder
	up   *fuzzUpstream
}

func newSide(t testing.TB, engine string) *side {
	rec := newRecorder(t)
	std := &http.Transport{DisableCompression: true, ExpectContinueTimeout: fuzzExpectContinue}
	fresh := std.Clone()
	fresh.DisableKeepAlives = true
	up := &fuzzUpstream{addr: rec.ln.Addr().String(), fresh: fresh,
		pooled: &proxy.Transport{Addr: rec.ln.Addr().String(), Fallback: std, ResponseHeaderTimeout: 5 * time.Second}}
	t.Cleanup(up.pooled.CloseIdleConnections)
	t.Cleanup(fresh.CloseIdleConnections)
	h := proxy.New(onePool{up}, proxy.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	if engine == "epoll" {
		s := &epoll.Server{Handler: h, Loops: 1, ErrorLog: quietLog}
		go func() {
			defer close(done)
			_ = s.Serve(ln)
		}()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = s.Drain(ctx)
			<-done
		})
	} else {
		// As handoff.Server configures net/http.
		s := &http.Server{Handler: h, MaxHeaderBytes: epoll.DefaultMaxHeaderBytes, ReadHeaderTimeout: epoll.DefaultReadHeaderTimeout, ErrorLog: quietLog}
		go func() {
			defer close(done)
			_ = s.Serve(ln)
		}()
		t.Cleanup(func() {
			s.Close()
			<-done
		})
	}
	return &side{name: engine, addr: ln.Addr().String(), rec: rec, up: up}
}

// sentinel follows every input: its answer (or the connection closing)
// tells that everything before it was answered.
const sentinel = "GET /__end HTTP/1.1\r\nHost: end\r\nConnection: close\r\n\r\n"

// exchange sends raw and returns the statuses of the answers and what
// reached the backend.
func (s *side) exchange(t testing.TB, raw []byte) (statuses []string, atBackend []string) {
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	go func() {
		_, _ = c.Write(append(append([]byte(nil), raw...), sentinel...))
	}()
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				statuses = append(statuses, "timeout")
			}
			break
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		st := fmt.Sprint(resp.StatusCode)
		if resp.StatusCode < 300 {
			// The backend's answers must arrive alike (framing decoded).
			st = fmt.Sprintf("%d %s %q", resp.StatusCode, resp.Proto, body)
		}
		statuses = append(statuses, st)
		if err != nil || string(body) == "/__end" {
			break
		}
	}
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for s.up.inflight.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return statuses, s.rec.take()
}

var quietLog = newQuietLog()

// FuzzDifferential sends the same raw bytes to the epoll plane and to the
// net/http plane: the answers' statuses and what reaches the backend must
// be the same. Seeds are in testdata/fuzz/FuzzDifferential (smuggling
// shapes, framing, odd headers and targets, pipelining).
func FuzzDifferential(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	ep, std := newSide(f, "epoll"), newSide(f, "stdlib")
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 4096 {
			return
		}
		es, eb := ep.exchange(t, raw)
		ss, sb := std.exchange(t, raw)
		if strings.Join(es, ",") != strings.Join(ss, ",") {
			t.Errorf("input %q:\nstatuses: epoll %v, stdlib %v", raw, es, ss)
		}
		if !equal(eb, sb) {
			t.Errorf("input %q:\nat the backend through epoll:\n%s\nthrough stdlib:\n%s", raw, strings.Join(eb, "\n--\n"), strings.Join(sb, "\n--\n"))
		}
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func newQuietLog() *log.Logger { return log.New(io.Discard, "", 0) }
