package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// waitInFlight waits until baton counts at least n requests in flight to
// its backends, so a request is known to be inside before what follows.
func waitInFlight(t testing.TB, b *batonProc, n int64) {
	t.Helper()
	b.waitStatus(10*time.Second, "a request in flight through baton", func(st control.Status) bool {
		var sum int64
		for _, be := range st.Backends {
			sum += be.InFlight
		}
		return sum >= n
	})
}

// TestUpgradeUnderLoad upgrades baton with SIGHUP six times while Go and
// raw keep-alive clients and POSTs run through it against a real lighttpd,
// some upgrades while the previous generation still drains a slow request;
// then tries upgrades that must fail (bad config, crashing binary, a
// binary that never gets ready). Nothing may fail, the slow requests must
// arrive whole, and the PID file must change exactly when an upgrade
// succeeds.
func TestUpgradeUnderLoad(t *testing.T) { forEngines(t, testUpgradeUnderLoad) }

func testUpgradeUnderLoad(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	// Its own copy of the binary, which this test replaces with broken ones.
	bin := filepath.Join(t.TempDir(), "baton")
	copyFile(t, batonBin, bin, 0o755)
	goodConfig := func(dir string) string {
		return batonConfig(dir, "", backendTOML("web1", lt.URL))
	}
	b := newBaton(t, func(dir string) string { return goodConfig(dir) })
	b.bin = bin
	b.start()
	addr := b.addr()
	l := startLoad(t, addr, loadSpec{GoGET: 8, Raw: 4, Post: 2})
	l.progress(t, 20)

	var slow []<-chan error
	pid := b.pid()
	for i := 1; i <= 6; i++ {
		if i%2 == 1 {
			// A slow request in flight at the upgrade; the next upgrade
			// follows while this generation still drains it.
			slow = append(slow, startSlow(t, addr, lt, 2))
		}
		b.signal(syscall.SIGHUP)
		newPID := b.waitNewPID(pid)
		t.Logf("upgrade %d: pid %d -> %d", i, pid, newPID)
		pid = newPID
		l.progress(t, 10)
	}
	if st := b.status(); st.Generation != 7 {
		t.Errorf("generation after 6 upgrades: got %d, want 7", st.Generation)
	}

	// A bad config: the new process exits before Ready; the old one serves on.
	t.Run("bad config", func(t *testing.T) {
		b.writeConfig(goodConfig(b.dir) + "\n[proxy2]\nlisten = 1\n")
		b.signal(syscall.SIGHUP)
		b.waitStatus(20*time.Second, "the failed upgrade to be reported", func(st control.Status) bool {
			return st.LastUpgradeError != ""
		})
		st := b.status()
		if !strings.Contains(st.LastUpgradeError, "baton.toml") || !strings.Contains(st.LastUpgradeError, "proxy2") {
			t.Errorf("upgrade error %q does not name the file and the key", st.LastUpgradeError)
		}
		if got := b.pid(); got != pid || st.PID != pid {
			t.Errorf("pid file after a failed upgrade: %d (status %d), want %d", got, st.PID, pid)
		}
		l.progress(t, 10)
		b.writeConfig(goodConfig(b.dir))
	})

	// A binary that crashes at start.
	t.Run("crashing binary", func(t *testing.T) {
		before := b.status().LastUpgradeError
		if err := os.Rename(bin, bin+".good"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, []byte("#!/bin/sh\necho 'simulated crash' >&2\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		b.signal(syscall.SIGHUP)
		b.waitStatus(20*time.Second, "the failed upgrade to be reported", func(st control.Status) bool {
			return st.LastUpgradeError != "" && st.LastUpgradeError != before
		})
		if err := os.Rename(bin+".good", bin); err != nil {
			t.Fatal(err)
		}
		st := b.status()
		if !strings.Contains(st.LastUpgradeError, "exit status 3") {
			t.Errorf("upgrade error %q does not say the new process exited with status 3", st.LastUpgradeError)
		}
		if got := b.pid(); got != pid || st.PID != pid {
			t.Errorf("pid file after a crashed upgrade: %d (status %d), want %d", got, st.PID, pid)
		}
		l.progress(t, 10)
	})

	// The upgrade works again afterwards.
	b.signal(syscall.SIGHUP)
	pid = b.waitNewPID(pid)
	l.progress(t, 10)

	l.check(t)
	for i, c := range slow {
		if err := <-c; err != nil {
			t.Errorf("slow request %d: %v", i+1, err)
		}
	}
	ids, err := lt.PostIDs()
	if err != nil {
		t.Fatal(err)
	}
	checkPostsOnce(t, l.postIDs(), ids)
}

// TestUpgradeTimeout: a new binary that never becomes ready is killed at
// upgrade_timeout and the old process serves on.
func TestUpgradeTimeout(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	bin := filepath.Join(t.TempDir(), "baton")
	copyFile(t, batonBin, bin, 0o755)
	b := newBaton(t, func(dir string) string {
		return strings.Replace(batonConfig(dir, "", backendTOML("web1", lt.URL)), "[control]\n", "[control]\nupgrade_timeout = \"1s\"\n", 1)
	})
	b.bin = bin
	b.start()
	pid := b.pid()
	l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
	l.progress(t, 10)
	if err := os.Rename(bin, bin+".good"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := b.ctl("upgrade")
	if err := os.Rename(bin+".good", bin); err != nil {
		t.Fatal(err)
	}
	if code != 1 || !strings.Contains(stderr, "timed out") {
		t.Errorf("ctl upgrade with a hanging binary: exit %d, stdout %q, stderr %q; want exit 1 and a timeout", code, stdout, stderr)
	}
	if got := b.pid(); got != pid {
		t.Errorf("pid file after a timed-out upgrade: %d, want %d", got, pid)
	}
	l.progress(t, 10)
	l.check(t)
}

// TestCtlUpgrade: `baton ctl upgrade` under load answers with the new PID
// once it serves; with a broken config it exits 1 with the config error;
// `status --json` parses and its generation counts upgrades.
func TestCtlUpgrade(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	good := func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) }
	b := startBaton(t, good)
	l := startLoad(t, b.addr(), loadSpec{GoGET: 4, Raw: 4, Post: 1})
	l.progress(t, 10)

	genOf := func() int {
		// --config finds the socket in the configuration.
		out, errOut, code := runBaton(t, "ctl", "--config", b.cfgPath, "status", "--json")
		if code != 0 {
			t.Fatalf("ctl status --json: exit %d: %s", code, errOut)
		}
		var resp control.Response
		if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Status == nil {
			t.Fatalf("ctl status --json output does not parse (%v): %s", err, out)
		}
		return resp.Status.Generation
	}
	gen := genOf()
	for i := 0; i < 3; i++ {
		old := b.pid()
		out, errOut, code := b.ctl("upgrade")
		if code != 0 {
			t.Fatalf("ctl upgrade: exit %d: %s %s", code, out, errOut)
		}
		newPID := b.pid()
		if newPID == old || !strings.Contains(out, "pid "+strconv.Itoa(newPID)+" ") {
			t.Errorf("ctl upgrade said %q; pid file %d (was %d)", out, newPID, old)
		}
		if g := genOf(); g != gen+1 {
			t.Errorf("generation after upgrade: got %d, want %d", g, gen+1)
		}
		gen++
		l.progress(t, 10)
	}

	b.writeConfig(good(b.dir) + "\n[[backend]]\nname = \"web1\"\nurl = \"http://127.0.0.1:1\"\n")
	old := b.pid()
	out, errOut, code := b.ctl("upgrade")
	if code != 1 || !strings.Contains(errOut, "baton.toml") || !strings.Contains(errOut, "duplicate backend name") {
		t.Errorf("ctl upgrade with a broken config: exit %d, stdout %q, stderr %q; want exit 1 naming the file and the problem", code, out, errOut)
	}
	if got := b.pid(); got != old {
		t.Errorf("pid file after a refused upgrade: %d, want %d", got, old)
	}
	l.progress(t, 10)
	l.check(t)
}

// TestSighupCoalesced: SIGHUPs sent while an upgrade runs join it: one
// new generation, and the log says so.
func TestSighupCoalesced(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) })
	l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
	l.progress(t, 10)
	old := b.pid()
	for i := 0; i < 5; i++ {
		if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	newPID := b.waitNewPID(old)
	waitFor(t, 10*time.Second, "the old process to account for every SIGHUP", func() bool {
		log := b.log()
		return strings.Contains(log, "coalesced") || strings.Contains(log, "SIGHUP ignored")
	})
	// The old process may still answer on the shared control socket for a
	// moment while it stops: ask until the new one does.
	var st control.Status
	b.waitStatus(10*time.Second, "the new process to answer status", func(s control.Status) bool {
		st = s
		return s.PID == newPID
	})
	if st.Generation != 2 {
		t.Errorf("generation after 5 quick SIGHUPs: got %d, want 2", st.Generation)
	}
	l.progress(t, 10)
	l.check(t)
}
