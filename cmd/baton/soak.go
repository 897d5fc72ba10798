package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/soak"
)

const soakUsage = `usage: baton soak --target URL [flags]
       baton soak --scenario FILE [flags]

Loads URL (keep-alive, constant rate) while upgrading baton and restarting
its backends through the control socket, or runs a scenario file (load
shape, targets, timed events, pass criteria); prints a summary and exits 1
if a criterion (by default: no failed request) or an event failed.
With --compare-direct, the same load and events run first straight to the
servers, without baton, and the report shows both side by side.
Ctrl-C stops the load, waits for events under way, and writes the reports.

`

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdSoak(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton soak", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(stderr, soakUsage); fs.PrintDefaults() }
	var (
		scenario     = fs.String("scenario", "", "scenario `file` (TOML): load, targets, events, pass criteria; excludes the load flags")
		target       = fs.String("target", "", "base `URL` to load, e.g. http://127.0.0.1:8080/")
		paths        stringList
		targetsFile  = fs.String("targets", "", "vegeta targets `file` (http format) instead of --target/--path")
		method       = fs.String("method", "GET", "HTTP method for --target")
		bodyFile     = fs.String("body", "", "request body `file` for --target (e.g. with --method POST)")
		rate         = fs.Int("rate", soak.DefaultRate, "requests per second; 0 = as fast as --workers allow")
		rampTo       = fs.Int("ramp-to", 0, "raise the rate linearly from --rate to this over --duration")
		workers      = fs.Int("workers", soak.DefaultWorkers, "concurrent clients")
		maxWorkers   = fs.Int("max-workers", soak.DefaultMaxWorkers, "at a paced rate, never more clients than this (a slow target lowers the rate instead)")
		duration     = fs.Duration("duration", soak.DefaultDuration, "how long to load")
		timeout      = fs.Duration("timeout", soak.DefaultTimeout, "per-request timeout")
		socket       = fs.String("socket", "", "baton's control socket `path`, for events")
		cfgPath      = configFlag(fs)
		upgradeEvery = fs.Duration("upgrade-every", 0, "upgrade baton this often (0: never)")
		restartEvery = fs.Duration("restart-every", 0, "restart a backend this often (0: never)")
		restart      stringList
		maxFailed    = fs.Int("max-failed", 0, "pass with at most this many failed requests")
		maxP99       = fs.Duration("max-p99", 0, "pass only with p99 latency at most this (0: no limit)")
		maxHold      = fs.Duration("max-hold", 0, "pass only if baton held no request longer than this (0: no limit)")
		direct       stringList
		reportPath   = fs.String("report", "", "write a self-contained HTML report to `file`")
		jsonPath     = fs.String("json", "", "write the figures as JSON to `file` (schema_version 1)")
		outputPath   = fs.String("output", "", "write every result to `file` in vegeta's encoding (vegeta report, vegeta plot); a direct run goes to FILE with .direct before its extension")
		junitPath    = fs.String("junit", "", "write a JUnit XML report to `file`: a test case per criterion and per event")
		progress     = fs.Bool("progress", false, "print a progress line every second even if stderr is not a terminal")
		caCert       = fs.String("cacert", "", "trust the CA certificates in PEM `file` for https:// targets")
		insecure     = fs.Bool("insecure", false, "do not verify https:// targets' certificates")
		h2           = fs.Bool("h2", false, "speak HTTP/2 to https:// targets")
		wsProbes     = fs.Int("ws", 0, "keep `N` WebSocket probes open to --ws-path (an echo endpoint) on the target's host")
		wsPath       = fs.String("ws-path", "/ws", "path of the WebSocket echo endpoint for --ws")
	)
	fs.Var(&paths, "path", "path to request under --target (repeatable)")
	fs.Var(&restart, "restart", "backend `name` to restart (repeatable; default: every restartable one, in turn)")
	fs.Var(&direct, "compare-direct", "run first straight to the server at `URL` (repeatable or comma-separated: the backends), then through baton; the report compares them")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "baton soak: unexpected arguments %q\n", fs.Args())
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "baton soak: %v\n", err)
		return code
	}

	var opts soak.Options
	var directURLs []string
	for _, d := range direct {
		for _, u := range strings.Split(d, ",") {
			if u = strings.TrimSpace(u); u != "" {
				directURLs = append(directURLs, u)
			}
		}
	}
	if *scenario != "" {
		for _, name := range []string{"target", "path", "targets", "method", "body", "rate", "ramp-to", "workers", "max-workers", "duration",
			"timeout", "upgrade-every", "restart-every", "restart", "max-failed", "max-p99", "max-hold"} {
			if set[name] {
				return fail(2, fmt.Errorf("--%s and --scenario: the scenario file says that", name))
			}
		}
		sc, err := soak.LoadScenario(*scenario)
		if err != nil {
			return fail(2, err)
		}
		opts = sc.Options
		if *socket == "" {
			*socket = sc.Socket
		}
		if *cfgPath == "" {
			*cfgPath = sc.Config
		}
		if len(directURLs) == 0 {
			directURLs = sc.Direct
		}
	} else {
		targets, err := soakTargets(*target, paths, *targetsFile, *method, *bodyFile)
		if err != nil {
			return fail(2, err)
		}
		opts = soak.Options{
			Targets: targets, Rate: *rate, RampTo: *rampTo, Workers: *workers, MaxWorkers: *maxWorkers, Duration: *duration, Timeout: *timeout,
			UpgradeEvery: *upgradeEvery, RestartEvery: *restartEvery, Restart: restart,
			Pass: soak.Criteria{MaxFailed: *maxFailed, MaxP99: *maxP99, MaxHold: *maxHold},
		}
	}
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return fail(1, err)
		}
		if *socket == "" {
			*socket = cfg.ControlSocket
		}
		opts.Backends = map[string]backends.Config{}
		for _, b := range cfg.Backends {
			opts.Backends[b.Name] = b
		}
	}
	opts.Socket = *socket
	opts.HTTP2, opts.WebSockets, opts.WSPath = *h2, *wsProbes, *wsPath
	if tlsCfg, err := soakTLS(*caCert, *insecure); err != nil {
		return fail(2, err)
	} else if tlsCfg != nil {
		opts.TLS = tlsCfg
	}
	if *progress || isTerminal(os.Stderr) {
		opts.Progress = stderr
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Everything a soak would stop on is checked before any load starts.
	if err := soak.Check(ctx, &opts); err != nil {
		return fail(2, err)
	}
	// After the first Ctrl-C the load stops; a second one ends the process.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			stop()
			fmt.Fprintln(stderr, "\nbaton soak: interrupted: stopping the load, waiting for events under way (Ctrl-C again to quit at once)")
		case <-done:
		}
	}()
	defer func() { close(done); wg.Wait() }()

	var closers []func() error
	create := func(path string) (io.Writer, error) {
		if path == "" {
			return nil, nil
		}
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		closers = append(closers, f.Close)
		return f, nil
	}
	out, err := create(*outputPath)
	if err != nil {
		return fail(1, err)
	}
	if out != nil {
		opts.Output = out
	}
	var rep *soak.Report
	if len(directURLs) > 0 {
		var directOut io.Writer
		if *outputPath != "" {
			ext := filepath.Ext(*outputPath)
			if directOut, err = create(strings.TrimSuffix(*outputPath, ext) + ".direct" + ext); err != nil {
				return fail(1, err)
			}
		}
		rep, err = soak.Compare(ctx, opts, directURLs, directOut)
	} else {
		rep, err = soak.Run(ctx, opts)
	}
	for _, c := range closers {
		if cerr := c(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if rep == nil {
		return fail(1, err)
	}
	code := 0
	if err != nil {
		fmt.Fprintf(stderr, "baton soak: %v\n", err)
		code = 1
	}
	rep.WriteSummary(stdout)
	for _, w := range []struct {
		path, what string
		write      func(io.Writer) error
	}{
		{*jsonPath, "figures", rep.WriteJSON},
		{*junitPath, "junit", rep.WriteJUnit},
		{*reportPath, "report", rep.WriteHTML},
	} {
		if w.path == "" {
			continue
		}
		if err := writeFile(w.path, w.write); err != nil {
			fmt.Fprintf(stderr, "baton soak: %v\n", err)
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: %s\n", w.what, w.path)
	}
	if *outputPath != "" {
		fmt.Fprintf(stdout, "results: %s (vegeta report %s)\n", *outputPath, *outputPath)
	}
	if !rep.Passed() {
		code = 1
	}
	return code
}

func soakTargets(base string, paths []string, file, method, bodyFile string) ([]vegeta.Target, error) {
	var body []byte
	if bodyFile != "" {
		var err error
		if body, err = os.ReadFile(bodyFile); err != nil {
			return nil, err
		}
	}
	if file != "" {
		if base != "" {
			return nil, fmt.Errorf("give --target or --targets, not both")
		}
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		ts, err := vegeta.ReadAllTargets(vegeta.NewHTTPTargeter(f, body, http.Header{}))
		if err != nil {
			return nil, fmt.Errorf("targets file %s: %w", file, err)
		}
		return ts, nil
	}
	if base == "" {
		return nil, fmt.Errorf("--target URL is required (e.g. --target http://127.0.0.1:8080/)")
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--target %q: want http://host:port/", base)
	}
	if len(paths) == 0 {
		paths = []string{""}
	}
	var out []vegeta.Target
	for _, p := range paths {
		t := vegeta.Target{Method: strings.ToUpper(method), URL: base, Body: bytes.Clone(body), Header: http.Header{}}
		if p != "" {
			t.URL = strings.TrimRight(base, "/") + "/" + strings.TrimLeft(p, "/")
		}
		out = append(out, t)
	}
	return out, nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
