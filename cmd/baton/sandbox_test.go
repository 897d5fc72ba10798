package main

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/batonproxy/baton/backends/backendtest"
)

// unitCapabilities is the CapabilityBoundingSet of packaging/baton.service
// in setpriv's syntax ("-all,+kill,+sys_ptrace,..."), without the ones
// named in drop.
func unitCapabilities(t *testing.T, drop ...string) string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/baton.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.+)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("packaging/baton.service has no CapabilityBoundingSet=")
	}
	out := []string{"-all"}
	for _, c := range strings.Fields(m[1]) {
		c = strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		dropped := false
		for _, d := range drop {
			dropped = dropped || d == c
		}
		if !dropped {
			out = append(out, "+"+c)
		}
	}
	return strings.Join(out, ",")
}

// startAs starts a server of kind with extra configuration; with extra (a
// lighttpd that changes to www-data), its log directory belongs to
// www-data, since lighttpd opens its error log after changing user.
func startAs(t *testing.T, kind, extra string) *backendtest.Server {
	t.Helper()
	backendtest.Require(t, kind)
	dir := t.TempDir()
	if extra != "" {
		u, err := user.Lookup("www-data")
		if err != nil {
			t.Skipf("no www-data user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		logs := filepath.Join(dir, "logs")
		if err := os.MkdirAll(logs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(logs, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	s, err := backendtest.Start(kind, dir, backendtest.Options{Extra: extra})
	if err != nil {
		t.Fatalf("start %s: %v", kind, err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop %s: %v", kind, err)
		}
	})
	return s
}

// TestUnitCapabilities: baton with the unit's capability bounding set, set
// by setpriv as systemd sets it (no systemd runs here to start the unit
// itself), checks, signals and restarts an Apache whose children run as
// www-data and a lighttpd that drops to www-data itself, graceful and
// stop-start (a server that stop-start starts gets the same bounded set):
// `baton check` passes without a warning, every restart succeeds, the
// server's PID or generation shows it, and no request fails. Without
// CAP_SYS_PTRACE in the set, baton cannot read a lighttpd's /proc/PID/exe
// after it changed user, and check refuses it: the capability is needed,
// and the identity check still holds when it is missing.
func TestUnitCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the capability bounding set needs root (CI=true)")
		}
		t.Skip("the capability bounding set needs root")
	}
	needTool(t, "setpriv", "util-linux")
	caps := unitCapabilities(t)
	t.Logf("setpriv --bounding-set %s", caps)
	const dropUser = "server.username = \"www-data\"\nserver.groupname = \"www-data\""
	for _, tc := range []struct {
		kind, method, extra string
	}{
		{backendtest.Apache, "graceful", ""},
		{backendtest.Apache, "stop-start", ""},
		{backendtest.Lighttpd, "graceful", dropUser},
		{backendtest.Lighttpd, "stop-start", dropUser},
	} {
		t.Run(tc.kind+"/"+tc.method, func(t *testing.T) {
			s := startAs(t, tc.kind, tc.extra)
			b := newBaton(t, func(dir string) string {
				return batonConfig(dir, "", restartable("web1", s, tc.method))
			})
			wrap := []string{"setpriv", "--bounding-set", caps, "--"}
			check := func(caps string) (string, int) {
				t.Helper()
				out, err := exec.Command("setpriv", "--bounding-set", caps, "--", batonBin, "check", "--config", b.cfgPath).CombinedOutput()
				if ee, ok := err.(*exec.ExitError); ok {
					return string(out), ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				return string(out), 0
			}
			if out, code := check(caps); code != 0 || strings.Contains(out, "warning") {
				t.Fatalf("baton check with the unit's capabilities: exit %d: %s", code, out)
			}
			if tc.extra != "" {
				out, code := check(unitCapabilities(t, "sys_ptrace"))
				if code != 1 || !strings.Contains(out, "exe unreadable") || !strings.Contains(out, "refusing to signal it") {
					t.Errorf("baton check without CAP_SYS_PTRACE: exit %d: %s; want exit 1, exe unreadable, refusing to signal it", code, out)
				}
			}
			b.wrap = wrap
			b.start()
			l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
			l.progress(t, 10)
			for i := 1; i <= 2; i++ {
				before := evidence(t, s, tc.method)
				if out, errOut, code := b.ctl("restart", "web1"); code != 0 {
					t.Fatalf("restart %d with the unit's capabilities: exit %d: %s %s", i, code, out, errOut)
				}
				if after := evidence(t, s, tc.method); after == before {
					t.Errorf("restart %d: %s evidence unchanged (%d): it did not restart", i, tc.method, after)
				}
				l.progress(t, 10)
			}
			l.check(t)
			if out, code := check(caps); code != 0 || strings.Contains(out, "warning") {
				t.Errorf("baton check after the restarts: exit %d: %s", code, out)
			}
		})
	}
}
