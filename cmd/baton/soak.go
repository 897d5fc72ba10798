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
	"strings"
	"syscall"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/soak"
)

const soakUsage = `usage: baton soak --target URL [flags]

Loads URL (keep-alive, constant rate) while upgrading baton and restarting
its backends through the control socket; prints a summary and exits 1 if any
request or event failed.

`

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdSoak(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton soak", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(stderr, soakUsage); fs.PrintDefaults() }
	var (
		target       = fs.String("target", "", "base `URL` to load, e.g. http://127.0.0.1:8080/")
		paths        stringList
		targetsFile  = fs.String("targets", "", "vegeta targets `file` (http format) instead of --target/--path")
		method       = fs.String("method", "GET", "HTTP method for --target")
		bodyFile     = fs.String("body", "", "request body `file` for --target (e.g. with --method POST)")
		rate         = fs.Int("rate", soak.DefaultRate, "requests per second; 0 = as fast as --workers allow")
		workers      = fs.Int("workers", soak.DefaultWorkers, "concurrent clients")
		duration     = fs.Duration("duration", soak.DefaultDuration, "how long to load")
		timeout      = fs.Duration("timeout", soak.DefaultTimeout, "per-request timeout")
		socket       = fs.String("socket", "", "baton's control socket `path`, for events")
		cfgPath      = configFlag(fs)
		upgradeEvery = fs.Duration("upgrade-every", 0, "upgrade baton this often (0: never)")
		restartEvery = fs.Duration("restart-every", 0, "restart a backend this often (0: never)")
		restart      stringList
		reportPath   = fs.String("report", "", "write a self-contained HTML report to `file`")
		jsonPath     = fs.String("json", "", "write the raw figures as JSON to `file`")
		progress     = fs.Bool("progress", false, "print a progress line every second even if stderr is not a terminal")
		caCert       = fs.String("cacert", "", "trust the CA certificates in PEM `file` for https:// targets")
		insecure     = fs.Bool("insecure", false, "do not verify https:// targets' certificates")
		h2           = fs.Bool("h2", false, "speak HTTP/2 to https:// targets")
		wsProbes     = fs.Int("ws", 0, "keep `N` WebSocket probes open to --ws-path (an echo endpoint) on the target's host")
		wsPath       = fs.String("ws-path", "/ws", "path of the WebSocket echo endpoint for --ws")
	)
	fs.Var(&paths, "path", "path to request under --target (repeatable)")
	fs.Var(&restart, "restart", "backend `name` to restart (repeatable; default: every restartable one, in turn)")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "baton soak: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *socket == "" && *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "baton soak: %v\n", err)
			return 1
		}
		*socket = cfg.ControlSocket
	}
	targets, err := soakTargets(*target, paths, *targetsFile, *method, *bodyFile)
	if err != nil {
		fmt.Fprintf(stderr, "baton soak: %v\n", err)
		return 2
	}
	opts := soak.Options{
		Targets: targets, Rate: *rate, Workers: *workers, Duration: *duration, Timeout: *timeout,
		Socket: *socket, UpgradeEvery: *upgradeEvery, RestartEvery: *restartEvery, Restart: restart,
		HTTP2: *h2, WebSockets: *wsProbes, WSPath: *wsPath,
	}
	if opts.TLS, err = soakTLS(*caCert, *insecure); err != nil {
		fmt.Fprintf(stderr, "baton soak: %v\n", err)
		return 2
	}
	if *progress || isTerminal(os.Stderr) {
		opts.Progress = stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := soak.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "baton soak: %v\n", err)
		return 1
	}
	rep.WriteSummary(stdout)
	if *jsonPath != "" {
		if err := writeFile(*jsonPath, rep.WriteJSON); err != nil {
			fmt.Fprintf(stderr, "baton soak: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "figures: %s\n", *jsonPath)
	}
	if *reportPath != "" {
		if err := writeFile(*reportPath, rep.WriteHTML); err != nil {
			fmt.Fprintf(stderr, "baton soak: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "report: %s\n", *reportPath)
	}
	if !rep.Passed() {
		return 1
	}
	return 0
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
