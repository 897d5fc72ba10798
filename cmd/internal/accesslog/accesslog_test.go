package accesslog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

func exchange() *proxy.Exchange {
	return &proxy.Exchange{
		Start:      time.Date(2024, 10, 10, 13, 55, 36, 0, time.FixedZone("", -7*3600)),
		RemoteAddr: "192.0.2.7:51234", Method: "GET", URI: "/a?b=\"c\"", Proto: "HTTP/1.1", Host: "example.org",
		Referer: "http://example.org/", UserAgent: "curl/8.0", Status: 200, BytesOut: 2326, Backend: "apache",
		Attempts: 2, Held: 1500 * time.Microsecond, Upstream: 3 * time.Millisecond, Total: 5 * time.Millisecond,
	}
}

func TestFormats(t *testing.T) {
	aborted := exchange()
	aborted.Status, aborted.BytesOut, aborted.Term, aborted.Referer, aborted.UserAgent = 0, 0, proxy.TermClientAborted, "", ""
	hostile := exchange()
	hostile.UserAgent = "x\"\n127.0.0.1 - - [forged]\x00é"
	tests := []struct {
		name string
		f    Format
		e    *proxy.Exchange
		x    Extra
		want string
	}{
		{"combined", Combined, exchange(), Extra{},
			`192.0.2.7 - - [10/Oct/2024:13:55:36 -0700] "GET /a?b=\"c\" HTTP/1.1" 200 2326 "http://example.org/" "curl/8.0"` + "\n"},
		{"combined aborted", Combined, aborted, Extra{},
			`192.0.2.7 - - [10/Oct/2024:13:55:36 -0700] "GET /a?b=\"c\" HTTP/1.1" 499 - "-" "-"` + "\n"},
		{"combined hostile", Combined, hostile, Extra{},
			`192.0.2.7 - - [10/Oct/2024:13:55:36 -0700] "GET /a?b=\"c\" HTTP/1.1" 200 2326 "http://example.org/" "x\"\x0a127.0.0.1 - - [forged]\x00\xc3\xa9"` + "\n"},
		{"extended", Extended, exchange(), Extra{Generation: 3, Draining: true},
			`192.0.2.7 - - [10/Oct/2024:13:55:36 -0700] "GET /a?b=\"c\" HTTP/1.1" 200 2326 "http://example.org/" "curl/8.0"` +
				" backend=apache held=0.001500 upstream=0.003000 total=0.005000 attempts=2 gen=3 in=0 out=2326 term=ok draining=1\n"},
		{"extended drained", Extended, aborted, Extra{Generation: 2, Draining: true, DrainCut: true},
			`192.0.2.7 - - [10/Oct/2024:13:55:36 -0700] "GET /a?b=\"c\" HTTP/1.1" 499 - "-" "-"` +
				" backend=apache held=0.001500 upstream=0.003000 total=0.005000 attempts=2 gen=2 in=0 out=0 term=drained draining=1\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if g, e := string(AppendLine(nil, tc.f, tc.e, tc.x)), tc.want; g != e {
				t.Errorf("got  %q\nwant %q", g, e)
			}
		})
	}
}

func TestJSON(t *testing.T) {
	e := exchange()
	e.UserAgent = "a\"b\\c\x01\xffé"
	line := AppendLine(nil, JSON, e, Extra{Generation: 4})
	if line[len(line)-1] != '\n' || strings.Count(string(line), "\n") != 1 {
		t.Fatalf("not one line: %q", line)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	want := map[string]any{"status": 200.0, "backend": "apache", "retries": 1.0, "generation": 4.0, "term": "ok",
		"user_agent": "a\"b\\c\x01\ufffdé", "held_s": 0.0015, "client": "192.0.2.7:51234", "draining": false}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s: got %#v, want %#v", k, m[k], v)
		}
	}
}

func TestAppendLineAllocs(t *testing.T) {
	e := exchange()
	buf := make([]byte, 0, 1024)
	for _, f := range []Format{Combined, Extended, JSON} {
		if n := testing.AllocsPerRun(100, func() { buf = AppendLine(buf[:0], f, e, Extra{}) }); n != 0 {
			t.Errorf("%s: %v allocations per line, want 0", f, n)
		}
	}
}

func TestLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	var epoch atomic.Uint64
	var written atomic.Int64
	l, err := Open(Options{Path: path, ReopenEpoch: epoch.Load, PollInterval: time.Millisecond,
		Written: func(n int) { written.Add(int64(n)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := exchange()
	count := func(p string) int {
		b, _ := os.ReadFile(p)
		return strings.Count(string(b), "\n")
	}
	waitLines := func(p string, n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for count(p) != n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d lines, want %d", p, count(p), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	l.Log(e, Extra{})
	waitLines(path, 1)
	// Reopen asked of this process.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Log(e, Extra{})
	waitLines(path, 1)
	// Reopen asked of another generation: the epoch moves.
	if err := os.Rename(path, path+".2"); err != nil {
		t.Fatal(err)
	}
	epoch.Add(1)
	deadline := time.Now().Add(5 * time.Second)
	for count(path) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no line in the new file after the epoch moved")
		}
		l.Log(e, Extra{})
		time.Sleep(2 * time.Millisecond)
	}
	if count(path+".1") != 1 || count(path+".2") < 1 {
		t.Errorf("rotated files: %d and %d lines, want 1 and at least 1", count(path+".1"), count(path+".2"))
	}
}

func TestLogDropsWhenFull(t *testing.T) {
	var dropped atomic.Int64
	l, err := Open(Options{Path: filepath.Join(t.TempDir(), "a.log"), Buffer: 10, Dropped: func(n int) { dropped.Add(int64(n)) }})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(exchange(), Extra{})
	l.Close()
	if dropped.Load() != 1 {
		t.Errorf("dropped: %d, want 1", dropped.Load())
	}
}

func TestLogDiskFull(t *testing.T) {
	var dropped, written atomic.Int64
	l, err := Open(Options{Path: "/dev/full", Dropped: func(n int) { dropped.Add(int64(n)) }, Written: func(n int) { written.Add(int64(n)) }})
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	for i := 0; i < 10; i++ {
		l.Log(exchange(), Extra{})
	}
	l.Close()
	if dropped.Load() != 10 || written.Load() != 0 {
		t.Errorf("dropped %d, written %d; want 10 and 0", dropped.Load(), written.Load())
	}
}

// TestPipeChunks: to a pipe, each write(2) is whole lines of at most
// PIPE_BUF bytes, so writes of several processes do not interleave. A
// datagram socket stands in for the pipe: it keeps write boundaries.
func TestPipeChunks(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(fds[0]), "r"), os.NewFile(uintptr(fds[1]), "w")
	defer r.Close()
	l := &Log{f: w, pipe: true}
	line := strings.Repeat("y", 99) + "\n"
	b := []byte(strings.Repeat(line, 100)) // 10000 bytes
	done := make(chan []int)
	go func() {
		var sizes []int
		buf := make([]byte, 1<<16)
		total := 0
		for total < len(b) {
			n, err := r.Read(buf)
			if err != nil {
				break
			}
			sizes = append(sizes, n)
			total += n
		}
		done <- sizes
	}()
	if n, err := l.write(b); err != nil || n != len(b) {
		t.Fatalf("write: %d, %v", n, err)
	}
	sizes := <-done
	w.Close()
	if len(sizes) < 3 {
		t.Errorf("writes %v: want at least 3", sizes)
	}
	for _, n := range sizes {
		if n > pipeBuf || n%100 != 0 {
			t.Errorf("a write of %d bytes: want whole lines, at most %d bytes", n, pipeBuf)
		}
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	if err := Check(filepath.Join(dir, "a.log")); err != nil {
		t.Errorf("writable: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a.log")); err == nil {
		t.Error("Check left a file behind")
	}
	if err := Check(filepath.Join(dir, "missing", "a.log")); err == nil {
		t.Error("missing directory: no error")
	}
	if err := Check(dir); err == nil {
		t.Error("a directory: no error")
	}
}

func BenchmarkLog(b *testing.B) {
	for _, f := range []Format{Combined, JSON} {
		b.Run(f.String(), func(b *testing.B) {
			l, err := Open(Options{Path: filepath.Join(b.TempDir(), "a.log"), Format: f})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			e := exchange()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					l.Log(e, Extra{Generation: 1})
				}
			})
		})
	}
}
