package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// The files the backend serves, and their sizes.
var files = []struct {
	name string
	size int
}{
	{"small.txt", 100},
	{"16k.bin", 16384},
}

// Setup names, in the order they are measured in each round. The
// go-minimal setups are references, not products: see minproxy.
const (
	setupDirect    = "direct"
	setupBaton     = "baton"
	setupBaton1    = "baton (1 thread)"
	setupBatonObs  = "baton + access log + metrics"
	setupStdlib    = "baton (stdlib)"
	setupBatonLim  = "baton + least_conn + max_conns"
	setupHAProxy   = "haproxy"
	setupNginx     = "nginx"
	setupMinimal   = "go-minimal (reference)"
	setupMinimal1  = "go-minimal (reference, 1 thread)"
	progTableflip  = "tableflip-minimal (reference)"
	oneThreadEnv   = "GOMAXPROCS=1"
	minproxyBinary = "minproxy" // built from ./internal/minproxy
	tfrefBinary    = "tfref"    // built from ./internal/tfref
)

// cpuCell is the cell where the proxies' CPU time per request is measured,
// and the only one go-minimal (reference, 1 thread) runs in.
var cpuCell = cell{"small.txt", 50}

// setup is one way of reaching the backend: directly or through a proxy.
type setup struct {
	name string
	addr string // host:port wrk connects to
	proc *proc  // the proxy; nil for direct
	only *cell  // the one cell this setup is measured in; nil: every cell
}

// runsIn reports whether s is measured in cell c.
func (s *setup) runsIn(c cell) bool { return s.only == nil || *s.only == c }

// namedLog is a server's log file.
type namedLog struct{ name, path string }

// bench owns the temporary directory and every server started in it.
type bench struct {
	opts   options
	tools  tools
	dir    string
	log    io.Writer // progress
	procs  []*proc   // in start order
	setups []*setup  // in measuring order, direct first
	clkTck int       // clock ticks per second of /proc/PID/stat
	tckOK  bool      // clkTck came from getconf

	backendAddr string
	batonConfig string
	batonPID    string // PID file
	batonSocket string
	batonLogs   []namedLog // every baton instance's
	haproxyLog  string
	stopReaper  context.CancelFunc
	nofile      uint64 // RLIMIT_NOFILE, raised for the idle-connection test
	nofileErr   error  // raising it far enough failed
}

func newBench(opts options, tl tools, log io.Writer) (*bench, error) {
	dir, err := os.MkdirTemp("", "baton-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: temp dir: %w", err)
	}
	b := &bench{opts: opts, tools: tl, dir: dir, log: log}
	b.clkTck, b.tckOK = clockTicks()
	// nginx workers run as an unprivileged user when started as root, and
	// must read the document root below dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: temp dir: %w", err)
	}
	if opts.idleConns > 0 {
		// Before any server starts: they inherit it.
		n, err := raiseNofile(nofileWanted(opts.idleConns), nofileNeeded(opts.idleConns))
		b.nofile = n
		if err != nil {
			b.nofileErr = err
			fmt.Fprintf(log, "bench: %v (the idle-connection test will fail)\n", err)
		} else {
			fmt.Fprintf(log, "bench: RLIMIT_NOFILE %d for the bench and the servers it starts\n", n)
		}
	}
	if err := becomeSubreaper(); err != nil {
		fmt.Fprintf(log, "%v (old baton generations may stay zombies)\n", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopReaper = cancel
	go reapLoop(ctx)
	return b, nil
}

func reapLoop(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			reapOrphans()
		}
	}
}

// stopProc stops p, which the bench started, and forgets it.
func (b *bench) stopProc(p *proc) {
	if err := p.stop(10 * time.Second); err != nil {
		fmt.Fprintln(b.log, err)
	}
	for i, q := range b.procs {
		if q == p {
			b.procs = append(b.procs[:i], b.procs[i+1:]...)
			break
		}
	}
}

// close stops every server, proxies first, and removes the directory.
func (b *bench) close() {
	for i := len(b.procs) - 1; i >= 0; i-- {
		if err := b.procs[i].stop(10 * time.Second); err != nil {
			fmt.Fprintln(b.log, err)
		}
	}
	b.stopReaper()
	reapOrphans()
	if err := os.RemoveAll(b.dir); err != nil {
		fmt.Fprintf(b.log, "bench: remove %s: %v\n", b.dir, err)
	}
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

func (b *bench) path(name string) string { return filepath.Join(b.dir, name) }

// startAll starts the backend and the proxies in front of it.
func (b *bench) startAll(ctx context.Context) error {
	if err := b.writeFiles(); err != nil {
		return err
	}
	backend, addr, err := b.startServer(ctx, "backend nginx", b.startBackend)
	if err != nil {
		return err
	}
	b.backendAddr = addr
	b.setups = append(b.setups, &setup{name: setupDirect, addr: addr})
	for _, s := range []struct {
		name  string
		start func(port int) (*proc, error)
		only  *cell
	}{
		{setupBaton, b.startBaton, nil},
		{setupBaton1, b.startBaton1, nil},
		{setupBatonObs, b.startBatonObs, &cpuCell},
		{setupStdlib, b.startStdlib, nil},
		{setupBatonLim, b.startBatonLimits, &cpuCell},
		{setupHAProxy, b.startHAProxy, nil},
		{setupNginx, b.startNginxProxy, nil},
		{setupMinimal, b.startMinimal(setupMinimal, "go-minimal", nil), nil},
		{setupMinimal1, b.startMinimal(setupMinimal1, "go-minimal-1t", []string{oneThreadEnv}), &cpuCell},
	} {
		p, addr, err := b.startServer(ctx, s.name, s.start)
		if err != nil {
			return err
		}
		b.setups = append(b.setups, &setup{name: s.name, addr: addr, proc: p, only: s.only})
	}
	b.progress("backend nginx on %s (pid %d); temp dir %s", b.backendAddr, backend.pgid(), b.dir)
	for _, s := range b.setups[1:] {
		b.progress("%s on %s (pid %d)", s.name, s.addr, s.proc.pgid())
	}
	return nil
}

// startServer picks a free port, starts a server there and waits until it
// serves /small.txt; it tries other ports when the port was taken.
func (b *bench) startServer(ctx context.Context, name string, start func(port int) (*proc, error)) (*proc, string, error) {
	const attempts = 3
	var last error
	for i := 0; i < attempts; i++ {
		port, err := freePort()
		if err != nil {
			return nil, "", fmt.Errorf("bench: start %s: %w", name, err)
		}
		p, err := start(port)
		if err != nil {
			return nil, "", fmt.Errorf("bench: start %s: %w", name, err)
		}
		b.procs = append(b.procs, p)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = waitServing(ctx, p, "http://"+addr+"/small.txt", 15*time.Second)
		if err == nil {
			return p, addr, nil
		}
		last = fmt.Errorf("bench: start %s: %w", name, err)
		_ = p.stop(5 * time.Second)
		b.procs = b.procs[:len(b.procs)-1]
		if !strings.Contains(err.Error(), "in use") || ctx.Err() != nil {
			break
		}
	}
	return nil, "", last
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before the server binds it; startServer then tries again.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitServing polls url until it answers 200 with the small file, p exits
// or timeout passes.
func waitServing(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := checkClient(time.Second)
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("exited (%v): %s", p.waitErr, p.logTail())
		}
		last = getSmall(ctx, client, url)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not serving %s after %s: %v; log: %s", url, timeout, last, p.logTail())
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkClient makes an HTTP client that leaves no idle connection behind:
// baton holds a final stop for as long as an idle keep-alive connection
// stays open (up to its drain_timeout).
func checkClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
}

func getSmall(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || len(body) != files[0].size {
		return fmt.Errorf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	return nil
}

// writeFiles creates the backend's document root.
func (b *bench) writeFiles() error {
	root := b.path("www")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("bench: document root: %w", err)
	}
	for _, f := range files {
		data := make([]byte, f.size)
		for i := range data {
			data[i] = 'a' + byte(i%26)
		}
		data[len(data)-1] = '\n'
		if err := os.WriteFile(filepath.Join(root, f.name), data, 0o644); err != nil {
			return fmt.Errorf("bench: write %s: %w", f.name, err)
		}
	}
	return nil
}

// writeConfig renders tmpl with data into the temporary directory.
func (b *bench) writeConfig(name, tmpl string, data any) (string, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("config %s: %w", name, err)
	}
	var sb strings.Builder
	if err := t.Execute(&sb, data); err != nil {
		return "", fmt.Errorf("config %s: %w", name, err)
	}
	p := b.path(name)
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		return "", fmt.Errorf("config %s: %w", name, err)
	}
	return p, nil
}

// nginxMain is what both nginx configurations share: one worker in the
// foreground, PID file, logs and temporary files in the bench's directory.
const nginxMain = `worker_processes 1;
daemon off;
pid {{.Dir}}/{{.Name}}.pid;
error_log {{.Dir}}/{{.Name}}-error.log warn;
{{with .NofileLimit}}worker_rlimit_nofile {{.}};
{{end}}events { worker_connections {{.WorkerConns}}; }
`

const nginxHTTPCommon = `	access_log off;
	client_body_temp_path {{.Dir}}/{{.Name}}-tmp/body;
	proxy_temp_path {{.Dir}}/{{.Name}}-tmp/proxy;
	fastcgi_temp_path {{.Dir}}/{{.Name}}-tmp/fastcgi;
	uwsgi_temp_path {{.Dir}}/{{.Name}}-tmp/uwsgi;
	scgi_temp_path {{.Dir}}/{{.Name}}-tmp/scgi;
	default_type application/octet-stream;
	keepalive_timeout 65s;
	keepalive_requests 1000000;
`

const backendConf = nginxMain + `http {
` + nginxHTTPCommon + `	sendfile on;
	server {
		listen 127.0.0.1:{{.Port}};
		root {{.Dir}}/www;
	}
}
`

const nginxProxyConf = nginxMain + `http {
` + nginxHTTPCommon + `	upstream backend {
		server {{.Backend}};
		keepalive 256;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:{{.Port}};
		location / {
			proxy_pass http://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
`

type serverData struct {
	Dir, Name, Backend string
	Port               int
	Proxy              string // more [proxy] keys
	Extra              string // appended to the configuration
	MaxConns           int    // HAProxy's maxconn (idle-connection test)
	WorkerConns        int    // nginx's worker_connections
	NofileLimit        int    // nginx's worker_rlimit_nofile; 0: none
}

// nginxWorkerConns is the measured nginx instances' worker_connections.
const nginxWorkerConns = 4096

func (b *bench) startNginx(name, tmpl string, port int) (*proc, error) {
	return b.startNginxWith(name, tmpl, port, nginxWorkerConns, 0)
}

// startNginxWith starts nginx with the configuration tmpl, named name,
// with workerConns worker_connections and, if nofile is not 0, that
// worker_rlimit_nofile.
func (b *bench) startNginxWith(name, tmpl string, port, workerConns, nofile int) (*proc, error) {
	d := serverData{Dir: b.dir, Name: name, Backend: b.backendAddr, Port: port, WorkerConns: workerConns, NofileLimit: nofile}
	if err := os.MkdirAll(b.path(name+"-tmp"), 0o755); err != nil {
		return nil, fmt.Errorf("nginx temp dir: %w", err)
	}
	conf, err := b.writeConfig(name+".conf", tmpl, d)
	if err != nil {
		return nil, err
	}
	// -e: the error log before the configuration is read (not /var/log).
	return startProc(name, b.path(name+".log"), b.tools.nginx,
		"-p", b.dir, "-c", conf, "-e", b.path(name+"-error.log"))
}

func (b *bench) startBackend(port int) (*proc, error) {
	return b.startNginx("backend", backendConf, port)
}

func (b *bench) startNginxProxy(port int) (*proc, error) {
	return b.startNginx("nginx-proxy", nginxProxyConf, port)
}

const batonConf = `[proxy]
listen = ["127.0.0.1:{{.Port}}"]
{{.Proxy}}

[control]
pid_file = "{{.Dir}}/{{.Name}}.pid"
socket = "{{.Dir}}/{{.Name}}.sock"

[[backend]]
name = "nginx"
url = "http://{{.Backend}}"
health_path = "/small.txt"
{{.Extra}}`

// obsConf turns on what an operator usually runs with: an access log in
// the Combined format and the admin listener serving /metrics.
func obsConf(dir, name string) string {
	return fmt.Sprintf(`
[log]
level = "warn"
access = %q
access_format = "combined"

[admin]
listen = "127.0.0.2:0"
`, filepath.Join(dir, name+"-access.log"))
}

// startBaton starts the baton that is measured and upgraded.
func (b *bench) startBaton(port int) (*proc, error) {
	p, err := b.startBatonAs(setupBaton, "baton", nil, port, "")
	if err == nil {
		b.batonConfig, b.batonPID, b.batonSocket = b.path("baton.toml"), b.path("baton.pid"), b.path("baton.sock")
	}
	return p, err
}

// startBaton1 starts a second baton, limited to one thread running Go code
// by GOMAXPROCS=1 in its environment: the like-for-like row next to
// HAProxy's one thread and nginx's one worker.
func (b *bench) startBaton1(port int) (*proc, error) {
	return b.startBatonAs(setupBaton1, "baton-1t", []string{oneThreadEnv}, port, "")
}

// startBatonObs starts a baton like the measured one, with its access log
// and metrics on: the row that shows what observing every request costs.
func (b *bench) startBatonObs(port int) (*proc, error) {
	return b.startBatonAs(setupBatonObs, "baton-obs", nil, port, "", obsConf(b.dir, "baton-obs"))
}

// startStdlib starts a baton on the net/http plane (engine = "stdlib"),
// the fallback to the default epoll plane.
func (b *bench) startStdlib(port int) (*proc, error) {
	return b.startBatonAs(setupStdlib, "baton-stdlib", nil, port, `engine = "stdlib"`)
}

// startBatonLimits starts a baton like the measured one, balancing by
// least_conn with a max_conns the load stays under: the row that shows
// what counting and checking the limit costs (not queueing).
func (b *bench) startBatonLimits(port int) (*proc, error) {
	return b.startBatonAs(setupBatonLim, "baton-lim", nil, port, `balance = "least_conn"`, "max_conns = 4096\n[log]\nlevel = \"warn\"\n")
}

// startBatonAs starts a baton whose configuration, PID file, control
// socket and log are named after file; proxyKeys go into its [proxy]
// section and extra is appended to its configuration.
func (b *bench) startBatonAs(setupName, file string, env []string, port int, proxyKeys string, extra ...string) (*proc, error) {
	d := serverData{Dir: b.dir, Name: file, Backend: b.backendAddr, Port: port, Proxy: proxyKeys, Extra: strings.Join(extra, "\n")}
	if len(extra) == 0 {
		d.Extra = "\n[log]\nlevel = \"warn\"\n"
	}
	conf, err := b.writeConfig(file+".toml", batonConf, d)
	if err != nil {
		return nil, err
	}
	logPath := b.path(file + ".log")
	if !slices.ContainsFunc(b.batonLogs, func(l namedLog) bool { return l.path == logPath }) {
		b.batonLogs = append(b.batonLogs, namedLog{setupName, logPath})
	}
	return startProcEnv(setupName, logPath, env, b.opts.baton, "run", "--config", conf)
}

// startMinimal returns a start function for the go-minimal reference
// proxy, logging to file.log, with env added to its environment.
func (b *bench) startMinimal(setupName, file string, env []string) func(port int) (*proc, error) {
	return func(port int) (*proc, error) {
		return startProcEnv(setupName, b.path(file+".log"), env, b.path(minproxyBinary),
			"-listen", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), "-backend", b.backendAddr)
	}
}

// startTableflip starts the minimal tableflip program (a reference), which
// serves small.txt's 100 bytes itself and writes tfref.pid when ready.
func (b *bench) startTableflip(port int) (*proc, error) {
	return startProc(progTableflip, b.path("tfref.log"), b.path(tfrefBinary),
		"-listen", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), "-pid-file", b.path("tfref.pid"))
}

// buildRefs builds the reference programs, whose source is part of the
// bench (./internal/minproxy, ./internal/tfref), into the temporary
// directory with the go command that runs the bench. It builds by import
// path in the bench's source directory, if that is known and present, or
// else in the working directory; either must be inside the baton module.
func (b *bench) buildRefs(ctx context.Context) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("bench: build reference programs: %w", err)
	}
	dir := ""
	if _, file, _, ok := runtime.Caller(0); ok {
		if fi, err := os.Stat(filepath.Join(filepath.Dir(file), "internal", "minproxy")); err == nil && fi.IsDir() {
			dir = filepath.Dir(file)
		}
	}
	const pkg = "github.com/batonproxy/baton/tools/bench/internal/"
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", b.dir+string(filepath.Separator),
		pkg+minproxyBinary, pkg+tfrefBinary)
	cmd.Dir = dir
	started := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("bench: build reference programs (run the bench from the baton module): %w: %s",
			err, strings.TrimSpace(string(out)))
	}
	b.progress("built the reference programs %s and %s in %s", minproxyBinary, tfrefBinary,
		time.Since(started).Round(100*time.Millisecond))
	return nil
}

// haproxyConf runs one thread in master-worker mode; a reload (SIGUSR2 to
// the master) hands the listeners to the new worker over the master's
// socket pair (-x), which the stats socket's expose-fd allows.
const haproxyConf = `global
	nbthread 1
	maxconn 4000
	pidfile {{.Dir}}/haproxy.pid
	stats socket {{.Dir}}/haproxy.sock mode 600 level admin expose-fd listeners

defaults
	mode http
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	timeout http-request 10s
	timeout http-keep-alive 30s

frontend fe
	bind 127.0.0.1:{{.Port}}
	default_backend be

backend be
	server nginx {{.Backend}}
`

func (b *bench) startHAProxy(port int) (*proc, error) {
	d := serverData{Dir: b.dir, Backend: b.backendAddr, Port: port}
	conf, err := b.writeConfig("haproxy.cfg", haproxyConf, d)
	if err != nil {
		return nil, err
	}
	b.haproxyLog = b.path("haproxy.log")
	return startProc("haproxy", b.haproxyLog, b.tools.haproxy, "-W", "-db", "-f", conf)
}

// setupByName returns the named setup.
func (b *bench) setupByName(name string) *setup {
	for _, s := range b.setups {
		if s.name == name {
			return s
		}
	}
	return nil
}
