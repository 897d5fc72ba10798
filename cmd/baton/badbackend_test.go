package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// rawClient is one keep-alive client connection that sends requests by
// hand and reads the answers in order, as a browser or wrk would.
type rawClient struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{c: c, br: bufio.NewReader(c)}
}

// do sends raw and returns the status and the body.
func (rc *rawClient) do(t *testing.T, raw string) (int, string, http.Header) {
	t.Helper()
	_ = rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(rc.c, raw); err != nil {
		t.Fatalf("send: %v", err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatalf("no response to %q: %v", strings.SplitN(raw, "\r\n", 2)[0], err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// TestMisbehavingBackend runs the real baton in front of a backend that
// breaks HTTP in the ways an application server can: it over-sends,
// answers garbage, stalls, lies about lengths, sends huge headers. Each
// client must get its own answer or a clear error, baton must say whose
// fault it was, and it must go on serving.
func TestMisbehavingBackend(t *testing.T) { forEngines(t, testMisbehavingBackend) }

func testMisbehavingBackend(t *testing.T) {
	m, err := backendtest.StartMisbehaving()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", backendTOML("app", m.URL, `read_timeout = "500ms"`))
	})
	addr := b.addr()

	t.Run("over-sent response never reaches another client", func(t *testing.T) {
		for _, path := range []string{"/oversend", "/oversend-late"} {
			a, c := dialRaw(t, addr), dialRaw(t, addr)
			for i := 0; i < 10; i++ {
				if code, body, _ := a.do(t, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 || body != "HELLO" {
					t.Fatalf("%s round %d: A got %d %q", path, i, code, body)
				}
				if path == "/oversend-late" {
					// The unsolicited response arrives while the pooled
					// connection is idle (one that arrives after the next
					// request was sent cannot be told from its answer).
					waitFor(t, 5*time.Second, "the late response", func() bool { return m.Hits(path+"#late") == i+1 })
				}
				want := fmt.Sprintf("/b%d\n", i)
				if code, body, _ := c.do(t, fmt.Sprintf("GET /b%d HTTP/1.1\r\nHost: x\r\n\r\n", i)); code != 200 || body != want {
					t.Fatalf("%s round %d: B got %d %q, want %q (another client's response)", path, i, code, body, want)
				}
			}
		}
	})

	t.Run("bad responses: one attempt, 502 naming the backend", func(t *testing.T) {
		for _, path := range []string{"/garbage", "/http09", "/bad-status", "/huge-header", "/many-1xx", "/headers-close", "/short-close"} {
			before := m.Hits(path)
			code, body, _ := dialRaw(t, addr).do(t, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if code != http.StatusBadGateway || !strings.Contains(body, "backend app") {
				t.Errorf("%s: got %d %q, want 502 naming backend app", path, code, body)
			}
			if got := m.Hits(path) - before; got != 1 {
				t.Errorf("%s: sent to the backend %d times, want 1", path, got)
			}
		}
	})

	t.Run("stalled body: header at once, cut at read_timeout", func(t *testing.T) {
		rc := dialRaw(t, addr)
		start := time.Now()
		io.WriteString(rc.c, "GET /stall-headers HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = rc.c.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatalf("no header: %v", err)
		}
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Errorf("header took %s; want it as soon as the backend sent it", d)
		}
		_, err = io.ReadAll(resp.Body)
		if err == nil {
			t.Error("stalled body ended without error")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("stalled response lasted %s with read_timeout 500ms", d)
		}
	})

	t.Run("malformed chunked body is the client's fault", func(t *testing.T) {
		for _, chunk := range []string{"zz\r\n", "-5\r\n", "fffffffffffffffffffff\r\n", "3\nabc\n0\n\n"} {
			code, body, _ := dialRaw(t, addr).do(t, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+chunk)
			if code != http.StatusBadRequest || strings.Contains(body, "backend") {
				t.Errorf("chunk %q: got %d %q, want 400 not blaming the backend", chunk, code, body)
			}
		}
		found := false
		for _, line := range strings.Split(b.log(), "\n") {
			if strings.Contains(line, `msg="client error"`) && strings.Contains(line, "status=400") && strings.Contains(line, "malformed request body") {
				found = true
			}
		}
		if !found {
			t.Errorf("baton log has no client error line:\n%s", tail(b.log(), 3000))
		}
	})

	// After all that, baton serves as before.
	if code, body, _ := dialRaw(t, addr).do(t, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 || body != "/after\n" {
		t.Errorf("a good request after the bad ones: %d %q", code, body)
	}
}
