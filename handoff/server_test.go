package handoff_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/handoff"
)

// serve starts a handoff.Server running h on a loopback port; the channel
// gets what Serve returned.
func serve(t *testing.T, h http.Handler) (*handoff.Server, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &handoff.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		done <- s.Serve(ln)
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
	return s, done
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

// client is one raw keep-alive connection.
type client struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dial(t *testing.T, s *handoff.Server) *client {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &client{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// send writes a request without reading the answer.
func (c *client) send(path string, header ...string) {
	c.t.Helper()
	req := "GET " + path + " HTTP/1.1\r\nHost: test.example\r\n" + strings.Join(header, "") + "\r\n"
	if _, err := io.WriteString(c.conn, req); err != nil {
		c.t.Fatalf("writing request: %v", err)
	}
}

type answer struct {
	code  int
	close bool // Connection: close
	body  string
}

// read reads one response.
func (c *client) read() answer {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("reading body: %v", err)
	}
	_ = resp.Body.Close()
	return answer{code: resp.StatusCode, close: resp.Close, body: string(b)}
}

func (c *client) get(path string) answer {
	c.t.Helper()
	c.send(path)
	return c.read()
}

// wantEOF checks that the server closes the connection within d.
func (c *client) wantEOF(d time.Duration) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	n, err := c.br.Read(make([]byte, 1))
	if err == nil {
		c.t.Fatalf("read: got %d bytes, want EOF", n)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("read: connection still open after %s, want EOF", d)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "connection reset") {
		c.t.Fatalf("read: got %v, want EOF", err)
	}
}

// wantOpen checks that the connection stays open, with nothing to read,
// for d.
func (c *client) wantOpen(d time.Duration) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	n, err := c.br.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("read: got %d bytes, err %v, want a timeout (connection open and quiet)", n, err)
	}
}

func wantAnswer(t *testing.T, got, want answer) {
	t.Helper()
	if got != want {
		t.Errorf("response: got %+v, want %+v", got, want)
	}
}

func wantDeadlineError(t *testing.T, err error, s *handoff.Server, closed int) {
	t.Helper()
	var de *handoff.DeadlineError
	if !errors.As(err, &de) {
		t.Fatalf("Drain: got %v, want a *handoff.DeadlineError", err)
	}
	if de.Closed != closed {
		t.Errorf("DeadlineError.Closed: got %d, want %d", de.Closed, closed)
	}
	if got, want := de.Addr, s.Addr().String(); got != want {
		t.Errorf("DeadlineError.Addr: got %q, want %q", got, want)
	}
}

func TestServerDrainKeepAlive(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	const slowBody = "slow response body, all of it"
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, slowBody)
	})
	s, served := serve(t, mux)

	idle := dial(t, s)
	wantAnswer(t, idle.get("/"), answer{code: 200, body: "ok"})
	busy := dial(t, s)
	busy.send("/slow")
	select {
	case <-entered:
	case <-time.After(2 * time.Second):
		t.Fatal("slow handler not entered")
	}
	if got := s.Connections(); got != 2 {
		t.Errorf("Connections: got %d, want 2", got)
	}

	s.StopAccepting()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: got %v, want nil after StopAccepting", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return after StopAccepting")
	}
	if c, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Error("dial after StopAccepting: connected, want refused")
	}

	// The request in flight completes fully, and its response, the first
	// written while draining, closes its connection.
	close(release)
	wantAnswer(t, busy.read(), answer{code: 200, close: true, body: slowBody})
	busy.wantEOF(2 * time.Second)

	// The next request on an idle keep-alive connection is answered, with
	// Connection: close, and then the server closes the connection.
	wantAnswer(t, idle.get("/"), answer{code: 200, close: true, body: "ok"})
	idle.wantEOF(2 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Drain(ctx); err != nil {
		t.Errorf("Drain: got %v, want nil", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Drain took %s with every connection closed, want it at once", took)
	}
	if got := s.Connections(); got != 0 {
		t.Errorf("Connections: got %d, want 0", got)
	}
}

func TestServerDrainIdleAtDeadline(t *testing.T) {
	s, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	c := dial(t, s)
	wantAnswer(t, c.get("/"), answer{code: 200, body: "ok"})

	const deadline = 400 * time.Millisecond
	s.StopAccepting()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- s.Drain(ctx) }()

	// Before the deadline the idle connection is left alone.
	c.wantOpen(100 * time.Millisecond)
	select {
	case err := <-drained:
		t.Fatalf("Drain returned %v before the deadline, with an idle connection open", err)
	default:
	}

	var err error
	select {
	case err = <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return at the deadline")
	}
	if took := time.Since(start); took < deadline-50*time.Millisecond {
		t.Errorf("Drain returned after %s, want about the deadline %s", took, deadline)
	}
	wantDeadlineError(t, err, s, 1)
	c.wantEOF(2 * time.Second)
}

func TestServerDrainUpgraded(t *testing.T) {
	handlerDone := make(chan struct{})
	s, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		defer close(handlerDone)
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		// Echo until the connection is closed.
		_, _ = io.Copy(conn, brw)
	}))
	c := dial(t, s)
	c.send("/ws", "Connection: Upgrade\r\n", "Upgrade: websocket\r\n")
	if got := c.read(); got.code != http.StatusSwitchingProtocols {
		t.Fatalf("status: got %d, want %d", got.code, http.StatusSwitchingProtocols)
	}
	if _, err := io.WriteString(c.conn, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_ = c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(c.br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: got %q, %v, want %q", buf, err, "ping")
	}
	waitUntil(t, 2*time.Second, "upgraded connection counted once", func() bool { return s.Connections() == 1 })

	const deadline = 300 * time.Millisecond
	s.LongDrainTimeout = deadline // no longer than the others here
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err := s.Drain(ctx)
	if took := time.Since(start); took < deadline-50*time.Millisecond {
		t.Errorf("Drain returned after %s, want about the deadline %s", took, deadline)
	}
	wantDeadlineError(t, err, s, 1)
	c.wantEOF(2 * time.Second)
	select {
	case <-handlerDone:
	case <-time.After(2 * time.Second):
		t.Fatal("upgrade handler still running after Drain")
	}
	waitUntil(t, 2*time.Second, "no connections left", func() bool { return s.Connections() == 0 })
}

func TestServerDrainNothing(t *testing.T) {
	t.Run("serving, no connections", func(t *testing.T) {
		s, served := serve(t, http.NotFoundHandler())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := s.Drain(ctx); err != nil {
			t.Errorf("Drain: got %v, want nil", err)
		}
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Errorf("Drain took %s, want it at once", took)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: got %v, want nil", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Serve did not return after Drain")
		}
	})
	t.Run("never served", func(t *testing.T) {
		s := &handoff.Server{Handler: http.NotFoundHandler()}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Drain(ctx); err != nil {
			t.Errorf("Drain: got %v, want nil", err)
		}
		if s.Addr() != nil {
			t.Errorf("Addr: got %v, want nil", s.Addr())
		}
	})
}

// TestServerUpgradeCountedOnce: a connection whose Upgrade request is being
// served but not (yet) hijacked is one connection, not two.
func TestServerUpgradeCountedOnce(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	s, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release // e.g. the proxy waiting for a backend's answer
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(func() { close(release) })
	c := dial(t, s)
	c.send("/ws", "Connection: Upgrade\r\n", "Upgrade: websocket\r\n")
	select {
	case <-entered:
	case <-time.After(2 * time.Second):
		t.Fatal("handler not entered")
	}
	if got := s.Connections(); got != 1 {
		t.Errorf("Connections: got %d, want 1", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	wantDeadlineError(t, s.Drain(ctx), s, 1)
}

// TestServerInFlightResponseCarriesClose: the response to a request that
// was in flight when draining began is the connection's next response, so
// it carries Connection: close and the connection closes after it, instead
// of lingering idle until the drain deadline.
func TestServerInFlightResponseCarriesClose(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	s, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	c := dial(t, s)
	c.send("/slow")
	select {
	case <-entered:
	case <-time.After(2 * time.Second):
		t.Fatal("handler not entered")
	}
	s.StopAccepting()
	close(release)
	wantAnswer(t, c.read(), answer{code: 200, close: true, body: "done"})
	c.wantEOF(time.Second)
}

// failFirst fails its first n Accepts with err, then accepts for real.
type failFirst struct {
	net.Listener
	err error
	n   atomic.Int32
}

func (l *failFirst) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestServerSurvivesAcceptErrors is issue 7, item 4: net/http's Serve
// retries only the accept errors it deems temporary; after ENOBUFS or
// ENOMEM it returned, and the listener was served no more. Every accept
// error is now retried after a pause, logged once per episode.
func TestServerSurvivesAcceptErrors(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOBUFS, syscall.ENOMEM, syscall.EMFILE} {
		t.Run(errno.Error(), func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := &failFirst{Listener: inner, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
			ln.n.Store(3)
			var logs strings.Builder
			var mu sync.Mutex
			s := &handoff.Server{
				Handler:  http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
				ErrorLog: log.New(io.Discard, "", 0),
				Logger:   slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logs.Write(p) }), nil)),
			}
			done := make(chan error, 1)
			go func() { done <- s.Serve(ln) }()
			c := &http.Client{Timeout: 10 * time.Second}
			resp, err := c.Get("http://" + inner.Addr().String() + "/")
			if err != nil {
				select {
				case err := <-done:
					t.Fatalf("Serve returned %v", err)
				default:
				}
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 0)
			defer cancel()
			_ = s.Drain(ctx)
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve after Drain: %v, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not return after Drain")
			}
			mu.Lock()
			out := logs.String()
			mu.Unlock()
			if strings.Count(out, "cannot accept connections") != 1 || strings.Count(out, "accepting connections again") != 1 {
				t.Errorf("want one line when accepting failed and one when it worked again:\n%s", out)
			}
		})
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
