package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// obsConfig is a configuration with an access log and an admin listener
// on a free port, in dir.
func obsConfig(dir, format, url string, extra ...string) string {
	return batonConfig(dir, "", backendTOML("web1", url)) + fmt.Sprintf(`
[log]
access = %q
access_format = %q

[admin]
listen = "127.0.0.2:0"
%s
`, filepath.Join(dir, "access.log"), format, strings.Join(extra, "\n"))
}

// scrape fetches the admin listener's /metrics and returns every sample.
func scrape(addr string) (map[string]float64, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("bad sample line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// isCounter reports whether a series must never go down. process_* are
// the serving process's own: they start again with each generation.
func isCounter(series string) bool {
	name := series
	if i := strings.IndexByte(series, '{'); i >= 0 {
		name = series[:i]
	}
	return !strings.HasPrefix(name, "process_") && strings.HasSuffix(name, "_total") || strings.HasSuffix(name, "_bucket") ||
		strings.HasSuffix(name, "_count") || strings.HasSuffix(name, "_sum")
}

// sumSeries adds every sample of metric name.
func sumSeries(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// watchCounters scrapes addr() every few milliseconds until stop and
// reports every counter that went down between two scrapes.
type counterWatch struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	scrapes int
	errs    []string
}

func watchCounters(addr func() string) *counterWatch {
	w := &counterWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		last := map[string]float64{}
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			m, err := scrape(addr())
			if err != nil {
				continue // between generations the port may refuse for an instant
			}
			w.mu.Lock()
			w.scrapes++
			for k, v := range m {
				if isCounter(k) && v < last[k] && len(w.errs) < 10 {
					w.errs = append(w.errs, fmt.Sprintf("%s went from %g to %g", k, last[k], v))
				}
				last[k] = v
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *counterWatch) check(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	if w.scrapes < 10 {
		t.Errorf("only %d scrapes of /metrics succeeded", w.scrapes)
	}
	for _, e := range w.errs {
		t.Errorf("counter went backwards: %s", e)
	}
	t.Logf("%d scrapes, no counter went backwards", w.scrapes)
}

type jsonLine struct {
	Status     int     `json:"status"`
	URI        string  `json:"uri"`
	Backend    string  `json:"backend"`
	Generation int     `json:"generation"`
	Draining   bool    `json:"draining"`
	Term       string  `json:"term"`
	Total      float64 `json:"total_s"`
}

func readJSONLog(t *testing.T, paths ...string) []jsonLine {
	t.Helper()
	var out []jsonLine
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.SplitAfter(string(b), "\n") {
			if line == "" {
				continue
			}
			var l jsonLine
			if !strings.HasSuffix(line, "\n") || json.Unmarshal([]byte(line), &l) != nil {
				t.Fatalf("%s:%d: not a whole JSON line: %q", p, n+1, line)
			}
			out = append(out, l)
		}
	}
	return out
}

// TestAccessLogAndMetricsAcrossUpgrades upgrades baton three times under
// load, with slow requests finishing in draining generations and a
// logrotate in the middle: the access log (both files) has exactly one
// whole line per request the clients sent, lines from old generations
// included; /metrics, scraped all along, never shows a counter going down;
// and the counters agree with the log.
func TestAccessLogAndMetricsAcrossUpgrades(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return obsConfig(dir, "json", lt.URL) })
	addr := b.addr()
	var adminMu sync.Mutex
	admin := b.status().Admin
	if admin == "" {
		t.Fatal("status names no admin listener")
	}
	w := watchCounters(func() string { adminMu.Lock(); defer adminMu.Unlock(); return admin })
	t0 := time.Now()
	l := startLoad(t, addr, loadSpec{GoGET: 2, Raw: 1, Post: 1})
	l.progress(t, 10)

	logPath := filepath.Join(b.dir, "access.log")
	var slow []<-chan error
	pid := b.pid()
	for i := 1; i <= 3; i++ {
		slow = append(slow, slowRequest(addr, 2))
		waitInFlight(t, b, 1)
		b.signal(syscall.SIGHUP)
		pid = b.waitNewPID(pid)
		if i == 2 {
			// logrotate: move the file, then reopen-logs. The generations
			// still draining slow requests must follow.
			if err := os.Rename(logPath, logPath+".1"); err != nil {
				t.Fatal(err)
			}
			if out, errOut, code := b.ctl("reopen-logs"); code != 0 {
				t.Fatalf("ctl reopen-logs: exit %d: %s%s", code, out, errOut)
			}
		}
		l.progress(t, 5)
		t.Logf("%s: upgrade %d done", time.Since(t0).Round(time.Millisecond), i)
	}
	if st := b.status(); st.Admin != admin {
		t.Errorf("admin listener moved from %s to %s across upgrades", admin, st.Admin)
	}
	l.check(t)
	for _, c := range slow {
		if err := <-c; err != nil {
			t.Error(err)
		}
	}
	sent := l.total() + l.nfail.Load() + int64(len(slow))
	// Every old generation has exited, so every line is written.
	waitFor(t, 20*time.Second, "old generations to exit", func() bool { return len(b.processes()) == 1 })
	t.Logf("%s: old generations gone", time.Since(t0).Round(time.Millisecond))
	m, err := scrape(admin)
	if err != nil {
		t.Fatal(err)
	}
	w.check(t)

	// The serving generation writes lines as they come; poll for them.
	var lines []jsonLine
	waitFor(t, 5*time.Second, "every line in the access log", func() bool {
		lines = readJSONLog(t, logPath+".1", logPath)
		return int64(len(lines)) >= sent
	})
	if got := int64(len(lines)); got != sent {
		t.Errorf("access log lines: got %d, want %d (one per request sent)", got, sent)
	}
	gens := map[int]int{}
	var slowLines, drainingLines int
	for _, ln := range lines {
		gens[ln.Generation]++
		if strings.Contains(ln.URI, "slow.sh") {
			slowLines++
			if !ln.Draining {
				t.Errorf("slow request finished by generation %d not marked draining", ln.Generation)
			}
		}
		if ln.Draining {
			drainingLines++
		}
		if ln.Status != 200 || ln.Term != "ok" || ln.Backend != "web1" {
			t.Errorf("line %+v: want status 200, term ok, backend web1", ln)
		}
	}
	t.Logf("%d lines by generation %v, %d by draining generations", len(lines), gens, drainingLines)
	if slowLines != len(slow) {
		t.Errorf("slow requests logged: %d, want %d", slowLines, len(slow))
	}
	for g := 1; g <= 4; g++ {
		if gens[g] == 0 {
			t.Errorf("no line from generation %d", g)
		}
	}
	if rotated := readJSONLog(t, logPath); len(rotated) == 0 || len(rotated) == len(lines) {
		t.Errorf("after reopen-logs: %d lines in the new file of %d", len(rotated), len(lines))
	}

	if got := sumSeries(m, "baton_requests_total"); got != float64(sent) {
		t.Errorf("baton_requests_total: got %g, want %d", got, sent)
	}
	if got := m["baton_access_log_lines_total"]; got != float64(sent) {
		t.Errorf("baton_access_log_lines_total: got %g, want %d", got, sent)
	}
	if got := m["baton_access_log_dropped_total"]; got != 0 {
		t.Errorf("baton_access_log_dropped_total: got %g, want 0", got)
	}
	if got := m[`baton_upgrades_total{result="ok"}`]; got != 3 {
		t.Errorf(`baton_upgrades_total{result="ok"}: got %g, want 3`, got)
	}
	if got := m["baton_generation"]; got != 4 {
		t.Errorf("baton_generation: got %g, want 4", got)
	}
	if got := m[`baton_backend_up{backend="web1"}`]; got != 1 {
		t.Errorf("baton_backend_up: got %g, want 1", got)
	}
}

// TestReadyzAtStop: /healthz and /readyz answer 200 while baton serves and
// across an upgrade; from the moment SIGTERM arrives /readyz says 503 while
// requests are still served (stop_delay), then baton exits.
func TestReadyzAtStop(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return obsConfig(dir, "combined", lt.URL, `stop_delay = "1500ms"`) })
	addr, admin := b.addr(), b.status().Admin
	var errsMu sync.Mutex
	var errs []string
	get := func(url string) int {
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(url)
		if err != nil {
			errsMu.Lock()
			errs = append(errs, time.Now().Format("15:04:05.000")+" "+err.Error())
			errsMu.Unlock()
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if got := get("http://" + admin + p); got != 200 {
			t.Errorf("%s: got %d, want 200", p, got)
		}
	}
	// An upgrade never makes it unready.
	stopC := make(chan struct{})
	var bad []int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopC:
				return
			default:
			}
			if c := get("http://" + admin + "/readyz"); c != 200 {
				bad = append(bad, c)
			}
		}
	}()
	pid := b.pid()
	b.signal(syscall.SIGHUP)
	pid = b.waitNewPID(pid)
	waitFor(t, 20*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
	close(stopC)
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("/readyz during an upgrade answered %v, want only 200 (errors: %v)", bad, errs)
	}

	b.signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "/readyz to say 503 after SIGTERM", func() bool {
		return get("http://"+admin+"/readyz") == 503
	})
	if got := get("http://" + addr + "/small.txt"); got != 200 {
		t.Errorf("request during stop_delay: got %d, want 200", got)
	}
	select {
	case <-b.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("baton did not exit after SIGTERM")
	}
}

// TestObsBadInput: an admin address in use refuses to start (and an
// upgrade to such a config fails, the old process serving on); an access
// log that cannot be opened fails `baton check`; a full disk drops lines,
// counted, never requests.
func TestObsBadInput(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	t.Run("check", func(t *testing.T) {
		dir := t.TempDir()
		cfg := filepath.Join(dir, "baton.toml")
		write := func(s string) {
			if err := os.WriteFile(cfg, []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write(strings.Replace(obsConfig(dir, "json", lt.URL), filepath.Join(dir, "access.log"), filepath.Join(dir, "nodir", "access.log"), 1))
		_, errOut, code := runBaton(t, "check", "--config", cfg)
		if code != 1 || !strings.Contains(errOut, "log.access") || !strings.Contains(errOut, "no such file or directory") {
			t.Errorf("check with an access log in a missing directory: exit %d, %q", code, errOut)
		}
		write(strings.Replace(obsConfig(dir, "json", lt.URL), "127.0.0.2:0\"\n", busy.Addr().String()+"\"\n", 1))
		_, errOut, code = runBaton(t, "check", "--config", cfg)
		if code != 1 || !strings.Contains(errOut, "admin.listen") || !strings.Contains(errOut, "address already in use") {
			t.Errorf("check with a busy admin port: exit %d, %q", code, errOut)
		}
		if _, err := os.Stat(filepath.Join(dir, "access.log")); err == nil {
			t.Error("baton check left an access log file behind")
		}
	})

	t.Run("admin port in use", func(t *testing.T) {
		b := startBaton(t, func(dir string) string { return obsConfig(dir, "json", lt.URL) })
		pid := b.pid()
		b.writeConfig(strings.Replace(obsConfig(b.dir, "json", lt.URL), "127.0.0.2:0\"\n", busy.Addr().String()+"\"\n", 1))
		_, errOut, code := b.ctl("upgrade")
		if code != 1 || !strings.Contains(errOut, "admin.listen") || !strings.Contains(errOut, "address already in use") {
			t.Errorf("upgrade to a busy admin port: exit %d, %q", code, errOut)
		}
		if got := b.pid(); got != pid {
			t.Errorf("pid file after the failed upgrade: %d, want %d", got, pid)
		}
		if c, err := http.Get("http://" + b.addr() + "/small.txt"); err != nil || c.StatusCode != 200 {
			t.Errorf("old process after the failed upgrade: %v %v", c, err)
		} else {
			c.Body.Close()
		}

		// A fresh start with that config fails, saying why.
		_, errOut, code = runBaton(t, "run", "--config", b.cfgPath)
		if code != 1 || !strings.Contains(errOut, "admin.listen") || !strings.Contains(errOut, "address already in use") {
			t.Errorf("run with a busy admin port: exit %d, %q", code, errOut)
		}
	})

	t.Run("disk full", func(t *testing.T) {
		b := startBaton(t, func(dir string) string {
			return strings.Replace(obsConfig(dir, "combined", lt.URL), filepath.Join(dir, "access.log"), "/dev/full", 1)
		})
		addr, admin := b.addr(), b.status().Admin
		const n = 50
		for i := 0; i < n; i++ {
			resp, err := http.Get("http://" + addr + "/small.txt")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("request with a full disk: status %d", resp.StatusCode)
			}
		}
		var m map[string]float64
		waitFor(t, 5*time.Second, "the dropped lines to be counted", func() bool {
			m, _ = scrape(admin)
			return m["baton_access_log_dropped_total"] >= n
		})
		if got := m["baton_access_log_lines_total"]; got != 0 {
			t.Errorf("lines written to /dev/full: %g, want 0", got)
		}
	})
	_ = control.CmdStatus
}
