// Command bench compares baton with HAProxy and nginx as reverse proxies in
// front of one nginx backend, and measures baton's upgrades under load.
//
//	cd tools/bench && go run . -baton ../../bin/baton [-duration 10s] [-rounds 3] [-out BENCHMARKS.md] [-quick]
//		[-syscalls=true] [-syscall-duration 3s] [-idle-conns 10000]
//
// It needs wrk, haproxy and nginx (Debian: wrk haproxy nginx-light), and
// the go command, run inside this module (tools/bench, a module of its own so that nothing of it ships): it builds two reference
// programs from its own source, which are yardsticks, not products:
// internal/minproxy, a deliberately minimal Go reverse proxy measured next
// to the others as "go-minimal (reference)", and internal/tfref, a minimal
// github.com/cloudflare/tableflip program whose upgrades are timed next to
// baton's. Every server runs on a free loopback port with its
// configuration, logs and PID files in a temporary directory that is
// removed at the end; nothing system-wide is touched.
//
// Each wrk run lasts -duration. The matrix measures 7 setups (direct, baton,
// baton with GOMAXPROCS=1, baton on net/http, HAProxy, nginx, go-minimal) x 2 files x 2
// connection counts, plus go-minimal with GOMAXPROCS=1 on small.txt at 50
// connections only, each -rounds times: 29 x rounds x duration of wall
// time, plus about two minutes of upgrade tests.
//
// Two more sections use the same servers or fresh instances of them, once
// each (not -rounds times): system calls per request, counted by strace -c
// (which needs strace, Debian package strace, and ptrace rights) during
// one -syscall-duration wrk run per proxy, about 5 s each; and memory per
// idle keep-alive connection, for which fresh instances each get
// -idle-conns connections (RLIMIT_NOFILE is raised for that, which needs
// root above the hard limit), about 5-10 s each. -syscalls=false and
// -idle-conns 0 leave them out.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	baton    string        // absolute path of the baton binary
	duration time.Duration // of each wrk run in the matrix
	rounds   int
	out      string
	quick    bool

	syscalls        bool          // count system calls per request under strace
	syscallDuration time.Duration // of each traced wrk run
	idleConns       int           // idle connections per proxy; 0: no idle-connection test
}

// tools are the absolute paths of the external programs used.
type tools struct {
	wrk, haproxy, nginx string
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	tl, err := findTools()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	code := runBench(ctx, opts, tl, stdout, stderr)
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "bench: interrupted; everything started was stopped")
		return 130
	}
	return code
}

// runBench starts the servers, measures, reports, and stops everything it
// started whatever happens.
func runBench(ctx context.Context, opts options, tl tools, stdout, stderr io.Writer) int {
	started := time.Now()
	b, err := newBench(opts, tl, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer b.close()

	if err := b.buildRefs(ctx); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := b.startAll(ctx); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	matrix, err := b.measureMatrix(ctx)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	sc := syscallResults{skipped: "-syscalls=false"}
	if opts.syscalls {
		sc = b.measureSyscalls(ctx)
		if ctx.Err() != nil {
			return 1
		}
	}
	idle := idleResults{conns: opts.idleConns}
	if opts.idleConns > 0 {
		idle = b.measureIdle(ctx)
		if ctx.Err() != nil {
			return 1
		}
	}
	upg := b.measureUpgrades(ctx)
	if ctx.Err() != nil {
		return 1
	}
	tlsRes := b.measureTLS(ctx)
	if ctx.Err() != nil {
		return 1
	}
	logs := b.batonLogSummary()
	info := collectMachineInfo(ctx, tl, opts.baton)
	md := renderReport(info, opts, matrix, sc, idle, upg, logs, time.Since(started)) + renderTLS(tlsRes, opts)

	fmt.Fprint(stdout, md)
	code := 0
	if opts.out != "" {
		if err := os.WriteFile(opts.out, []byte(md), 0o644); err != nil {
			fmt.Fprintf(stderr, "bench: write report: %v\n", err)
			code = 1
		}
	}
	if matrix.failed() || sc.failed() || idle.failed() || upg.failed() || tlsRes.failed() {
		fmt.Fprintln(stderr, "bench: some measurements failed; see the report")
		code = 1
	}
	fmt.Fprintf(stderr, "bench: done in %s\n", time.Since(started).Round(time.Second))
	return code
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.baton, "baton", "", "baton `binary` to benchmark (required), e.g. bin/baton")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk run (whole seconds)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds over all setups; the report gives medians")
	fs.StringVar(&o.out, "out", "", "also write the Markdown report to this `file`")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: -duration 3s -rounds 1")
	fs.BoolVar(&o.syscalls, "syscalls", true, "count system calls per request with strace -c (one traced wrk run per proxy)")
	fs.DurationVar(&o.syscallDuration, "syscall-duration", 3*time.Second, "length of each traced wrk run (whole seconds)")
	fs.IntVar(&o.idleConns, "idle-conns", 10000, "idle keep-alive connections per proxy in the memory test; 0 skips it")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("bench: unexpected arguments %q", fs.Args())
	}
	if o.quick {
		o.duration, o.rounds = 3*time.Second, 1
	}
	if o.baton == "" {
		return o, errors.New("bench: -baton PATH is required (build it: go build -o bin/baton ./cmd/baton)")
	}
	abs, err := filepath.Abs(o.baton)
	if err != nil {
		return o, fmt.Errorf("bench: -baton: %w", err)
	}
	if fi, err := os.Stat(abs); err != nil {
		return o, fmt.Errorf("bench: -baton: %w", err)
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return o, fmt.Errorf("bench: -baton: %s is not an executable file", abs)
	}
	o.baton = abs
	o.duration = o.duration.Round(time.Second)
	if o.duration < time.Second {
		return o, errors.New("bench: -duration must be at least 1s (wrk counts whole seconds)")
	}
	if o.rounds < 1 {
		return o, errors.New("bench: -rounds must be at least 1")
	}
	o.syscallDuration = o.syscallDuration.Round(time.Second)
	if o.syscalls && o.syscallDuration < time.Second {
		return o, errors.New("bench: -syscall-duration must be at least 1s (wrk counts whole seconds)")
	}
	if o.idleConns < 0 || o.idleConns > 100000 {
		return o, fmt.Errorf("bench: -idle-conns must be between 0 and 100000, got %d", o.idleConns)
	}
	return o, nil
}

// findTools looks the external programs up in PATH and then in /usr/sbin,
// where Debian puts nginx and haproxy.
func findTools() (tools, error) {
	var t tools
	for _, x := range []struct {
		name string
		dst  *string
		pkg  string
	}{
		{"wrk", &t.wrk, "wrk"},
		{"haproxy", &t.haproxy, "haproxy"},
		{"nginx", &t.nginx, "nginx-light"},
	} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			p, err = exec.LookPath(filepath.Join("/usr/sbin", x.name))
		}
		if err != nil {
			return t, fmt.Errorf("bench: %s not found (apt-get install %s): %w", x.name, x.pkg, err)
		}
		*x.dst = p
	}
	return t, nil
}
