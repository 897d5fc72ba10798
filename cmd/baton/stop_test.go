package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// TestStop: SIGTERM, SIGINT and `ctl stop` drain: an in-flight slow request
// completes with its full body, then baton exits 0 and removes its PID
// file and control socket.
func TestStop(t *testing.T) { forEngines(t, testStop) }

func testStop(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	for _, tc := range []struct {
		name string
		stop func(b *batonProc)
	}{
		{"SIGTERM", func(b *batonProc) { b.signal(syscall.SIGTERM) }},
		{"SIGINT", func(b *batonProc) { b.signal(syscall.SIGINT) }},
		{"ctl stop", func(b *batonProc) {
			if out, errOut, code := b.ctl("stop"); code != 0 || !strings.Contains(out, "stopping") {
				b.t.Errorf("ctl stop: exit %d, %q %q", code, out, errOut)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) })
			addr := b.addr()
			slow := slowRequest(addr, 2)
			waitInFlight(t, b, 1)
			tc.stop(b)
			select {
			case <-b.exited:
				t.Fatalf("baton exited before its in-flight request finished: %v", b.exitErr)
			case err := <-slow:
				if err != nil {
					t.Errorf("in-flight request: %v", err)
				}
			}
			select {
			case <-b.exited:
			case <-time.After(15 * time.Second):
				t.Fatal("baton did not exit within 15s after its last request")
			}
			if b.exitErr != nil {
				t.Errorf("exit status: %v, want 0", b.exitErr)
			}
			for _, f := range []string{b.pidFile, b.socket} {
				if _, err := os.Stat(f); !os.IsNotExist(err) {
					t.Errorf("%s still exists after stop (%v)", f, err)
				}
			}
			if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				t.Errorf("%s still accepts connections after stop", addr)
			}
		})
	}
}

// TestBadConfig: `baton check` and `baton run` reject a bad configuration
// with exit 1 and "file: key: reason". A backend that is down right now
// (its PID file missing or naming no live process, nothing answering at
// its address) is a warning: check exits 0 and says so (1 with --strict),
// because run starts and serves without it.
func TestBadConfig(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	deadPID := func() int {
		// A PID that was just used and is now free.
		c, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
		if err != nil {
			t.Fatal(err)
		}
		c.Wait()
		return c.Pid
	}()
	// good answers: check does not warn about it.
	up := busy.Addr().String()
	good := fmt.Sprintf("[[backend]]\nname = \"web1\"\nurl = \"http://%s\"\n", up)
	const (
		bad  = iota // check and run: exit 1
		conf        // check exit 1; run starts anyway (a runtime problem, not a config error)
		warn        // check exit 0 with a warning, 1 with --strict; run starts
	)
	for _, tc := range []struct {
		name, text, want string
		kind             int
	}{
		{"unknown key", "[proxy]\nlisten = [\"127.0.0.1:0\"]\nlisten_timeout = \"1s\"\n" + good, "baton.toml: proxy.listen_timeout: unknown key", bad},
		{"unknown backend key", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "colour = 3\n", "baton.toml: backend[0].colour: unknown key", bad},
		{"misspelt key", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "healthpath = \"/\"\n", "baton.toml: backend[0].healthpath: unknown key (did you mean health_path?)", bad},
		{"bad duration", "[proxy]\nlisten = [\"127.0.0.1:0\"]\ndrain_timeout = \"30 seconds\"\n" + good, `baton.toml: proxy.drain_timeout: "30 seconds" is not a duration`, bad},
		{"duration as number", "[proxy]\nlisten = [\"127.0.0.1:0\"]\nhold_timeout = 30\n" + good, `baton.toml:3: proxy.hold_timeout: 30 has no unit: want a duration in quotes, e.g. "30s"`, bad},
		{"bad url", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[[backend]]\nname = \"web1\"\nurl = \"ftp://127.0.0.1:21\"\n", `baton.toml: backend[0].url: "ftp://127.0.0.1:21": scheme must be http`, bad},
		{"url without scheme", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[[backend]]\nname = \"web1\"\nurl = \"127.0.0.1:8081\"\n", `baton.toml: backend[0].url: "127.0.0.1:8081" has no scheme: want "http://127.0.0.1:8081"`, bad},
		{"url without port", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[[backend]]\nname = \"web1\"\nurl = \"http://127.0.0.1\"\n", "baton.toml: backend[0].url:", bad},
		{"duplicate name", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + good, `baton.toml: backend[1].name: duplicate backend name "web1"`, bad},
		{"no listener", "[proxy]\nlisten = []\n" + good, "baton.toml: proxy.listen: no listen address", bad},
		{"no backend", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n", "baton.toml: backend: no [[backend]] configured", bad},
		{"zero max_conns", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "max_conns = 0\n", "baton.toml: backend[0].max_conns: must be positive, got 0 (leave it out for no limit)", bad},
		{"unknown balance", "[proxy]\nlisten = [\"127.0.0.1:0\"]\nbalance = \"random\"\n" + good, `baton.toml: proxy.balance: "random": want round_robin or least_conn`, bad},
		{"backup only", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "backup = true\n", "baton.toml: backend: every backend has backup = true", bad},
		{"zero weight", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "weight = 0\n", "baton.toml: backend[0].weight: must be 1 to 1000, got 0", bad},
		{"listen address in use", fmt.Sprintf("[proxy]\nlisten = [%q]\n", up) + good, "baton.toml: proxy.listen[0]: listen tcp " + up + ": bind: address already in use", bad},
		{"syntax", "[proxy\nlisten = 1\n", "baton.toml:2:", bad},
		{"unknown kind", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"nginx\"\n", `baton.toml: backend[0].kind: unknown kind "nginx"`, bad},
		{"bad kind/restart", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"lighttpd\"\npid_file = \"/run/l.pid\"\nrestart = \"reload\"\n", `baton.toml: backend[0].restart: kind lighttpd cannot restart by "reload"`, bad},
		{"missing pid_file", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"apache\"\n", "baton.toml: backend[0].pid_file: required for kind apache restart graceful", bad},
		{"missing start_command", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"lighttpd\"\npid_file = \"/run/l.pid\"\nrestart = \"stop-start\"\n", "baton.toml: backend[0].start_command: required for restart stop-start", bad},
		{"command without restart_command", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"command\"\n", "baton.toml: backend[0].restart_command: required", bad},
		{"start_command not installed", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"lighttpd\"\npid_file = \"PIDFILE\"\nrestart = \"stop-start\"\nstart_command = [\"/nonexistent/lighttpd\"]\n", "baton.toml: backend[0].start_command: exec: \"/nonexistent/lighttpd\"", conf},
		{"pid file that is not a pid file", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"lighttpd\"\npid_file = \"GARBAGE\"\n", "baton.toml: backend[0].pid_file: pid file " + "GARBAGE" + `: "<html>" is not a PID`, conf},
		{"pid file of a dead process", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"lighttpd\"\npid_file = \"PIDFILE\"\n", fmt.Sprintf("warning: CFG: backend[0].pid_file: pid file PIDFILE names pid %d, which is not running; baton starts without web1", deadPID), warn},
		{"pid file absent", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n" + good + "kind = \"lighttpd\"\npid_file = \"/nonexistent/l.pid\"\n", "warning: CFG: backend[0].pid_file: pid file /nonexistent/l.pid does not exist (is the server running?)", warn},
		{"backend down", "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[[backend]]\nname = \"web1\"\nurl = \"http://127.0.0.1:1\"\n", "warning: CFG: backend[0].url: nothing accepts connections at 127.0.0.1:1 right now (connection refused); baton starts without web1", warn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pidFile, garbage := dir+"/dead.pid", dir+"/garbage.pid"
			if err := os.WriteFile(pidFile, []byte(fmt.Sprintf("%d\n", deadPID)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(garbage, []byte("<html>\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := dir + "/baton.toml"
			fill := strings.NewReplacer("PIDFILE", pidFile, "GARBAGE", garbage, "CFG", cfg)
			text, want := fill.Replace(tc.text), fill.Replace(tc.want)
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, code := runBaton(t, "check", "--config", cfg)
			switch tc.kind {
			case warn:
				if code != 0 || !strings.Contains(stderr, want) || !strings.Contains(stdout, "ok (1 listener(s), 1 backend(s), 1 warning(s))") {
					t.Errorf("check: exit %d, stdout %q, stderr %q; want exit 0, ok with 1 warning, and %q", code, stdout, stderr, want)
				}
				_, stderr, code = runBaton(t, "check", "--strict", "--config", cfg)
				if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "1 warning(s); --strict fails on warnings") {
					t.Errorf("check --strict: exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
				}
			default:
				if code != 1 || !strings.Contains(stderr, want) {
					t.Errorf("check: exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
				}
			}
			if tc.kind != bad {
				return
			}
			_, stderr, code = runBaton(t, "run", "-c", cfg)
			if code != 1 || !strings.Contains(stderr, want) {
				t.Errorf("run: exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
			}
		})
	}
}

// TestControlBadInput: bad control requests get an error line, a silent
// client is timed out, and serving is not disturbed.
func TestControlBadInput(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return strings.Replace(batonConfig(dir, "", backendTOML("web1", lt.URL)), "[control]\n", "[control]\nrequest_timeout = \"500ms\"\n", 1)
	})
	l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
	l.progress(t, 10)
	if fi, err := os.Stat(b.socket); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("control socket: %v %v, want a socket with mode 0600", fi.Mode(), err)
	}

	exchange := func(t *testing.T, send string) control.Response {
		t.Helper()
		c, err := net.Dial("unix", b.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if send != "" {
			if _, err := c.Write([]byte(send)); err != nil {
				t.Fatal(err)
			}
		}
		line, err := bufio.NewReaderSize(c, 1<<20).ReadBytes('\n')
		if err != nil {
			t.Fatalf("no response line: %v", err)
		}
		var r control.Response
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("response is not JSON (%v): %s", err, line)
		}
		return r
	}
	for _, tc := range []struct{ name, send, want string }{
		{"unknown command", `{"cmd":"frobnicate"}` + "\n", `unknown command "frobnicate"`},
		{"malformed json", "status please\n", "malformed request"},
		{"unknown field", `{"cmd":"status","force":true}` + "\n", "malformed request"},
		{"oversized line", strings.Repeat("x", 70<<10) + "\n", "longer than"},
		{"silent client", "", "no request within 500ms"},
		{"restart unknown backend", `{"cmd":"restart","backend":"nope"}` + "\n", `unknown backend "nope"`},
		{"restart kind none", `{"cmd":"restart","backend":"web1"}` + "\n", "no restart method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := exchange(t, tc.send)
			if r.OK || !strings.Contains(r.Error, tc.want) {
				t.Errorf("got ok=%v error %q, want an error containing %q", r.OK, r.Error, tc.want)
			}
		})
	}
	if _, errOut, code := b.ctl("frobnicate"); code != 1 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("ctl frobnicate: exit %d, %q", code, errOut)
	}
	if st := b.status(); st.Backends[0].State != "up" {
		t.Errorf("backend after bad restart requests: %s, want up", st.Backends[0].State)
	}
	l.progress(t, 10)
	l.check(t)
}

// TestMalformedHTTP: garbage gets 400, oversized headers 431, and both
// leave baton serving.
func TestMalformedHTTP(t *testing.T) { forEngines(t, testMalformedHTTP) }

func testMalformedHTTP(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) })
	addr := b.addr()
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"garbage", "HELLO THERE\r\n\r\n", 400},
		{"bad version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"header too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", 431},
		{"bad content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte(tc.req)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	resp, err := http.Get("http://" + addr + "/small.txt")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("a good request after the bad ones: status %d", resp.StatusCode)
	}
}

// TestClosedStdio: started with fds 0-2 closed, baton still serves and
// upgrades (an inherited socket must not land on fd 0-2).
func TestClosedStdio(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := newBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) })
	b.wrap = []string{"/bin/sh", "-c", `exec "$0" "$@" <&- >&- 2>&-`}
	b.start()
	l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
	l.progress(t, 10)
	for i := 0; i < 2; i++ {
		old := b.pid()
		b.signal(syscall.SIGHUP)
		b.waitNewPID(old)
		l.progress(t, 10)
	}
	l.check(t)
}
