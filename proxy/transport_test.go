package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer accepts connections and runs handle on each; it counts them.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int64
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

func newRawServer(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func get(t *testing.T, tr http.RoundTripper, url, method string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestTransportReusesConnections(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte("part1"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			fmt.Fprintf(w, "hello %s %s", r.Method, r.Host)
		}
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	tr := &Transport{Addr: srv.Listener.Addr().String(), Fallback: http.DefaultTransport}
	t.Cleanup(tr.CloseIdleConnections)
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/", "hello GET " + srv.Listener.Addr().String()},
		{"GET", "/chunked", "part1part2"},
		{"HEAD", "/", ""},
		{"GET", "/empty", ""},
		{"OPTIONS", "/", "hello OPTIONS " + srv.Listener.Addr().String()},
		{"GET", "/", "hello GET " + srv.Listener.Addr().String()},
	} {
		resp, body, err := get(t, tr, srv.URL+tc.path, tc.method)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if body != tc.want {
			t.Errorf("%s %s: body %q, want %q (status %d)", tc.method, tc.path, body, tc.want, resp.StatusCode)
		}
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("connections used for 6 sequential requests: got %d, want 1", got)
	}
}

// TestTransportServerClosedIdle: a pooled connection the server closed
// while it was idle is noticed and not used.
func TestTransportServerClosedIdle(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		// Answer one request, then close the connection.
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	old := peekAfter
	peekAfter = 0 // check every pooled connection
	t.Cleanup(func() { peekAfter = old })
	tr := &Transport{Addr: srv.ln.Addr().String()}
	url := "http://" + srv.ln.Addr().String() + "/"
	for i := 0; i < 3; i++ {
		if _, body, err := get(t, tr, url, "GET"); err != nil || body != "ok" {
			t.Fatalf("request %d: %q %v", i, body, err)
		}
		// Wait until the server's close has reached the pooled connection.
		deadline := time.Now().Add(5 * time.Second)
		for {
			tr.mu.Lock()
			closed := len(tr.idle) == 1 && !tr.idle[0].usable()
			tr.mu.Unlock()
			if closed {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the server's close never showed on the pooled connection")
			}
			time.Sleep(time.Millisecond)
		}
	}
	if got := srv.conns.Load(); got != 3 {
		t.Errorf("connections: got %d, want 3 (a closed one must not be reused)", got)
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("body cut short closes the connection", func(t *testing.T) {
		srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
			for {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
			}
		})
		tr := &Transport{Addr: srv.ln.Addr().String()}
		req, _ := http.NewRequest("GET", "http://x/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 3)
		io.ReadFull(resp.Body, buf)
		resp.Body.Close()
		if _, body, err := get(t, tr, "http://x/", "GET"); err != nil || body != "0123456789" {
			t.Fatalf("second request: %q %v", body, err)
		}
		if got := srv.conns.Load(); got != 2 {
			t.Errorf("connections: got %d, want 2 (a half-read one must not be reused)", got)
		}
	})
	t.Run("response header timeout", func(t *testing.T) {
		srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.Copy(io.Discard, br) // never answer
		})
		tr := &Transport{Addr: srv.ln.Addr().String(), ResponseHeaderTimeout: 100 * time.Millisecond}
		start := time.Now()
		_, _, err := get(t, tr, "http://x/", "GET")
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("got %v, want a timeout", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %s", d)
		}
	})
	t.Run("context cancel", func(t *testing.T) {
		srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.Copy(io.Discard, br)
		})
		tr := &Transport{Addr: srv.ln.Addr().String()}
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		done := make(chan error, 1)
		go func() {
			_, err := tr.RoundTrip(req)
			done <- err
		}()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("RoundTrip did not return after cancel")
		}
	})
	t.Run("dial error", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		tr := &Transport{Addr: addr}
		_, _, err := get(t, tr, "http://x/", "GET")
		if !isDialError(err) {
			t.Errorf("got %v, want a dial error", err)
		}
	})
	t.Run("informational responses are skipped", func(t *testing.T) {
		srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
		})
		tr := &Transport{Addr: srv.ln.Addr().String()}
		resp, body, err := get(t, tr, "http://x/", "GET")
		if err != nil || resp.StatusCode != 200 || body != "done" {
			t.Errorf("got %v %q %v", resp, body, err)
		}
	})
}

func TestTransportFallback(t *testing.T) {
	var used atomic.Int64
	fb := RoundTripperFunc(func(r *http.Request) (*http.Response, error) {
		used.Add(1)
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("fallback")), Request: r}, nil
	})
	tr := &Transport{Addr: "127.0.0.1:1", Fallback: fb}
	post, _ := http.NewRequest("POST", "http://x/", strings.NewReader("body"))
	up, _ := http.NewRequest("GET", "http://x/ws", nil)
	up.Header.Set("Upgrade", "websocket")
	for _, r := range []*http.Request{post, up} {
		resp, err := tr.RoundTrip(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if got := used.Load(); got != 2 {
		t.Errorf("fallback used %d times, want 2 (a body and an upgrade)", got)
	}
}

// RoundTripperFunc adapts a function to http.RoundTripper.
type RoundTripperFunc func(*http.Request) (*http.Response, error)

func (f RoundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestTransportRetriesClosedPooledConn: a pooled connection that turns out
// to be closed (nothing read back) is replaced by a new one, once, and the
// request succeeds; when the server is gone altogether the error is a
// dial error and the pool is emptied.
func TestTransportRetriesClosedPooledConn(t *testing.T) {
	old := peekAfter
	peekAfter = time.Hour // never look before use
	t.Cleanup(func() { peekAfter = old })
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// then close, unannounced
	})
	tr := &Transport{Addr: srv.ln.Addr().String()}
	for i := 0; i < 3; i++ {
		if _, body, err := get(t, tr, "http://x/", "GET"); err != nil || body != "ok" {
			t.Fatalf("request %d: %q %v", i, body, err)
		}
	}
	srv.ln.Close()
	if _, _, err := get(t, tr, "http://x/", "GET"); !isDialError(err) {
		t.Errorf("with the server gone: got %v, want a dial error", err)
	}
	tr.mu.Lock()
	n := len(tr.idle)
	tr.mu.Unlock()
	if n != 0 {
		t.Errorf("idle connections after the server went away: %d, want 0", n)
	}
}
