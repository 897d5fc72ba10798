package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// idLoad sends GET /small.txt?id=N on keep-alive connections from a few
// clients until stopped, and records the id of every request answered 200
// with the whole body: each must be in the access log exactly once.
type idLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	ok   []string
	errs []string
}

func startIDLoad(t *testing.T, addr string, clients int) *idLoad {
	t.Helper()
	l := &idLoad{stop: make(chan struct{})}
	deadline := time.Now().Add(maxLoad)
	for c := 0; c < clients; c++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			for n := 0; time.Now().Before(deadline); n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				id := fmt.Sprintf("%d-%d", c, n)
				resp, err := client.Get("http://" + addr + "/small.txt?id=" + id)
				if err != nil {
					l.fail("%s: %v", id, err)
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || string(b) != smallBody {
					l.fail("%s: status %d, %d bytes, %v", id, resp.StatusCode, len(b), err)
					continue
				}
				l.mu.Lock()
				l.ok = append(l.ok, id)
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *idLoad) fail(format string, args ...any) {
	l.mu.Lock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
	l.mu.Unlock()
	time.Sleep(time.Millisecond) // a failing client must not spin
}

func (l *idLoad) answered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ok)
}

// more waits until n more requests were answered.
func (l *idLoad) more(t *testing.T, n int) {
	t.Helper()
	start := l.answered()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more answered requests", n), func() bool { return l.answered() >= start+n })
}

func (l *idLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// logIDs reads the access log files (a .gz one decompressed) and counts
// the lines of each request id; other carries the URIs without one.
func logIDs(t *testing.T, paths ...string) (ids map[string]int, other []string, perFile []int) {
	t.Helper()
	ids = map[string]int{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if strings.HasSuffix(p, ".gz") {
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			r = zr
		}
		text, err := io.ReadAll(r)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		n := 0
		for i, line := range strings.SplitAfter(string(text), "\n") {
			if line == "" {
				continue
			}
			var l jsonLine
			if !strings.HasSuffix(line, "\n") || json.Unmarshal([]byte(line), &l) != nil {
				t.Fatalf("%s:%d: not a whole JSON line: %q", p, i+1, line)
			}
			n++
			u, err := url.Parse(l.URI)
			if id := u.Query().Get("id"); err == nil && id != "" {
				ids[id]++
			} else {
				other = append(other, l.URI)
			}
		}
		perFile = append(perFile, n)
	}
	return ids, other, perFile
}

// lineCount is the number of lines in the file at path (0 if missing).
func lineCount(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}

// logrotateConfig is packaging/baton.logrotate, the file the package
// installs as /etc/logrotate.d/baton, pointed at this test's access log,
// control socket and baton binary.
func logrotateConfig(t *testing.T, dir, logPath, socket string) string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/baton.logrotate")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if !strings.Contains(text, "/var/log/baton/access.log {") {
		t.Fatal("packaging/baton.logrotate does not rotate /var/log/baton/access.log")
	}
	repl := []string{"/var/log/baton/access.log", logPath, "/run/baton/baton.sock", socket, "/usr/bin/baton", batonBin}
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		g, err := user.LookupGroupId(u.Gid)
		if err != nil {
			t.Fatal(err)
		}
		repl = append(repl, "create 0640 root adm", "create 0640 "+u.Username+" "+g.Name)
	}
	path := filepath.Join(dir, "logrotate.conf")
	if err := os.WriteFile(path, []byte(strings.NewReplacer(repl...).Replace(text)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// logrotate runs the real logrotate, forced, with its state in dir.
func logrotate(t *testing.T, dir, conf string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "logrotate", "-f", "-s", filepath.Join(dir, "logrotate.state"), conf).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("logrotate: %v", err)
	}
	return string(out), 0
}

// TestLogrotate: the logrotate file the package ships (Issue 16.1: it
// called /usr/local/bin/baton, the package installs /usr/bin/baton, and
// `|| true` hid the failure, so baton went on writing to access.log.1)
// run by the real logrotate twice under load, the first time while an
// older generation drains a slow request: every request answered is in
// exactly one of access.log, access.log.1 and access.log.2.gz, and baton
// writes to the new file after each rotation. Then: with baton stopped the
// rotation succeeds (nothing to reopen), and a baton that answers
// reopen-logs with an error fails it visibly.
func TestLogrotate(t *testing.T) { forEngines(t, testLogrotate) }

func testLogrotate(t *testing.T) {
	needTool(t, "logrotate", "logrotate")
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var logPath string
	b := startBaton(t, func(dir string) string {
		logPath = filepath.Join(dir, "log", "access.log")
		if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
			t.Fatal(err)
		}
		return batonConfig(dir, "", backendTOML("web1", lt.URL)) + fmt.Sprintf("\n[log]\naccess = %q\naccess_format = \"json\"\n", logPath)
	})
	conf := logrotateConfig(t, b.dir, logPath, b.socket)
	addr := b.addr()
	l := startIDLoad(t, addr, 4)
	l.more(t, 50)

	// An older generation drains a slow request across the first rotation.
	slow := startSlow(t, addr, lt, 2)
	b.signal(syscall.SIGHUP)
	b.waitNewPID(b.pid())
	rotate := func(n int) {
		t.Helper()
		out, code := logrotate(t, b.dir, conf)
		if code != 0 || out != "" {
			t.Fatalf("logrotate %d: exit %d, output %q; want 0 and nothing", n, code, out)
		}
		// baton writes to the new file: requests answered after the
		// rotation land in it.
		waitFor(t, 10*time.Second, fmt.Sprintf("lines in the new access.log after rotation %d", n), func() bool { return lineCount(logPath) > 0 })
	}
	rotate(1)
	l.more(t, 50)
	if err := <-slow; err != nil {
		t.Error(err)
	}
	waitFor(t, 20*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
	rotate(2)
	l.more(t, 50)
	l.halt()
	if len(l.errs) > 0 {
		t.Errorf("%d failed requests, want 0:\n%s", len(l.errs), strings.Join(l.errs, "\n"))
	}

	files := []string{logPath + ".2.gz", logPath + ".1", logPath}
	want := l.answered() + 1 // the slow request
	var ids map[string]int
	var other []string
	var perFile []int
	waitFor(t, 10*time.Second, fmt.Sprintf("%d lines in the access logs", want), func() bool {
		ids, other, perFile = logIDs(t, files...)
		return len(ids)+len(other) >= want
	})
	t.Logf("%d requests answered; lines per file %v (%s)", want, perFile, strings.Join(files, ", "))
	for i, n := range perFile {
		if n == 0 {
			t.Errorf("%s has no line: baton did not write to it", files[i])
		}
	}
	var missing, dup []string
	for _, id := range l.ok {
		switch n := ids[id]; {
		case n == 0:
			missing = append(missing, id)
		case n > 1:
			dup = append(dup, fmt.Sprintf("%s x%d", id, n))
		}
		delete(ids, id)
	}
	if len(missing) > 0 {
		t.Errorf("%d answered requests in no access log file: %.300v", len(missing), missing)
	}
	if len(dup) > 0 {
		t.Errorf("%d requests logged more than once: %.300v", len(dup), dup)
	}
	if len(ids) > 0 {
		t.Errorf("%d logged requests nobody sent or that were not answered: %.300v", len(ids), ids)
	}
	if len(other) != 1 || !strings.Contains(other[0], "slow.sh") {
		t.Errorf("lines without an id: %q, want the slow request's only", other)
	}

	t.Run("baton stopped", func(t *testing.T) {
		b.signal(syscall.SIGTERM)
		waitFor(t, 20*time.Second, "baton to exit after SIGTERM", func() bool { return len(b.processes()) == 0 })
		before := lineCount(logPath)
		out, code := logrotate(t, b.dir, conf)
		if code != 0 || out != "" {
			t.Errorf("logrotate with baton stopped: exit %d, output %q; want 0 and nothing", code, out)
		}
		if got := lineCount(logPath + ".1"); got != before {
			t.Errorf("access.log.1 after the rotation: %d lines, want the %d of access.log", got, before)
		}
	})

	t.Run("reopen fails", func(t *testing.T) {
		// Something answers on the socket and says the reopen failed (as
		// baton does when it cannot open the new file).
		os.Remove(b.socket)
		ln, err := net.Listen("unix", b.socket)
		if err != nil {
			t.Fatal(err)
		}
		const reason = "reopen-logs: open " + "/var/log/baton/access.log: permission denied"
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return // closed by the test
				}
				_, _ = bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "{\"ok\":false,\"error\":%q}\n", reason)
				c.Close()
			}
		}()
		defer wg.Wait()
		defer ln.Close()
		if err := os.WriteFile(logPath, []byte("{}\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		out, code := logrotate(t, b.dir, conf)
		if code == 0 || !strings.Contains(out, "baton ctl reopen-logs: "+reason) {
			t.Errorf("logrotate with a failing reopen: exit %d, output %q; want non-zero and %q", code, out, reason)
		}
	})
}
