// Command demo is `make demo`: it starts a real Apache and a real lighttpd
// from testdata/ templates in a temporary directory, puts baton in front,
// and runs one `baton soak` scenario twice (--compare-direct): first
// straight to the servers, restarted the usual way (Apache graceful,
// lighttpd the classic stop-start, a config deploy, a kill -9), then
// through baton, with baton upgrades too. It prints both side by side,
// writes the HTML report, and stops everything it started, also on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

func main() {
	os.Exit(run())
}

func run() int {
	baton := flag.String("baton", "bin/baton", "the baton `binary`")
	duration := flag.Duration("duration", 30*time.Second, "how long each of the two runs lasts")
	rate := flag.Int("rate", 200, "requests per second (1 in 21 a POST to a CGI script; half the GETs over HTTPS through baton)")
	report := flag.String("report", "soak-report.html", "where to write the HTML report")
	figures := flag.String("json", "soak.json", "where to write the raw figures")
	junit := flag.String("junit", "soak-junit.xml", "where to write the JUnit report")
	keep := flag.Bool("keep", false, "keep the temporary directory (configs, logs, scenario)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, err := filepath.Abs(*baton)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "baton-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	d := &demo{dir: dir, bin: bin}
	defer func() {
		d.cleanup()
		if *keep {
			fmt.Printf("kept %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	if err := d.start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	fmt.Printf("\nbaton %s serves on http://%s/ and https://%s/ (h2) in front of Apache (%s, restarted gracefully) and lighttpd (%s, restarted by stop-start)\n",
		d.version(), d.addr, d.tlsAddr, d.apache.URL, d.lighttpd.URL)
	fmt.Printf("two runs of %s each at %d req/s of GET and POST, with the same events: baton upgrades, backend restarts,\n"+
		"a config deploy. First straight to the servers (no baton), then through baton.\n\n", *duration, *rate)

	scenario, err := d.writeScenario(*duration, *rate)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	// Ctrl-C reaches soak too (same process group); it stops the load,
	// finishes the events under way and writes the reports, so wait for it.
	soak := exec.CommandContext(ctx, bin, "soak", "--scenario", scenario, "--config", d.cfg,
		"--report", *report, "--json", *figures, "--junit", *junit, "--progress", "--cacert", d.cert, "--h2")
	soak.Cancel = func() error { return soak.Process.Signal(os.Interrupt) }
	soak.WaitDelay = 2 * time.Minute
	soak.Stdout, soak.Stderr = os.Stdout, os.Stderr
	err = soak.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if abs, err := filepath.Abs(*report); err == nil {
		fmt.Printf("\nopen the report: file://%s\n", abs)
	}
	if ctx.Err() != nil {
		fmt.Println("interrupted; cleaning up")
		return 130
	}
	if code == 0 {
		fmt.Println("demo: through baton, zero failed requests across every upgrade, restart and deploy")
	}
	return code
}

// writeScenario writes the demo's soak: the targets (mostly static GETs,
// half of them over HTTPS; every 21st request a POST to a CGI script, a fork and a shell per
// request: the two-core box this was sized on does a few dozen a second
// before queues, and latency, build up) and the events, spread over d.
func (d *demo) writeScenario(dur time.Duration, rate int) (string, error) {
	body := filepath.Join(d.dir, "body.txt")
	if err := os.WriteFile(body, []byte(strings.Repeat("demo ", 100)), 0o644); err != nil {
		return "", err
	}
	base := "http://" + d.addr
	var t strings.Builder
	for _, p := range []string{"small.txt", "index.html", "small.txt", "16k.bin", "small.txt", "index.html", "small.txt", "16k.bin", "small.txt", "small.txt"} {
		fmt.Fprintf(&t, "GET %s/%s\n\n", base, p)
		// Through baton, half the GETs go over HTTPS (h2); straight to the
		// servers (which speak plain HTTP) they become plain GETs too.
		fmt.Fprintf(&t, "GET https://%s/%s\n\n", d.tlsAddr, p)
	}
	fmt.Fprintf(&t, "POST %s/cgi-bin/post.sh\nContent-Type: text/plain\nX-Request-Id: demo\n@%s\n", base, body)
	targets := filepath.Join(d.dir, "targets.txt")
	if err := os.WriteFile(targets, []byte(t.String()), 0o644); err != nil {
		return "", err
	}
	// No kill -9 here: a crash loses the requests in flight to the crashed
	// server, and baton may replay only the GETs among them, so the POSTs
	// would fail with baton too (see README, "kill"). The events run at
	// fixed times whether the previous one has finished or not, so they
	// are spaced for a slow box.
	// A "deploy": a new Apache configuration (one more comment line), then
	// a restart of Apache to load it.
	deploy := []string{"sh", "-c", "echo '# deployed by make demo' >> " + d.apache.Conf}
	at := func(frac float64) string {
		return (time.Duration(frac * float64(dur))).Round(time.Millisecond).String()
	}
	var ev strings.Builder
	for _, e := range []struct {
		frac  float64
		extra string
	}{
		{0.10, `kind = "upgrade"`},
		{0.20, "kind = \"restart\"\nbackend = \"apache\""},
		{0.33, "kind = \"restart\"\nbackend = \"lighttpd\""},
		{0.46, `kind = "upgrade"`},
		{0.56, fmt.Sprintf("kind = \"command\"\ncommand = %s\nbackend = \"apache\"", q(deploy))},
		{0.72, `kind = "restart-all"`},
		{0.90, `kind = "upgrade"`},
	} {
		fmt.Fprintf(&ev, "[[event]]\nat = %q\n%s\n\n", at(e.frac), e.extra)
	}
	text := fmt.Sprintf(`# written by make demo
targets_file = %q

[baton]
config = %q

[load]
rate = %d
workers = 20
duration = %q

%s[pass]
max_failed = 0
max_hold = "10s"

[compare]
direct = [%q, %q]
`, targets, d.cfg, rate, dur.String(), ev.String(), d.apache.URL, d.lighttpd.URL)
	path := filepath.Join(d.dir, "scenario.toml")
	return path, os.WriteFile(path, []byte(text), 0o644)
}

func q(argv []string) string {
	var s []string
	for _, a := range argv {
		s = append(s, strconv.Quote(a))
	}
	return "[" + strings.Join(s, ", ") + "]"
}

type demo struct {
	dir, bin         string
	apache, lighttpd *backendtest.Server
	baton            *exec.Cmd
	cfg, socket      string
	addr             string
	tlsAddr, cert    string // where baton serves HTTPS (h2), and the certificate to trust
}

func (d *demo) start(ctx context.Context) error {
	var err error
	fmt.Println("starting Apache and lighttpd from testdata/ templates in", d.dir)
	if d.apache, err = backendtest.Start(backendtest.Apache, filepath.Join(d.dir, "apache"), backendtest.Options{}); err != nil {
		return err
	}
	if d.lighttpd, err = backendtest.Start(backendtest.Lighttpd, filepath.Join(d.dir, "lighttpd"), backendtest.Options{}); err != nil {
		return err
	}
	d.cfg = filepath.Join(d.dir, "baton.toml")
	d.socket = filepath.Join(d.dir, "run", "baton.sock")
	cert, tlsSection, err := writeDemoCert(d.dir)
	if err != nil {
		return err
	}
	d.cert = cert
	cfg := fmt.Sprintf(`# written by make demo
[proxy]
listen = ["127.0.0.1:0"]
drain_timeout = "30s"
hold_timeout = "30s"

[control]
pid_file = "run/baton.pid"
socket = "run/baton.sock"

[log]
level = "info"

[[backend]]
name = "apache"
url = %q
kind = "apache"
pid_file = %q
restart = "graceful"
health_interval = "500ms"

[[backend]]
name = "lighttpd"
url = %q
kind = "lighttpd"
pid_file = %q
restart = "stop-start"
start_command = %s
health_interval = "500ms"
%s`, d.apache.URL, d.apache.PIDFile, d.lighttpd.URL, d.lighttpd.PIDFile, q(d.lighttpd.StartCommand), tlsSection)
	if err := os.WriteFile(d.cfg, []byte(cfg), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(d.dir, "baton.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	d.baton = exec.Command(d.bin, "run", "--config", d.cfg)
	d.baton.Stdout, d.baton.Stderr = logf, logf
	if err := d.baton.Start(); err != nil {
		return fmt.Errorf("start baton: %w", err)
	}
	go d.baton.Wait() // reap the first generation; later ones are its children
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := control.Do(cctx, d.socket, control.Request{Cmd: control.CmdStatus})
		cancel()
		if err == nil && resp.Status != nil && len(resp.Status.Listeners) > 1 {
			for _, a := range resp.Status.Listeners {
				if strings.HasPrefix(a, "127.0.0.2:") {
					d.tlsAddr = a
				} else {
					d.addr = a
				}
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("baton did not start: %v\n%s", err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *demo) version() string {
	out, err := exec.Command(d.bin, "version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	if len(f) > 1 {
		return f[1]
	}
	return "?"
}

// cleanup stops every baton generation (found by its config path) and
// both servers.
func (d *demo) cleanup() {
	backendtest.Terminate(d.cfg, 15*time.Second)
	for _, s := range []*backendtest.Server{d.apache, d.lighttpd} {
		if s != nil {
			if err := s.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "demo:", err)
			}
		}
	}
}
