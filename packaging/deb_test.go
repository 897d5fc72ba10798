package packaging

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// require finds a command, skipping the test without it, except under
// CI=true, where a missing tool is a failure.
func require(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (CI=true: a missing tool is a failure; make deps-test installs it)", name)
		}
		t.Skipf("%s not found", name)
	}
	return p
}

func run(t *testing.T, dir string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustRun(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	out, err := run(t, dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// debSwitch is the environment variable that lets TestDebPackage install
// a real package on this machine; `make test` and .ci/run set it.
const debSwitch = "BATON_TEST_DEB"

// maxExposure bounds `systemd-analyze security` of the unit (0 to 100,
// its overall exposure times ten): 3.6 when written, 9.8 without the
// sandbox.
const maxExposure = 40

// TestDebPackage builds the package with `make deb`, installs it with
// dpkg -i, checks what it installed (binary and version, the shipped
// configuration passes `baton check`, ctl, check and run default to it,
// the unit passes `systemd-analyze verify` and its exposure in
// `systemd-analyze security` is at most maxExposure, the conffiles are
// registered, the logrotate file parses, the man page is there) and
// purges it, checking nothing is left. No service is started: there is no
// systemd running here, and the maintainer scripts only talk to a running
// one. It installs a package, so it runs only with BATON_TEST_DEB=1; under
// CI=true the switch must be set.
func TestDebPackage(t *testing.T) {
	if os.Getenv(debSwitch) != "1" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s=1 is not set under CI=true: the package test must run in CI (make test sets it)", debSwitch)
		}
		t.Skipf("installs a real package: set %s=1 to run it (make test does)", debSwitch)
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the package is amd64")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("installing the package needs root (CI=true)")
		}
		t.Skip("installing the package needs root")
	}
	for _, tool := range []string{"make", "dpkg", "dpkg-deb", "dpkg-query", "systemd-analyze", "gzip", "logrotate"} {
		require(t, tool)
	}
	if out, err := run(t, "", "dpkg-query", "-W", "-f=${Status}", "baton"); err == nil && strings.Contains(out, "installed") {
		t.Skipf("a baton package is already installed here (%s); not touching it", out)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dist := t.TempDir()
	const version = "0.0.1+test"
	mustRun(t, root, "make", "deb", "DIST="+dist, "VERSION="+version, "COMMIT=0123456789abcdef")
	deb := filepath.Join(dist, "baton_"+version+"_amd64.deb")
	info := mustRun(t, "", "dpkg-deb", "--info", deb)
	for _, want := range []string{"Package: baton", "Version: " + version, "Architecture: amd64", "postinst", "prerm", "postrm", "conffiles"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}

	t.Cleanup(func() {
		if out, err := run(t, "", "dpkg", "--purge", "baton"); err != nil {
			t.Errorf("cleanup: dpkg --purge baton: %v\n%s", err, out)
		}
	})
	mustRun(t, "", "dpkg", "-i", deb)

	out := mustRun(t, "", "/usr/bin/baton", "version")
	if !regexp.MustCompile(`^baton 0\.0\.1\+test \(commit 0123456789abcdef, go1\.\d+`).MatchString(out) {
		t.Errorf("baton version: %q", out)
	}
	if out := mustRun(t, "", "/usr/bin/baton", "help"); !strings.Contains(out, "soak") {
		t.Errorf("baton help: %q", out)
	}
	// The shipped configuration passes the runtime checks on a machine
	// where nothing else runs (listen address free, no restartable
	// backend), with a warning that nothing answers on 127.0.0.1:8081
	// (unless something does here); without --config, check reads it too.
	down := true
	if c, err := net.DialTimeout("tcp", "127.0.0.1:8081", time.Second); err == nil {
		c.Close()
		down = false
	}
	const warning = "warning: /etc/baton/baton.toml: backend[0].url: nothing accepts connections at 127.0.0.1:8081"
	for _, args := range [][]string{{"check", "--config", "/etc/baton/baton.toml"}, {"check"}} {
		out, err := run(t, "", "/usr/bin/baton", args...)
		if err != nil || !strings.Contains(out, "/etc/baton/baton.toml: ok (1 listener(s), 1 backend(s)") || strings.Contains(out, warning) != down {
			t.Errorf("baton %s on the shipped configuration (backend down: %v): %v\n%s", strings.Join(args, " "), down, err, out)
		}
	}
	if out, err := run(t, "", "/usr/bin/baton", "check", "--strict"); down && (err == nil || !strings.Contains(out, "--strict fails on warnings")) {
		t.Errorf("baton check --strict with nothing on 127.0.0.1:8081: %v, want exit 1\n%s", err, out)
	}
	// ctl without flags: the packaged configuration's socket, and says so.
	out, err = run(t, "", "/usr/bin/baton", "ctl", "status")
	for _, want := range []string{"connect to /run/baton/baton.sock", "(is baton running?)",
		"/run/baton/baton.sock is control.socket in /etc/baton/baton.toml, the default configuration"} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("baton ctl status with no baton running: %v, want exit 1 and %q\n%s", err, want, out)
		}
	}
	if out, err := run(t, "", "/usr/bin/baton", "ctl", "--if-running", "reopen-logs"); err != nil || out != "" {
		t.Errorf("baton ctl --if-running reopen-logs with no baton running: %v %q, want exit 0 and nothing", err, out)
	}
	conffiles := mustRun(t, "", "dpkg-query", "-W", "-f=${Conffiles}", "baton")
	for _, want := range []string{"/etc/baton/baton.toml", "/etc/logrotate.d/baton"} {
		if !strings.Contains(conffiles, want) {
			t.Errorf("conffiles: %q, want %s", conffiles, want)
		}
	}
	if fi, err := os.Stat("/var/log/baton"); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Errorf("/var/log/baton: %v %v, want a directory with mode 0750", fi, err)
	}
	// logrotate parses the shipped file (-d: what it would do, nothing done).
	if out, err := run(t, "", "logrotate", "-d", "-s", filepath.Join(t.TempDir(), "state"), "/etc/logrotate.d/baton"); err != nil ||
		!strings.Contains(out, "/var/log/baton/access.log") || strings.Contains(out, "error:") {
		t.Errorf("logrotate -d /etc/logrotate.d/baton: %v\n%s", err, out)
	}
	unit := "/lib/systemd/system/baton.service"
	text, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "RuntimeDirectory=baton", "LogsDirectory=baton",
		"ExecStartPre=/usr/bin/baton check --config /etc/baton/baton.toml", "ExecStart=/usr/bin/baton run",
		"After=network-online.target apache2.service lighttpd.service"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("%s lacks %q", unit, want)
		}
	}
	// Offline: no systemd needs to run. It checks the syntax, the
	// directives and that the executables exist.
	if out, err := run(t, "", "systemd-analyze", "verify", unit); err != nil || strings.Contains(out, "baton.service") {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
	out, err = run(t, "", "systemd-analyze", "security", "--offline=true", fmt.Sprintf("--threshold=%d", maxExposure), unit)
	score := regexp.MustCompile(`Overall exposure level for baton.service: ([0-9.]+)`).FindStringSubmatch(out)
	if err != nil || score == nil {
		t.Errorf("systemd-analyze security --offline=true --threshold=%d %s: %v, want the exposure at most %.1f\n%s", maxExposure, unit, err, float64(maxExposure)/10, out)
	} else {
		t.Logf("systemd-analyze security: exposure %s (at most %.1f)", score[1], float64(maxExposure)/10)
	}
	if _, err := os.Stat("/usr/share/man/man1/baton.1.gz"); err != nil {
		t.Errorf("man page: %v", err)
	}

	mustRun(t, "", "dpkg", "--purge", "baton")
	for _, p := range []string{"/usr/bin/baton", unit, "/etc/baton/baton.toml", "/etc/baton", "/etc/logrotate.d/baton",
		"/var/log/baton", "/usr/share/man/man1/baton.1.gz", "/usr/share/doc/baton"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after dpkg --purge", p)
		}
	}
	if out, _ := run(t, "", "dpkg-query", "-W", "-f=${Status}", "baton"); strings.Contains(out, "installed") {
		t.Errorf("still installed after purge: %s", out)
	}
}
