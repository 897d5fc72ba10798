package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
	"github.com/batonproxy/baton/cmd/internal/soak"
	"github.com/batonproxy/baton/internal/wstest"
)

// tcpEcho is a TCP echo server: what lighttpd's mod_wstunnel forwards a
// WebSocket's messages to.
func tcpEcho(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestWebSocketLighttpdRestart: a WebSocket through baton to a real
// lighttpd (mod_wstunnel) does not hold baton's drain before a restart;
// a stop-start restart ends it first, with a close frame 1012 to the
// client (never a bare close or a reset), so the server stops at once
// instead of waiting for it; a new WebSocket works afterwards.
func TestWebSocketLighttpdRestart(t *testing.T) {
	port := tcpEcho(t)
	extra := wstunnelConf(port)
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{Extra: extra})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("web1", lt, "stop-start"))
	})
	open := func() *wstest.Conn {
		t.Helper()
		c, err := net.Dial("tcp", b.addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ws, err := wstest.Client(c, "site.test", "/ws")
		if err != nil {
			t.Fatal(err)
		}
		return ws
	}
	ws := open()
	for i := 0; i < 5; i++ {
		msg := fmt.Sprintf("hello %d", i)
		_ = ws.C.SetDeadline(time.Now().Add(5 * time.Second))
		if err := ws.WriteText(msg); err != nil {
			t.Fatal(err)
		}
		op, p, err := ws.Read()
		if err != nil || op != wstest.OpText || string(p) != msg {
			t.Fatalf("echo through lighttpd: op %d %q %v, want %q", op, p, err, msg)
		}
	}
	start := time.Now()
	out, errOut, code := b.ctl("restart", "web1", "--json")
	if code != 0 {
		t.Fatalf("restart: exit %d: %s %s", code, out, errOut)
	}
	var resp control.Response
	if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Restarts) != 1 {
		t.Fatalf("restart output (%v): %s", err, out)
	}
	t.Logf("stop-start with a WebSocket open: took %s, steps %+v", time.Since(start).Round(time.Millisecond), resp.Restarts[0].Steps)
	if d := resp.Restarts[0].Steps[0]; d.Name != "drain" || d.Duration > time.Second {
		t.Errorf("drain step %+v: an open WebSocket held the drain", d)
	}
	// baton ended the WebSocket before stopping lighttpd, which would
	// otherwise wait for it (graceful-shutdown-timeout, 8 s here).
	if d := resp.Restarts[0].Steps[1]; d.Name != "restart" || d.Duration > 5*time.Second {
		t.Errorf("restart step %+v: the stop waited for the WebSocket", d)
	}
	wantClose(t, ws, 1012, 15*time.Second)

	ws = open()
	_ = ws.C.SetDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteText("again"); err != nil {
		t.Fatal(err)
	}
	if op, p, err := ws.Read(); err != nil || string(p) != "again" {
		t.Fatalf("after the restart: op %d %q %v", op, p, err)
	}
	_ = ws.CloseFrame(1000)
}

// wantClose reads until a close frame with code, answers it, and then
// wants EOF: a clean close, not a reset.
func wantClose(t *testing.T, ws *wstest.Conn, code int, within time.Duration) {
	t.Helper()
	_ = ws.C.SetDeadline(time.Now().Add(within))
	for {
		op, p, err := ws.Read()
		if err != nil {
			t.Fatalf("waiting for a close frame %d: %v", code, err)
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
		t.Errorf("after the close handshake: %v, want EOF", err)
	}
}

// TestSoakWebSockets: `baton soak` with long-lived WebSocket probes (and
// HTTPS over h2) through baton to a real lighttpd (mod_wstunnel) while
// baton upgrades every 2 s and lighttpd is stop-started every 3 s: no
// request fails, no message is lost on a connection that stays open, and
// every connection that ends does so with a close frame.
func TestSoakWebSockets(t *testing.T) {
	port := tcpEcho(t)
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{Extra: wstunnelConf(port)})
	var site *tlsSite
	b := startBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, "", restartable("web1", lt, "stop-start")) + tlsTOML
	})
	tport := b.tlsAddr()[len("127.0.0.2:"):]
	figures := filepath.Join(t.TempDir(), "soak.json")
	out, errOut, code := runBaton(t, "soak", "--target", "https://127.0.0.2:"+tport+"/", "--path", "/small.txt",
		"--cacert", site.caPEM, "--h2", "--ws", "4", "--rate", "100", "--duration", "8s", "--socket", b.socket,
		"--upgrade-every", "2s", "--restart-every", "3s", "--json", figures)
	t.Logf("soak summary:\n%s", out)
	if code != 0 {
		t.Fatalf("soak: exit %d\n%s", code, errOut)
	}
	var rep soak.Report
	raw, err := os.ReadFile(figures)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("figures do not parse: %v", err)
	}
	ws := rep.WebSockets
	if ws == nil || ws.Echoed < 100 || ws.Lost != 0 || len(ws.Unexpected) != 0 || ws.Closes["1012"] == 0 {
		t.Errorf("WebSocket probes: %+v; want >= 100 echoed, none lost, no unexpected end, 1012 at the restarts", ws)
	}
}

func wstunnelConf(port int) string {
	return fmt.Sprintf(`server.modules += ("mod_wstunnel")
$HTTP["url"] =^ "/ws" {
    wstunnel.server = ( "" => (( "host" => "127.0.0.1", "port" => %d )) )
    wstunnel.frame-type = "text"
}
`, port)
}
