package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// The regression tests of issue 7 (security/fault review).

// startVictim starts `sleep 1000`, a process that SIGUSR1, SIGWINCH and
// SIGINT all kill, and returns it with a channel closed when it exits.
func startVictim(t *testing.T) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return cmd, exited
}

// TestRestartRefusesWrongPID: issue 7.1. baton signalled whatever PID a
// backend's PID file named: with sleep's PID in Apache's PID file `ctl
// restart` sent it SIGUSR1 (it died), with baton's own PID baton signalled
// itself. Now the PID file must name a process running the server's
// binary that listens on the backend's port; anything else (sleep, baton,
// another instance of the same server on another port) is refused before
// the drain, the victim is untouched and the backend keeps serving. `baton
// check` reports the same. A normal restart still works afterwards.
func TestRestartRefusesWrongPID(t *testing.T) {
	for _, tc := range []struct{ kind, method, binary string }{
		{backendtest.Apache, "graceful", "apache2"},
		{backendtest.Lighttpd, "stop-start", "lighttpd"},
	} {
		t.Run(tc.kind+"/"+tc.method, func(t *testing.T) {
			s := backendtest.StartT(t, tc.kind, backendtest.Options{})
			other := backendtest.StartT(t, tc.kind, backendtest.Options{}) // same binary, another port
			sleep, sleepExited := startVictim(t)
			b := startBaton(t, func(dir string) string {
				sec := strings.Replace(restartable("web1", s, tc.method), `restart_timeout = "20s"`, `restart_timeout = "5s"`, 1)
				return batonConfig(dir, "", sec)
			})
			l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
			l.progress(t, 10)

			orig, err := os.ReadFile(s.PIDFile)
			if err != nil {
				t.Fatal(err)
			}
			otherPID, err := other.PID()
			if err != nil {
				t.Fatal(err)
			}
			otherGen := evidence(t, other, "graceful")
			batonPID := b.pid()
			for _, v := range []struct {
				name string
				pid  int
				what string // in the error: what the process is or lacks
			}{
				{"sleep", sleep.Process.Pid, "sleep), not " + tc.binary},
				{"baton itself", batonPID, fmt.Sprintf("pid %d (baton", batonPID)},
				{"another " + tc.binary, otherPID, "does not listen on " + strings.TrimPrefix(s.URL, "http://")},
			} {
				if err := os.WriteFile(s.PIDFile, []byte(fmt.Sprintf("%d\n", v.pid)), 0o644); err != nil {
					t.Fatal(err)
				}
				_, errOut, code := b.ctl("restart", "web1")
				for _, want := range []string{
					fmt.Sprintf("pid file %s names pid %d (", s.PIDFile, v.pid), v.what,
					"refusing to signal it", "backend left as it was",
				} {
					if code != 1 || !strings.Contains(errOut, want) {
						t.Errorf("restart with %s's pid in the pid file: exit %d, stderr %q; want exit 1 and %q", v.name, code, errOut, want)
					}
				}
				_, errOut, code = runBaton(t, "check", "--config", b.cfgPath)
				if want := fmt.Sprintf("backend[0].pid_file: pid file %s names pid %d (", s.PIDFile, v.pid); code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, v.what) {
					t.Errorf("check with %s's pid in the pid file: exit %d, stderr %q; want exit 1, %q and %q", v.name, code, errOut, want, v.what)
				}
				if st := b.status(); st.Backends[0].State != "up" || st.PID != batonPID {
					t.Errorf("after the refused restart (%s): backend %s, baton pid %d; want up, %d", v.name, st.Backends[0].State, st.PID, batonPID)
				}
				l.progress(t, 5)
			}
			select {
			case <-sleepExited:
				t.Errorf("sleep (pid %d) was killed: baton signalled it", sleep.Process.Pid)
			default:
			}
			if strings.Contains(b.log(), "restarting all backends") {
				t.Errorf("baton signalled itself (SIGUSR1 started a restart of all backends)")
			}
			if !processAlive(otherPID) {
				t.Errorf("the other %s (pid %d) is gone", tc.binary, otherPID)
			} else if g := evidence(t, other, "graceful"); g != otherGen {
				t.Errorf("the other %s was restarted (generation %d -> %d)", tc.binary, otherGen, g)
			}

			// With the right PID a restart works.
			if err := os.WriteFile(s.PIDFile, orig, 0o644); err != nil {
				t.Fatal(err)
			}
			before := evidence(t, s, tc.method)
			if out, errOut, code := b.ctl("restart", "web1"); code != 0 {
				t.Fatalf("restart with the right pid: exit %d: %s %s", code, out, errOut)
			}
			if after := evidence(t, s, tc.method); after == before {
				t.Errorf("restart with the right pid: evidence unchanged (%d)", after)
			}
			l.progress(t, 10)
			l.check(t)
		})
	}
}

// TestKilledGenerationInFlight: issue 7.2. A kill -9 of a draining old
// generation left its in-flight counts in the shared table forever, so
// every later restart waited the whole drain_timeout. Counts now belong
// to a generation, and a dead generation's are reclaimed.
func TestKilledGenerationInFlight(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("web1", lt, "stop-start")) // drain_timeout 10s
	})
	addr := b.addr()
	// Long enough to outlive the upgrade and the kill.
	slow1, slow2 := slowRequest(addr, 8), slowRequest(addr, 8)
	waitInFlight(t, b, 2)
	old := b.pid()
	b.signal(syscall.SIGHUP)
	b.waitNewPID(old)
	if st := b.status(); st.Backends[0].InFlight != 2 || st.Backends[0].InFlightHere != 0 {
		t.Fatalf("before the kill: in flight %d, here %d; want 2 in the old generation", st.Backends[0].InFlight, st.Backends[0].InFlightHere)
	}
	select {
	case <-b.exited:
		t.Fatalf("the old generation exited while draining two slow requests")
	default:
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.exited // the test started the first generation and reaps it
	<-slow1
	<-slow2
	out, errOut, code := b.ctl("restart", "web1", "--json")
	if code != 0 {
		t.Fatalf("restart after the kill: exit %d: %s %s", code, out, errOut)
	}
	var resp control.Response
	if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Restarts) != 1 || len(resp.Restarts[0].Steps) == 0 {
		t.Fatalf("unexpected restart output (%v): %s", err, out)
	}
	d := resp.Restarts[0].Steps[0]
	if d.Name != "drain" || d.Duration > 3*time.Second {
		t.Errorf("drain step %+v: want well under drain_timeout (10s); the dead generation's requests were waited for", d)
	}
	b.waitStatus(5*time.Second, "in_flight back to 0", func(st control.Status) bool {
		return st.Backends[0].InFlight == 0
	})
}

// mountTmpfs mounts a tmpfs with opts on dir until the test ends. It skips
// the test when that is impossible (not root, no mount), except under
// CI=true.
func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("mount -t tmpfs -o %s: %v: %s", opts, err, out)
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI=true: this is a failure)", msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// fill writes to dir until the filesystem is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return p
		}
	}
}

// TestUpgradeFailsOnFullFS: issue 7.3. With the PID file on a full
// filesystem the new process failed (no space left on device) and the old
// one served on, but the failed child had unlinked the control socket
// file it inherited: ctl could not reach baton any more, also after later
// upgrades.
func TestUpgradeFailsOnFullFS(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var small string
	b := newBaton(t, func(dir string) string {
		small = filepath.Join(dir, "small")
		return strings.Replace(batonConfig(dir, "", backendTOML("web1", lt.URL)),
			filepath.Join(dir, "run", "baton.pid"), filepath.Join(small, "baton.pid"), 1)
	})
	mountTmpfs(t, small, "size=64k")
	b.pidFile = filepath.Join(small, "baton.pid")
	b.start()
	l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
	l.progress(t, 10)
	filler := fill(t, small)
	old := b.pid()

	socketThere := func(when string) {
		t.Helper()
		if fi, err := os.Lstat(b.socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("%s: control socket %s: %v (mode %v); want the socket file", when, b.socket, err, fi)
		}
		if st, err := b.tryStatus(); err != nil {
			t.Errorf("%s: ctl status: %v", when, err)
		} else if st.PID != b.pid() {
			t.Errorf("%s: ctl status answered by pid %d, pid file names %d", when, st.PID, b.pid())
		}
	}
	_, errOut, code := b.ctl("upgrade")
	if code != 1 || !strings.Contains(errOut, "no space left on device") {
		t.Errorf("ctl upgrade with the pid file's filesystem full: exit %d, stderr %q; want exit 1 and the reason", code, errOut)
	}
	if p := b.pid(); p != old {
		t.Errorf("pid file after the failed upgrade: %d, want %d", p, old)
	}
	socketThere("after a failed ctl upgrade")

	b.signal(syscall.SIGHUP)
	waitFor(t, 30*time.Second, "the SIGHUP upgrade to fail", func() bool {
		return strings.Count(b.log(), "upgrade failed: still serving") >= 2
	})
	socketThere("after a failed SIGHUP upgrade")
	l.progress(t, 5)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := b.ctl("upgrade"); code != 0 {
		t.Fatalf("ctl upgrade after freeing space: exit %d: %s %s", code, out, errOut)
	}
	b.waitNewPID(old)
	socketThere("after a successful upgrade")
	l.progress(t, 10)
	l.check(t)
}

// TestCheckUnwritableDirs: issue 7.4. `baton check` accepted a control
// socket, PID file or run directory where nothing can be created.
func TestCheckUnwritableDirs(t *testing.T) {
	dir := t.TempDir()
	ro := filepath.Join(dir, "ro")
	mountTmpfs(t, ro, "ro,size=16k")
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := filepath.Join(dir, "ok")
	for _, tc := range []struct {
		name, socket, pidFile, runDir, want string
	}{
		{"writable", ok + "/baton.sock", ok + "/sub/baton.pid", ok + "/out", ""},
		{"socket on a read-only fs", ro + "/baton.sock", ok + "/baton.pid", "", "baton.toml: control.socket: " + ro + ": read-only file system"},
		{"pid file in a missing dir on a read-only fs", ok + "/baton.sock", ro + "/sub/baton.pid", "", "baton.toml: control.pid_file: " + ro + ": read-only file system"},
		{"run dir on a read-only fs", ok + "/baton.sock", ok + "/baton.pid", ro, "baton.toml: control.run_dir: " + ro + ": read-only file system"},
		{"socket under a regular file", file + "/baton.sock", ok + "/baton.pid", "", "baton.toml: control.socket: " + file + " is not a directory"},
		{"pid file under a regular file", ok + "/baton.sock", file + "/sub/baton.pid", "", "baton.toml: control.pid_file: " + file + " is not a directory"},
		{"run dir is a regular file", ok + "/baton.sock", ok + "/baton.pid", file, "baton.toml: control.run_dir: " + file + " is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "baton.toml")
			text := fmt.Sprintf("[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[control]\nsocket = %q\npid_file = %q\nrun_dir = %q\n\n%s",
				tc.socket, tc.pidFile, tc.runDir, backendTOML("web1", "http://127.0.0.1:1"))
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			out, errOut, code := runBaton(t, "check", "--config", cfg)
			if tc.want == "" {
				if code != 0 {
					t.Errorf("check: exit %d, %s %s; want ok", code, out, errOut)
				}
				return
			}
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("check: exit %d, stderr %q; want exit 1 and %q", code, errOut, tc.want)
			}
		})
	}
}
