// Command demo is `make demo`: it starts a real Apache and a real lighttpd
// from testdata/ templates in a temporary directory, puts baton in front,
// runs `baton soak` with baton upgrades and restarts of both backends
// (Apache graceful, lighttpd the classic stop-start), prints the summary and
// where the report is, and stops everything it started, also on Ctrl-C.
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
	duration := flag.Duration("duration", 30*time.Second, "how long the soak runs")
	rate := flag.Int("rate", 200, "requests per second (1 in 21 a POST to a CGI script; half the GETs over HTTPS)")
	report := flag.String("report", "soak-report.html", "where to write the HTML report")
	figures := flag.String("json", "soak.json", "where to write the raw figures")
	keep := flag.Bool("keep", false, "keep the temporary directory (configs, logs)")
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
	fmt.Printf("soak: %d req/s of GET and POST for %s, baton upgraded every 5s, a backend restarted every 7s\n\n", *rate, *duration)

	targets := filepath.Join(dir, "targets.txt")
	body := filepath.Join(dir, "body.txt")
	if err := os.WriteFile(body, []byte(strings.Repeat("demo ", 100)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	base := "http://" + d.addr
	// Mostly static GETs, half of them over HTTPS (h2); every 21st request a POST to a CGI script (a
	// fork and a shell per request: the two-core box this was sized on does
	// a few dozen a second before queues, and latency, build up).
	var t strings.Builder
	for _, p := range []string{"small.txt", "index.html", "small.txt", "16k.bin", "small.txt", "index.html", "small.txt", "16k.bin", "small.txt", "small.txt"} {
		fmt.Fprintf(&t, "GET %s/%s\n\n", base, p)
		fmt.Fprintf(&t, "GET https://%s/%s\n\n", d.tlsAddr, p) // half the GETs over HTTPS (h2)
	}
	fmt.Fprintf(&t, "POST %s/cgi-bin/post.sh\nContent-Type: text/plain\nX-Request-Id: demo\n@%s\n", base, body)
	if err := os.WriteFile(targets, []byte(t.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	soak := exec.CommandContext(ctx, bin, "soak", "--targets", targets, "--rate", strconv.Itoa(*rate),
		"--duration", duration.String(), "--socket", d.socket, "--upgrade-every", "5s", "--restart-every", "7s",
		"--report", *report, "--json", *figures, "--progress", "--cacert", d.cert, "--h2")
	soak.Stdout, soak.Stderr = os.Stdout, os.Stderr
	err = soak.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		fmt.Println("\ninterrupted; cleaning up")
		return 130
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if abs, err := filepath.Abs(*report); err == nil {
		fmt.Printf("\nopen the report: file://%s\n", abs)
	}
	if code == 0 {
		fmt.Println("demo: zero failed requests across every upgrade and restart")
	}
	return code
}

type demo struct {
	dir, bin         string
	apache, lighttpd *backendtest.Server
	baton            *exec.Cmd
	cfg, socket      string
	addr, tlsAddr    string
	cert             string // the HTTPS listener's self-signed certificate
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
	q := func(argv []string) string {
		var s []string
		for _, a := range argv {
			s = append(s, strconv.Quote(a))
		}
		return "[" + strings.Join(s, ", ") + "]"
	}
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
`, d.apache.URL, d.apache.PIDFile, d.lighttpd.URL, d.lighttpd.PIDFile, q(d.lighttpd.StartCommand)) + tlsSection
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
			d.addr, d.tlsAddr = resp.Status.Listeners[0], resp.Status.Listeners[1]
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
