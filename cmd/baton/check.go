package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
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

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton check", flag.ContinueOnError)
	cfgPath := configFlag(fs)
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "baton check: --config FILE is required")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err == nil {
		err = checkRuntime(cfg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	n := len(cfg.Listen)
	for _, t := range cfg.TLS {
		n += len(t.Listen)
	}
	fmt.Fprintf(stdout, "%s: ok (%d listener(s), %d backend(s))\n", *cfgPath, n, len(cfg.Backends))
	return 0
}

// checkRuntime checks what a valid file can still get wrong on this
// machine: directories baton cannot create its files in, listen addresses
// in use by someone other than the running baton, PID files and commands of
// restartable backends.
func checkRuntime(cfg *config.Config) error {
	for _, d := range []struct{ key, dir string }{
		{"control.socket", dirOf(cfg.ControlSocket)},
		{"control.pid_file", dirOf(cfg.Handoff.PIDFile)},
		{"control.run_dir", cfg.RunDir},
	} {
		if d.dir == "" {
			continue
		}
		if err := writableDir(d.dir); err != nil {
			return &config.Error{File: cfg.Path, Key: d.key, Err: err}
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
	for _, l := range all {
		ln, err := net.Listen("tcp", l.addr)
		if err == nil {
			ln.Close()
			continue
		}
		if errors.Is(err, syscall.EADDRINUSE) && held[l.addr] {
			continue // the running baton holds it and hands it on
		}
		return &config.Error{File: cfg.Path, Key: l.key, Err: err}
	}
	if a := cfg.Admin.Listen; a != "" {
		ln, err := net.Listen("tcp", a)
		if err == nil {
			ln.Close()
		} else if !errors.Is(err, syscall.EADDRINUSE) || !held[a] {
			return &config.Error{File: cfg.Path, Key: "admin.listen", Err: err}
		}
	}
	if cfg.AccessLog != "" {
		if err := accesslog.Check(cfg.AccessLog); err != nil {
			return &config.Error{File: cfg.Path, Key: "log.access", Err: err}
		}
	}
	for n, b := range cfg.Backends {
		if !b.Restartable() {
			continue
		}
		key := func(k string) string { return fmt.Sprintf("backend[%d].%s", n, k) }
		if len(b.RestartCommand) > 0 {
			if _, err := exec.LookPath(b.RestartCommand[0]); err != nil {
				return &config.Error{File: cfg.Path, Key: key("restart_command"), Err: err}
			}
			if b.PIDFile == "" || b.ProcessExe == "" {
				continue
			}
		}
		if len(b.StartCommand) > 0 {
			if _, err := exec.LookPath(b.StartCommand[0]); err != nil {
				return &config.Error{File: cfg.Path, Key: key("start_command"), Err: err}
			}
		}
		if _, err := backends.CheckPIDFile(b); err != nil {
			return &config.Error{File: cfg.Path, Key: key("pid_file"), Err: err}
		}
	}
	return nil
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
