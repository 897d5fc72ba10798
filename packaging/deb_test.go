package packaging

import (
	"bytes"
	"context"
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

// TestDebPackage builds the package with `make deb`, installs it with
// dpkg -i, checks what it installed (binary and version, the shipped
// configuration passes `baton check`, the unit passes `systemd-analyze
// verify`, the conffile is registered, the man page is there) and purges
// it, checking nothing is left. No service is started: there is no systemd
// running here, and the maintainer scripts only talk to a running one.
func TestDebPackage(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the package is amd64")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("installing the package needs root (CI=true)")
		}
		t.Skip("installing the package needs root")
	}
	for _, tool := range []string{"make", "dpkg", "dpkg-deb", "dpkg-query", "systemd-analyze", "gzip"} {
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
	// where nothing else runs (listen address free, no restartable backend).
	if out, err := run(t, "", "/usr/bin/baton", "check", "--config", "/etc/baton/baton.toml"); err != nil {
		t.Errorf("baton check on the shipped configuration: %v\n%s", err, out)
	}
	if out := mustRun(t, "", "dpkg-query", "-W", "-f=${Conffiles}", "baton"); !strings.Contains(out, "/etc/baton/baton.toml") {
		t.Errorf("conffiles: %q, want /etc/baton/baton.toml", out)
	}
	unit := "/lib/systemd/system/baton.service"
	text, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "RuntimeDirectory=baton",
		"ExecStartPre=/usr/bin/baton check --config /etc/baton/baton.toml", "ExecStart=/usr/bin/baton run"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("%s lacks %q", unit, want)
		}
	}
	// Offline: no systemd needs to run. It checks the syntax, the
	// directives and that the executables exist.
	if out, err := run(t, "", "systemd-analyze", "verify", unit); err != nil || strings.Contains(out, "baton.service") {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
	if _, err := os.Stat("/usr/share/man/man1/baton.1.gz"); err != nil {
		t.Errorf("man page: %v", err)
	}

	mustRun(t, "", "dpkg", "--purge", "baton")
	for _, p := range []string{"/usr/bin/baton", unit, "/etc/baton/baton.toml", "/etc/baton", "/usr/share/man/man1/baton.1.gz", "/usr/share/doc/baton"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after dpkg --purge", p)
		}
	}
	if out, _ := run(t, "", "dpkg-query", "-W", "-f=${Status}", "baton"); strings.Contains(out, "installed") {
		t.Errorf("still installed after purge: %s", out)
	}
}
