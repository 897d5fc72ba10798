package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/control"
	"github.com/batonproxy/baton/handoff"
)

// TestCtlTimeout: `baton ctl` waits by command (it used to wait 10 minutes
// for anything), longer when the configuration bounds a command by more.
func TestCtlTimeout(t *testing.T) {
	cfg := &config.Config{
		Handoff: handoff.Options{UpgradeTimeout: 5 * time.Minute},
		Backends: []backends.Config{
			{Name: "a", Kind: backends.KindApache, RestartTimeout: 3 * time.Minute, DrainTimeout: 10 * time.Second},
			{Name: "b", Kind: backends.KindLighttpd, RestartTimeout: 5 * time.Minute, DrainTimeout: 2 * time.Minute},
			{Name: "c", Kind: backends.KindNone, RestartTimeout: time.Hour},
		},
	}
	for _, tc := range []struct {
		name string
		req  control.Request
		cfg  *config.Config
		want time.Duration
	}{
		{"status", control.Request{Cmd: control.CmdStatus}, nil, 10 * time.Second},
		{"status with config", control.Request{Cmd: control.CmdStatus}, cfg, 10 * time.Second},
		{"upgrade", control.Request{Cmd: control.CmdUpgrade}, nil, time.Minute},
		{"upgrade, long upgrade_timeout", control.Request{Cmd: control.CmdUpgrade}, cfg, 5*time.Minute + 30*time.Second},
		{"stop", control.Request{Cmd: control.CmdStop}, cfg, time.Minute},
		{"drain", control.Request{Cmd: control.CmdDrain, Backend: "a"}, cfg, time.Minute},
		{"drain, long drain_timeout", control.Request{Cmd: control.CmdDrain, Backend: "b"}, cfg, 2*time.Minute + 30*time.Second},
		{"undrain", control.Request{Cmd: control.CmdUndrain, Backend: "b"}, cfg, time.Minute},
		{"restart", control.Request{Cmd: control.CmdRestart, Backend: "a"}, nil, 2 * time.Minute},
		{"restart, long restart_timeout", control.Request{Cmd: control.CmdRestart, Backend: "a"}, cfg, 3*time.Minute + 30*time.Second},
		{"restart --all", control.Request{Cmd: control.CmdRestart, All: true}, nil, 10 * time.Minute},
		{"restart --all, restartable only", control.Request{Cmd: control.CmdRestart, All: true}, cfg, 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if g, e := ctlTimeout(tc.req, tc.cfg), tc.want; g != e {
				t.Errorf("ctlTimeout = %s, want %s", g, e)
			}
		})
	}
}

// TestCtlDefaults: with neither --config nor --socket, `baton ctl` reads
// the packaged configuration if it exists, else talks to the packaged
// socket, and its errors say which one it used; --if-running exits 0 when
// no baton runs there. `baton check` and `baton run` read the packaged
// configuration without --config. (The packaged paths are pointed into a
// temporary directory; TestDebPackage runs the installed binary with the
// real ones.)
func TestCtlDefaults(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", lt.URL)) })
	dir := t.TempDir()
	oldConfig, oldSocket := defaultConfig, defaultSocket
	t.Cleanup(func() { defaultConfig, defaultSocket = oldConfig, oldSocket })
	defaultConfig, defaultSocket = filepath.Join(dir, "etc", "baton.toml"), filepath.Join(dir, "run", "baton.sock")
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays; nothing accepts on it, as after a crash

	ctl := func(args ...string) (string, string, int) {
		var o, e bytes.Buffer
		code := run(append([]string{"ctl"}, args...), &o, &e)
		return o.String(), e.String(), code
	}
	for _, tc := range []struct {
		name     string
		config   string // written to the default configuration; "" for none
		args     []string
		code     int
		out, err string // contained in stdout, stderr ("" for empty)
		noStderr bool
	}{
		{"no default configuration: the default socket", "", []string{"status"}, 1, "",
			"connect to " + defaultSocket + ": dial unix " + defaultSocket + ": connect: no such file or directory (is baton running?)\n" +
				"baton ctl: " + defaultSocket + " is the default socket (" + defaultConfig + " does not exist); --socket PATH or --config FILE to choose another", false},
		{"no baton at the default socket, --if-running", "", []string{"--if-running", "reopen-logs"}, 0, "", "", true},
		{"the default configuration names the running baton", "CONFIG", []string{"status"}, 0, "pid " + fmt.Sprint(b.pid()), "", true},
		{"the default configuration names a socket nobody listens on", "STALE", []string{"status"}, 1, "",
			"connect: connection refused (is baton running?)\nbaton ctl: " + stale + " is control.socket in " + defaultConfig + ", the default configuration", false},
		{"stale socket, --if-running", "STALE", []string{"--if-running", "reopen-logs"}, 0, "", "", true},
		{"--socket wins over the default configuration", "STALE", []string{"--socket", b.socket, "status"}, 0, "pid " + fmt.Sprint(b.pid()), "", true},
		{"broken default configuration", "[proxy]\nlisten = 1\n", []string{"status"}, 1, "",
			"(" + defaultConfig + " is the default configuration; --socket PATH reaches baton without it)", false},
		{"--if-running does not hide a broken configuration", "[proxy]\nlisten = 1\n", []string{"--if-running", "reopen-logs"}, 1, "", "proxy.listen", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(filepath.Dir(defaultConfig))
			if tc.config != "" {
				if err := os.MkdirAll(filepath.Dir(defaultConfig), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			switch tc.config {
			case "":
			case "CONFIG":
				copyFile(t, b.cfgPath, defaultConfig, 0o644)
			default:
				text := tc.config
				if text == "STALE" {
					text = fmt.Sprintf("[proxy]\nlisten = [\"127.0.0.1:0\"]\n[control]\nsocket = %q\n%s", stale, backendTOML("web1", lt.URL))
				}
				if err := os.WriteFile(defaultConfig, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, errOut, code := ctl(tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) || (tc.noStderr && errOut != "") {
				t.Errorf("baton ctl %v: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q", tc.args, code, out, errOut, tc.code, tc.out, tc.err)
			}
		})
	}

	t.Run("check and run", func(t *testing.T) {
		os.RemoveAll(filepath.Dir(defaultConfig))
		var o, e bytes.Buffer
		want := "baton check: no --config FILE given, and the default configuration " + defaultConfig + ": no such file or directory"
		if code := run([]string{"check"}, &o, &e); code != 2 || !strings.Contains(e.String(), want) {
			t.Errorf("check without a configuration: exit %d, stderr %q; want 2 and %q", code, e.String(), want)
		}
		o.Reset()
		e.Reset()
		want = "baton run: no --config FILE given, and the default configuration " + defaultConfig + ": no such file or directory"
		if code := run([]string{"run"}, &o, &e); code != 2 || !strings.Contains(e.String(), want) {
			t.Errorf("run without a configuration: exit %d, stderr %q; want 2 and %q", code, e.String(), want)
		}
		if err := os.MkdirAll(filepath.Dir(defaultConfig), 0o755); err != nil {
			t.Fatal(err)
		}
		text := fmt.Sprintf("[proxy]\nlisten = [\"127.0.0.1:0\"]\n%s", backendTOML("web1", lt.URL))
		if err := os.WriteFile(defaultConfig, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		o.Reset()
		e.Reset()
		want = defaultConfig + ": ok (1 listener(s), 1 backend(s))"
		if code := run([]string{"check"}, &o, &e); code != 0 || !strings.Contains(o.String(), want) {
			t.Errorf("check with the default configuration: exit %d, stdout %q, stderr %q; want 0 and %q", code, o.String(), e.String(), want)
		}
	})
}
