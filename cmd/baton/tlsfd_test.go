package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/backends/backendtest"
)

// TestTLSOutOfFDs is issue 21, item 4: out of file descriptors, an HTTPS
// client that got the last one completed its handshake on the epoll plane
// and was closed with no answer and nothing logged (the loop's copy of the
// descriptor failed). Now it waits until descriptors free up and is
// served, as on the net/http plane, and on the epoll plane the wait is
// logged once when it begins and once when it ends.
func TestTLSOutOfFDs(t *testing.T) { forEngines(t, testTLSOutOfFDs) }

func testTLSOutOfFDs(t *testing.T) {
	epoll := testEngine == "epoll"
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	// No health checks during the episode (each would need a descriptor
	// too), and the idle clients below keep theirs until the test closes
	// them.
	backend := fmt.Sprintf("[[backend]]\nname = \"web1\"\nurl = %q\nhealth_interval = \"1m\"\n", lt.URL)
	var site *tlsSite
	b := newBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, `read_header_timeout = "60s"`, backend) + tlsTOML
	})
	b.start()
	addr := b.tlsAddr()
	pid := b.pid()
	cfg := site.clientConfig("site.test")
	cfg.MinVersion, cfg.NextProtos = tls.VersionTLS13, []string{"http/1.1"}
	get := func(c *tls.Conn) (string, error) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "GET /small.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"); err != nil {
			return "", err
		}
		b, err := io.ReadAll(c)
		return string(b), err
	}
	// Once the first health check is over, baton's descriptors are its
	// listeners', its loops', its files' and its clients'.
	last, same := -1, 0
	waitFor(t, 10*time.Second, "baton's descriptors to settle", func() bool {
		if n := openFDs(t, pid); n != last {
			last, same = n, 0
		}
		same++
		return same >= 20
	})
	limit := uint64(openFDs(t, pid) + 16)
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil) })
	// Idle clients, one at a time, until baton holds every descriptor:
	// the client that waits in the backlog then is the HTTPS one.
	failedAccept := func() bool {
		return strings.Contains(b.log(), `"cannot accept connections; retrying until it works" pid=`+fmt.Sprint(pid)) &&
			strings.Contains(b.log(), "listener="+addr)
	}
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	var waiting net.Conn
	for waiting == nil {
		if len(idle) > 64 {
			t.Fatalf("%d idle clients and baton has %d of %d descriptors", len(idle), openFDs(t, pid), limit)
		}
		n := openFDs(t, pid)
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "baton to accept a client or fail to", func() bool { return failedAccept() || openFDs(t, pid) > n })
		if failedAccept() {
			waiting = c
		} else {
			idle = append(idle, c)
		}
	}
	// The HTTPS client's handshake starts now. accept4 takes a descriptor
	// before it looks for a connection, so the failed accept may have come
	// after the client's own: baton answers its ClientHello then (and the
	// copy for the loop is what fails); otherwise it waits in the backlog
	// until one idle client goes.
	type result struct {
		resp string
		err  error
	}
	done := make(chan result, 1)
	answered := make(chan struct{})
	go func() {
		c := tls.Client(&firstRead{Conn: waiting, c: answered}, cfg)
		defer c.Close()
		resp, err := get(c)
		done <- result{resp, err}
	}()
	select {
	case <-answered:
	case <-time.After(3 * time.Second):
		idle[0].Close()
		idle = idle[1:]
	}
	if epoll {
		waitFor(t, 10*time.Second, "the HTTPS client to wait for a descriptor", func() bool {
			select {
			case r := <-done:
				t.Fatalf("the HTTPS client got %q, %v while baton was out of descriptors", r.resp, r.err)
			default:
			}
			return strings.Contains(b.log(), "cannot move TLS connections into the loops")
		})
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	select {
	case r := <-done:
		if !strings.HasPrefix(r.resp, "HTTP/1.1 200") {
			t.Errorf("the HTTPS client got %q, %v; want 200", r.resp, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the HTTPS client got no answer within 30 s of the descriptors freeing up")
	}
	var began, ended int
	for _, line := range strings.Split(b.log(), "\n") {
		switch {
		case strings.Contains(line, "cannot move TLS connections into the loops") && strings.Contains(line, "too many open files") && strings.Contains(line, "listener="+addr):
			began++
		case strings.Contains(line, "moving TLS connections into the loops again") && strings.Contains(line, "listener="+addr):
			ended++
		}
	}
	if epoll && (began != 1 || ended != 1) {
		t.Errorf("%d lines saying TLS connections wait for a descriptor, %d saying they move again; want 1 and 1\n%s", began, ended, tail(b.log(), 20))
	}
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := c.Get("https://" + addr + "/small.txt")
	if err != nil {
		t.Fatalf("after the episode: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("after the episode: %d", resp.StatusCode)
	}
}

// firstRead closes c when the first bytes come.
type firstRead struct {
	net.Conn
	c    chan struct{}
	done bool
}

func (r *firstRead) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if n > 0 && !r.done {
		r.done = true
		close(r.c)
	}
	return n, err
}
