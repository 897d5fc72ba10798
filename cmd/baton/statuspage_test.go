package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/backends/backendtest"
)

// TestStatusPage loads the admin listener's status page in a real
// headless Chromium, which runs its script against /status.json, and
// checks what it rendered: the backend with its state, the generation,
// the request and error rates, the events, which an upgrade keeps (the
// old generation's last ones show on the new one's page); and, with the
// only backend drained, a red "not serving" that /readyz agrees with
// (503). The page loads nothing from elsewhere.
func TestStatusPage(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no chromium (CI=true: a missing browser is a failure)")
		}
		t.Skip("no chromium: apt-get install -y chromium")
	}
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return strings.Replace(obsConfig(dir, "combined", lt.URL), `hold_timeout = "10s"`, `hold_timeout = "300ms"`, 1)
	})
	addr, admin := b.addr(), b.status().Admin
	if !bytes.Contains(statusPage, []byte("status.json")) || bytes.Contains(statusPage, []byte("http://")) || bytes.Contains(statusPage, []byte("https://")) {
		t.Error("the status page must fetch status.json and load nothing from elsewhere")
	}
	if !regexp.MustCompile(`[.,]not-serving[,{][^}]*background:#c0392b`).Match(statusPage) {
		t.Error("the status page does not show not-serving in red")
	}

	dir := t.TempDir()
	shot := filepath.Join(dir, "status.png")
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--virtual-time-budget=5000", "--window-size=1200,900"}
		cmd := exec.CommandContext(ctx, browser, append(base, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\n%s", browser, err, tail(errOut.String(), 2000))
		}
		return out.String()
	}
	page := func(step string, want ...string) string {
		t.Helper()
		dom := run("--dump-dom", "http://"+admin+"/")
		for _, w := range append([]string{`data-rendered="1"`}, want...) {
			if !strings.Contains(dom, w) {
				t.Errorf("%s: rendered page lacks %q", step, w)
			}
		}
		if t.Failed() {
			t.Fatalf("%s: DOM:\n%s", step, tail(dom, 8000))
		}
		// BATON_STATUS_SCREENSHOT=DIR keeps a picture of each step.
		if d := os.Getenv("BATON_STATUS_SCREENSHOT"); d != "" {
			run("--screenshot="+shot, "http://"+admin+"/")
			copyFile(t, shot, filepath.Join(d, strings.ReplaceAll(step, " ", "-")+".png"), 0o644)
		}
		return dom
	}
	rate := func(dom, id string) float64 {
		t.Helper()
		m := regexp.MustCompile(`id="` + id + `" data-value="([^"]+)"`).FindStringSubmatch(dom)
		if m == nil {
			t.Fatalf("no %s on the page", id)
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		return v
	}
	readyz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	get := func(n int) (codes map[int]int) {
		codes = map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for k := 0; k < n; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &http.Client{Timeout: 10 * time.Second}
				code := 0
				if resp, err := c.Get("http://" + addr + "/small.txt"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		return codes
	}

	if codes := get(40); codes[200] != 40 {
		t.Fatalf("requests: %v, want 40 times 200", codes)
	}
	dom := page("serving", "web1", lt.URL, `class="st up"`, "generation 1", "serving", `data-state="ready"`, `class="st ready"`)
	if got := rate(dom, "rps"); got <= 0 {
		t.Errorf("request rate after 40 requests: %g, want > 0", got)
	}
	if got := rate(dom, "eps"); got != 0 {
		t.Errorf("error rate with no error: %g, want 0", got)
	}

	// The events survive an upgrade: the old generation's, down to the
	// last it logs while it drains, show on the new one's page.
	old := b.pid()
	b.signal(syscall.SIGHUP)
	pid := b.waitNewPID(old)
	waitFor(t, 20*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
	page("after an upgrade", "generation 2",
		fmt.Sprintf(`<td class="gen">1 <span class="muted">pid %d</span></td><td>exiting`, old),
		fmt.Sprintf(`<td class="gen">1 <span class="muted">pid %d</span></td><td>upgrade requested`, old),
		fmt.Sprintf(`<td class="gen">2 <span class="muted">pid %d</span></td><td>serving`, pid))

	// The only backend drained: baton cannot serve, the page says so in
	// red, /readyz answers 503; requests get 503 at hold_timeout and the
	// error rate shows them.
	if out, errOut, code := b.ctl("drain", "web1"); code != 0 {
		t.Fatalf("ctl drain: exit %d: %s%s", code, out, errOut)
	}
	if code, body := readyz(); code != 503 || !strings.HasPrefix(body, "not-serving: ") || !strings.Contains(body, "web1 drained") {
		t.Errorf("/readyz with the only backend drained: %d %q, want 503 not-serving naming web1 drained", code, body)
	}
	if codes := get(5); codes[503] != 5 {
		t.Fatalf("requests with the only backend drained: %v, want 5 times 503", codes)
	}
	dom = page("not serving", `data-state="not-serving"`, `class="st not-serving"`, "not serving", `class="st drained"`)
	if got := rate(dom, "eps"); got <= 0 {
		t.Errorf("error rate after 5 answers 503: %g, want > 0", got)
	}

	if out, errOut, code := b.ctl("undrain", "web1"); code != 0 {
		t.Fatalf("ctl undrain: exit %d: %s%s", code, out, errOut)
	}
	waitFor(t, 5*time.Second, "/readyz to say 200 after undrain", func() bool {
		code, body := readyz()
		return code == 200 && strings.HasPrefix(body, "ready: ")
	})
	page("undrained", `data-state="ready"`, `class="st up"`)
}

// TestReadiness: the readiness summary of each mix of backend states, and
// what /readyz answers for it.
func TestReadiness(t *testing.T) {
	st := func(name, state string, drained bool) backends.Status {
		return backends.Status{Name: name, State: state, Drained: drained}
	}
	for _, tc := range []struct {
		name     string
		stopping bool
		bs       []backends.Status
		want     string
		code     int
		detail   string
	}{
		{"all up", false, []backends.Status{st("a", "up", false), st("b", "up", false)}, stReady, 200, "every backend"},
		{"one down", false, []backends.Status{st("a", "up", false), st("b", "down", false)}, stDegraded, 200, "b down; a takes"},
		{"one restarting", false, []backends.Status{st("a", "restarting", false), st("b", "up", false)}, stDegraded, 200, "a restarting"},
		{"only one restarting", false, []backends.Status{st("a", "starting", false)}, stHolding, 200, "held until a is back"},
		{"only one drained", false, []backends.Status{st("a", "drained", true)}, stNotServing, 503, "a drained"},
		{"drained and restarting", false, []backends.Status{st("a", "restarting", true)}, stNotServing, 503, "a restarting"},
		{"all down", false, []backends.Status{st("a", "down", false), st("b", "drained", true)}, stNotServing, 503, "a down, b drained"},
		{"down and draining", false, []backends.Status{st("a", "down", false), st("b", "draining", false)}, stHolding, 200, "until b is back"},
		{"stopping", true, []backends.Status{st("a", "up", false)}, stStopping, 503, "stopping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, detail := readiness(tc.stopping, tc.bs)
			code := 503
			if servesState(got) {
				code = 200
			}
			if got != tc.want || code != tc.code || !strings.Contains(detail, tc.detail) {
				t.Errorf("got %s (%d) %q, want %s (%d) with %q", got, code, detail, tc.want, tc.code, tc.detail)
			}
		})
	}
}
