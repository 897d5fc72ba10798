package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/internal/wstest"
)

// wsClient keeps a WebSocket open through baton and sends numbered
// messages, each of which must come back before the next is sent. A close
// frame from baton ends the connection (answered, then EOF is required:
// no reset) and the client reconnects; any other end is a failure.
type wsClient struct {
	name string
	dial func() (net.Conn, error)

	echoed atomic.Int64
	mu     sync.Mutex
	closes map[int]int // close codes received
	fails  []string
	// in flight when a close frame came instead of the echo: not lost on
	// a connection that stayed open, but on one that ended
	unanswered int
}

func (c *wsClient) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.fails) < 10 {
		c.fails = append(c.fails, time.Now().Format("15:04:05.000 ")+c.name+": "+fmt.Sprintf(format, args...))
	}
}

// run talks until stop is closed, then closes with 1000.
func (c *wsClient) run(stop <-chan struct{}, die <-chan struct{}) {
	for n := 0; ; {
		conn, err := c.dial()
		if err != nil {
			c.fail("dial: %v", err)
			return
		}
		ws, err := wstest.Client(conn, "site.test", "/ws")
		if err != nil {
			c.fail("handshake: %v", err)
			conn.Close()
			return
		}
		for open := true; open; {
			select {
			case <-stop:
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				_ = ws.CloseFrame(1000)
				if op, _, err := ws.Read(); err != nil || op != wstest.OpClose {
					c.fail("closing: op %d, %v; want the close reply", op, err)
				}
				conn.Close()
				return
			case <-die:
				die = nil
				_ = ws.WriteText("die")
			default:
			}
			n++
			msg := fmt.Sprintf("%s-%d", c.name, n)
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if err := ws.WriteText(msg); err != nil {
				c.fail("send %s: %v", msg, err)
				conn.Close()
				return
			}
			for {
				op, p, err := ws.Read()
				if err != nil {
					c.fail("waiting for %s: %v (no close frame)", msg, err)
					conn.Close()
					return
				}
				if op == wstest.OpClose {
					code := wstest.CloseCode(p)
					_ = ws.CloseFrame(code)
					if _, _, err := ws.Read(); !errors.Is(err, io.EOF) {
						c.fail("after close frame %d: %v, want EOF", code, err)
					}
					conn.Close()
					c.mu.Lock()
					c.closes[code]++
					c.unanswered++
					c.mu.Unlock()
					open = false
					break
				}
				if string(p) == msg {
					c.echoed.Add(1)
					break
				}
				c.fail("sent %s, got op %d %q", msg, op, p)
				conn.Close()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func (c *wsClient) closeCount(code int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closes[code]
}

// TestWebSocketUpgrades keeps WebSockets (plain and over TLS) open through
// baton to an echo backend while baton is upgraded three times: every
// message sent is echoed on connections that stay open; the old
// generations keep their WebSockets past drain_timeout and end them at
// long_drain_timeout with a close frame 1001 (never a reset); a backend
// that drops a WebSocket leaves the client a close frame 1012. Plain
// requests go on meanwhile.
func TestWebSocketUpgrades(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("/ws", wstest.Echo)
	mux.HandleFunc("/small.txt", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, smallBody) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	backend := httptest.NewServer(mux)
	defer backend.Close()

	var site *tlsSite
	b := newBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		cfg := batonConfig(dir, "long_drain_timeout = \"3s\"", backendTOML("echo", backend.URL)) + tlsTOML
		return strings.Replace(cfg, `drain_timeout = "10s"`, `drain_timeout = "1s"`, 1)
	})
	b.start()
	addr, tlsAddr := b.addr(), b.tlsAddr()
	l := startLoad(t, addr, loadSpec{GoGET: 2, Raw: 2})

	stop, die := make(chan struct{}), make(chan struct{})
	var clients []*wsClient
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		c := &wsClient{name: fmt.Sprintf("ws%d", i), closes: map[int]int{}}
		c.dial = func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
		if i%2 == 1 {
			c.name = fmt.Sprintf("wss%d", i)
			c.dial = func() (net.Conn, error) {
				return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tlsAddr, site.clientConfig("site.test"))
			}
		}
		clients = append(clients, c)
		var d <-chan struct{}
		if i == 0 {
			d = die
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(stop, d)
		}()
	}
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer halt()
	progress := func(n int64) {
		t.Helper()
		start := make([]int64, len(clients))
		for i, c := range clients {
			start[i] = c.echoed.Load()
		}
		waitFor(t, 30*time.Second, fmt.Sprintf("%d more echoes on every WebSocket", n), func() bool {
			for i, c := range clients {
				if c.echoed.Load()-start[i] < n {
					return false
				}
			}
			return true
		})
	}
	progress(20)
	pid := b.pid()
	for i := 1; i <= 3; i++ {
		b.signal(syscall.SIGHUP)
		pid = b.waitNewPID(pid)
		progress(20)
	}
	// Every WebSocket started on the first generation, so each ends with
	// 1001 at its generation's long deadline and reconnects.
	waitFor(t, 30*time.Second, "every WebSocket to get a close frame 1001", func() bool {
		for _, c := range clients {
			if c.closeCount(1001) == 0 {
				return false
			}
		}
		return true
	})
	progress(20)
	close(die)
	waitFor(t, 10*time.Second, "a close frame 1012 after the backend dropped a WebSocket", func() bool {
		return clients[0].closeCount(1012) == 1
	})
	progress(20)
	halt()
	l.check(t)

	var total int64
	for _, c := range clients {
		total += c.echoed.Load()
		c.mu.Lock()
		t.Logf("%s: %d echoed, closes %v, %d in flight at a close", c.name, c.echoed.Load(), c.closes, c.unanswered)
		for code := range c.closes {
			if code != 1001 && code != 1012 {
				t.Errorf("%s: close code %d, want only 1001 and 1012", c.name, code)
			}
		}
		for _, f := range c.fails {
			t.Error(f)
		}
		c.mu.Unlock()
	}
	t.Logf("%d messages echoed on %d WebSockets across 3 upgrades", total, len(clients))
	// With every WebSocket closed, every old generation exits.
	waitFor(t, 20*time.Second, "old generations to exit", func() bool { return len(b.processes()) == 1 })
}
