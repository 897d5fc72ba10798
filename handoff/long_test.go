package handoff_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/internal/wstest"
)

// proxied starts a backend with a WebSocket echo on /ws, a server-sent
// event stream on /events and "ok" elsewhere, and a handoff.Server
// proxying to it with httputil.ReverseProxy.
func proxied(t *testing.T, longDrain time.Duration) *handoff.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/ws", wstest.Echo)
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	backend := httptest.NewServer(mux)
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &handoff.Server{Handler: rp, ErrorLog: log.New(io.Discard, "", 0), LongDrainTimeout: longDrain, CloseLinger: 500 * time.Millisecond}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 0)
		defer cancel()
		_ = s.Drain(ctx)
		<-exited
	})
	waitUntil(t, 2*time.Second, "Serve started", func() bool { return s.Addr() != nil })
	return s
}

func dialWS(t *testing.T, s *handoff.Server) *wstest.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ws, err := wstest.Client(c, "example.test", "/ws")
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

func echo(t *testing.T, ws *wstest.Conn, msg string) {
	t.Helper()
	_ = ws.C.SetDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteText(msg); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	op, p, err := ws.Read()
	if err != nil || op != wstest.OpText || string(p) != msg {
		t.Fatalf("echo of %q: op %d %q %v", msg, op, p, err)
	}
}

// wantClose reads until a close frame with code, answers it, and then
// wants EOF: a clean close, not a reset.
func wantClose(t *testing.T, ws *wstest.Conn, code int, within time.Duration) {
	t.Helper()
	_ = ws.C.SetDeadline(time.Now().Add(within))
	for {
		op, p, err := ws.Read()
		if err != nil {
			t.Fatalf("waiting for close frame %d: %v", code, err)
		}
		if op != wstest.OpClose {
			continue
		}
		if g := wstest.CloseCode(p); g != code {
			t.Errorf("close code: got %d, want %d", g, code)
		}
		break
	}
	_ = ws.CloseFrame(code)
	if _, _, err := ws.Read(); !errors.Is(err, io.EOF) {
		t.Errorf("after the close handshake: %v, want EOF (a reset is %v)", err, syscall.ECONNRESET)
	}
}

// TestServerLongDrain: at Drain's deadline idle connections close, while a
// WebSocket and an event stream go on; at the long deadline the WebSocket
// gets a close frame 1001 and then a clean close.
func TestServerLongDrain(t *testing.T) {
	const short, long = 200 * time.Millisecond, 1500 * time.Millisecond
	s := proxied(t, long)
	ws := dialWS(t, s)
	echo(t, ws, "before")
	idle := dial(t, s)
	if got := idle.get("/x"); got.body != "ok" {
		t.Fatalf("GET /x: %+v", got)
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := bufio.NewReader(resp.Body)
	if line, err := events.ReadString('\n'); err != nil || line != "data: 0\n" {
		t.Fatalf("first event: %q %v", line, err)
	}

	drained := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), short)
		defer cancel()
		drained <- s.Drain(ctx)
	}()
	idle.wantEOF(2 * time.Second)
	if took := time.Since(start); took < short-20*time.Millisecond {
		t.Errorf("idle connection closed after %s, before the drain deadline %s", took, short)
	}
	for i := 0; time.Since(start) < short+300*time.Millisecond; i++ {
		echo(t, ws, fmt.Sprintf("during %d", i))
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := events.ReadString('\n'); err != nil {
		t.Fatalf("event stream after the drain deadline: %v", err)
	}
	wantClose(t, ws, handoff.CloseGoingAway, 5*time.Second)
	if took := time.Since(start); took < long-50*time.Millisecond {
		t.Errorf("WebSocket closed after %s, before the long deadline %s", took, long)
	}
	select {
	case err := <-drained:
		var de *handoff.DeadlineError
		if !errors.As(err, &de) || de.Closed < 2 {
			t.Errorf("Drain: %v; want a DeadlineError for the idle connection and the stream at least", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return")
	}
	if _, err := io.Copy(io.Discard, events); err == nil {
		t.Error("event stream ended cleanly; want it cut at the long deadline")
	}
}

// TestServerWebSocketBackendGone: a backend that drops a WebSocket without
// a close frame (as when it is stopped) leaves the client a close frame
// 1012 and a clean close; a WebSocket closed by the client is not given
// one more.
func TestServerWebSocketBackendGone(t *testing.T) {
	s := proxied(t, time.Minute)
	ws := dialWS(t, s)
	echo(t, ws, "hello")
	if err := ws.WriteText("die"); err != nil {
		t.Fatal(err)
	}
	wantClose(t, ws, handoff.CloseServiceRestart, 5*time.Second)

	ws = dialWS(t, s)
	echo(t, ws, "hello")
	if err := ws.CloseFrame(1000); err != nil {
		t.Fatal(err)
	}
	op, p, err := ws.Read()
	if err != nil || op != wstest.OpClose || wstest.CloseCode(p) != 1000 {
		t.Fatalf("close reply: op %d code %d %v; want the backend's 1000", op, wstest.CloseCode(p), err)
	}
	if op, _, err := ws.Read(); !errors.Is(err, io.EOF) {
		t.Errorf("after the close handshake: op %d, %v; want EOF", op, err)
	}
	waitUntil(t, 2*time.Second, "no connections left", func() bool { return s.Connections() == 0 })
}

// TestServerFinalStopWebSocket: at a final stop (CloseIdle, no successor)
// a WebSocket gets its close frame (1001) at once, not at the long
// deadline.
func TestServerFinalStopWebSocket(t *testing.T) {
	s := proxied(t, time.Hour)
	ws := dialWS(t, s)
	echo(t, ws, "hello")
	s.CloseIdle()
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		drained <- s.Drain(ctx)
	}()
	wantClose(t, ws, handoff.CloseGoingAway, 2*time.Second)
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("Drain: %v, want nil (the WebSocket closed cleanly)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the WebSocket closed")
	}
}
