package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/backends/backendtest"
)

// openFDs counts the file descriptors pid has open.
func openFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestControlSurvivesEMFILE is issue 7, item 4: with its file descriptors
// exhausted by client connections, baton's control socket got EMFILE from
// accept4 once, its accept loop returned, and `baton ctl` never got an
// answer again (HTTP, served by net/http, which retries, recovered). Now
// every accept loop backs off and retries: once the connections are gone,
// `ctl status` answers within seconds and HTTP still works.
func TestControlSurvivesEMFILE(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	// A long read_header_timeout: the silent clients below keep their
	// descriptors until the test closes them.
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, `read_header_timeout = "60s"`, backendTOML("web1", lt.URL))
	})
	addr := b.addr()
	pid := b.cmd.Process.Pid

	limit := uint64(openFDs(t, pid) + 24)
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range int(limit) + 40 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("client connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("baton to use up its %d file descriptors", limit), func() bool {
		return uint64(openFDs(t, pid)) >= limit-1
	})

	// Out of descriptors: the control socket cannot accept, so ctl gives up
	// at its timeout and says so.
	start := time.Now()
	_, stderr, code := b.ctl("--timeout", "1s", "status")
	if code != 1 || !strings.Contains(stderr, "no answer from baton at "+b.socket+" within 1s") {
		t.Errorf("ctl status while out of descriptors: exit %d, %q; want exit 1 and \"no answer ... within 1s\"", code, stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("ctl --timeout 1s took %s", d)
	}

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	start = time.Now()
	out, stderr, code := b.ctl("--timeout", "5s", "status")
	if code != 0 || !strings.Contains(out, "web1") {
		t.Fatalf("ctl status after the connections closed: exit %d, %q %q (after %s)", code, out, stderr, time.Since(start))
	}
	t.Logf("ctl status answered %s after the connections closed", time.Since(start).Round(time.Millisecond))
	// One episode, logged once when it began and once when it ended.
	var began, ended int
	for _, line := range strings.Split(b.log(), "\n") {
		if !strings.Contains(line, `listener="control socket"`) {
			continue
		}
		switch {
		case strings.Contains(line, "cannot accept connections") && strings.Contains(line, "too many open files"):
			began++
		case strings.Contains(line, "accepting connections again"):
			ended++
		}
	}
	if began != 1 || ended != 1 {
		t.Errorf("control socket: %d lines saying accept failed with EMFILE and %d saying it works again, want 1 and 1", began, ended)
	}

	c := &http.Client{Timeout: 15 * time.Second}
	resp, err := c.Get("http://" + addr + "/small.txt")
	if err != nil {
		t.Fatalf("GET after the episode: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET after the episode: %d, want 200", resp.StatusCode)
	}
}
