package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/accesslog"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/control"
)

const checkUsage = `usage: baton check [--config FILE] [--strict]

Validates the configuration (default /etc/baton/baton.toml) and what it
needs on this machine. Errors, the configuration cannot work here: a key
or value that is wrong, a listen address in use by another program, a
directory baton cannot create its files in, a command that is not
installed, a PID file that names a live process that is not the backend's
server. Warnings, it works but not as meant right now: a backend that
nothing answers for, or whose PID file is missing or names no live
process (baton starts, holds its requests, then answers 503 until it is
up). Exit 0 when there is no error (warnings are printed), 1 when there is
one, or a warning with --strict; 2 for a usage error.
`

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton check", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	cfgPath := configFlag(fs)
	strict := fs.Bool("strict", false, "fail on warnings too")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "baton check: unexpected arguments %q\n", fs.Args())
		return 2
	}
	path, ok := configOrDefault(*cfgPath, "baton check", stderr)
	if !ok {
		return 2
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	r := checkRuntime(cfg)
	for _, e := range r.errors {
		fmt.Fprintf(stderr, "%v\n", e)
	}
	for _, w := range r.warnings {
		fmt.Fprintf(stderr, "warning: %v\n", w)
	}
	switch {
	case len(r.errors) > 0:
		return 1
	case len(r.warnings) > 0 && *strict:
		fmt.Fprintf(stderr, "%s: %d warning(s); --strict fails on warnings\n", path, len(r.warnings))
		return 1
	}
	n := len(cfg.Listen)
	for _, t := range cfg.TLS {
		n += len(t.Listen)
	}
	warned := ""
	if len(r.warnings) > 0 {
		warned = fmt.Sprintf(", %d warning(s)", len(r.warnings))
	}
	fmt.Fprintf(stdout, "%s: ok (%d listener(s), %d backend(s)%s)\n", path, n, len(cfg.Backends), warned)
	return 0
}

// checkResult is what checkRuntime found: errors (the configuration
// cannot work on this machine) and warnings (it works, but a backend is
// down right now).
type checkResult struct {
	errors, warnings []error
}

// backendDialTimeout bounds the connection check of one backend.
const backendDialTimeout = time.Second

// checkRuntime checks what a valid file can still get wrong on this
// machine: directories baton cannot create its files in, listen addresses
// in use by someone other than the running baton, commands of restartable
// backends, their PID files, and whether each backend accepts connections.
//
// A backend that is down is a warning, not an error: `baton run` starts
// without it (requests wait up to hold_timeout, then get 503) and readmits
// it once it is healthy, and the unit's ExecStartPre must not keep baton
// down at boot or after a backend crashed. A PID file that names a live
// process that is not the backend's server (another program, a baton, the
// same server on another port) is an error: every restart would refuse
// to signal it, and the cause is a wrong pid_file, process_exe or url, or
// a file that someone else wrote, which an operator must look at.
func checkRuntime(cfg *config.Config) checkResult {
	var r checkResult
	fail := func(key string, err error) {
		r.errors = append(r.errors, &config.Error{File: cfg.Path, Key: key, Err: err})
	}
	warn := func(key string, err error) {
		r.warnings = append(r.warnings, &config.Error{File: cfg.Path, Key: key, Err: err})
	}
	for _, d := range []struct{ key, dir string }{
		{"control.socket", dirOf(cfg.ControlSocket)},
		{"control.pid_file", dirOf(cfg.Handoff.PIDFile)},
		{"control.run_dir", cfg.RunDir},
	} {
		if d.dir == "" {
			continue
		}
		if err := writableDir(d.dir); err != nil {
			fail(d.key, err)
		}
	}
	held := runningListeners(cfg)
	type listen struct{ key, addr string }
	var all []listen
	for n, addr := range cfg.Listen {
		all = append(all, listen{fmt.Sprintf("proxy.listen[%d]", n), addr})
	}
	for n, t := range cfg.TLS {
		for m, addr := range t.Listen {
			all = append(all, listen{fmt.Sprintf("tls[%d].listen[%d]", n, m), addr})
		}
	}
	if a := cfg.Admin.Listen; a != "" {
		all = append(all, listen{"admin.listen", a})
	}
	for _, l := range all {
		ln, err := net.Listen("tcp", l.addr)
		if err == nil {
			ln.Close()
			continue
		}
		if errors.Is(err, syscall.EADDRINUSE) && held[l.addr] {
			continue // the running baton holds it and hands it on
		}
		fail(l.key, err)
	}
	if cfg.AccessLog != "" {
		if err := accesslog.Check(cfg.AccessLog); err != nil {
			fail("log.access", err)
		}
	}
	for n, b := range cfg.Backends {
		key := func(k string) string { return fmt.Sprintf("backend[%d].%s", n, k) }
		down := false
		if b.Restartable() {
			down = checkRestart(b, key, fail, warn)
		}
		if !down {
			checkReachable(b, key, warn)
		}
	}
	return r
}

// checkRestart checks what restarting backend b needs: its commands, and
// that its PID file names its server. It reports whether b is down (a
// warning said so).
func checkRestart(b backends.Config, key func(string) string, fail, warn func(string, error)) (down bool) {
	if len(b.RestartCommand) > 0 {
		if _, err := exec.LookPath(b.RestartCommand[0]); err != nil {
			fail(key("restart_command"), err)
		}
		if b.PIDFile == "" || b.ProcessExe == "" {
			return false
		}
	}
	if len(b.StartCommand) > 0 {
		if _, err := exec.LookPath(b.StartCommand[0]); err != nil {
			fail(key("start_command"), err)
		}
	}
	_, err := backends.CheckPIDFile(b)
	switch {
	case err == nil:
		return false
	case errors.Is(err, backends.ErrNotRunning):
		warn(key("pid_file"), fmt.Errorf("%w; baton starts without %s (its requests wait, then get 503) and cannot restart it until it runs", err, b.Name))
		return true
	default:
		fail(key("pid_file"), err)
		return false
	}
}

// checkReachable warns when nothing accepts connections at b's address.
func checkReachable(b backends.Config, key func(string) string, warn func(string, error)) {
	u, err := url.Parse(b.URL)
	if err != nil {
		return // Load validated it
	}
	c, err := net.DialTimeout("tcp", u.Host, backendDialTimeout)
	if err != nil {
		warn(key("url"), fmt.Errorf("nothing accepts connections at %s right now (%w); baton starts without %s (its requests wait, then get 503) and readmits it once it answers", u.Host, unwrapOp(err), b.Name))
		return
	}
	c.Close()
}

// unwrapOp is the reason in a net.OpError ("connection refused"), without
// the operation and addresses already said.
func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err
		}
		return oe.Err
	}
	return err
}

// runningListeners asks a baton already running with this configuration's
// control socket which addresses it serves.
func runningListeners(cfg *config.Config) map[string]bool {
	out := map[string]bool{}
	if cfg.ControlSocket == "" {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := control.Do(ctx, cfg.ControlSocket, control.Request{Cmd: control.CmdStatus})
	if err != nil || resp.Status == nil {
		return out
	}
	for _, a := range resp.Status.Listeners {
		out[a] = true
	}
	if resp.Status.Admin != "" {
		out[resp.Status.Admin] = true
	}
	return out
}

func dirOf(path string) string {
	if path == "" {
		return ""
	}
	return filepath.Dir(path)
}

// writableDir checks that dir, or the nearest ancestor that exists when dir
// is still to be created, is a directory in which this process may create
// files. access(2) has no side effects and reports EROFS for a read-only
// filesystem (as root, W_OK alone passes everywhere else).
func writableDir(dir string) error {
	d := filepath.Clean(dir)
	for {
		fi, err := os.Stat(d)
		switch {
		case err == nil && !fi.IsDir():
			return fmt.Errorf("%s is not a directory", d)
		case err == nil:
			if err := unix.Access(d, unix.W_OK|unix.X_OK); err != nil {
				return fmt.Errorf("%s: %w", d, err)
			}
			return nil
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			// To be created (MkdirAll), or under a file: look further up.
			parent := filepath.Dir(d)
			if parent == d {
				return fmt.Errorf("%s: %w", d, err)
			}
			d = parent
		default:
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fmt.Errorf("%s: %w", d, err)
		}
	}
}
