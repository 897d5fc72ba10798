package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/soak"
)

// apacheWorkers makes Apache's mpm_event run at most workers request
// workers, in one child.
func apacheWorkers(workers int) string {
	n := strconv.Itoa(workers)
	return "StartServers 1\nServerLimit 1\nThreadLimit " + n + "\nThreadsPerChild " + n +
		"\nMaxRequestWorkers " + n + "\nMinSpareThreads 1\nMaxSpareThreads " + n + "\n"
}

var (
	busyRE = regexp.MustCompile(`(?m)^Busy(?:Workers|Servers): (\d+)`)
)

// slowRunning counts the rows of a server-status page (Apache's workers in
// state W, lighttpd's connections handling a request or writing) serving
// slow.sh now.
func slowRunning(page string) int64 {
	var n int64
	for _, row := range strings.Split(page, "<tr>") {
		busy := strings.Contains(row, "<b>W</b>") || strings.Contains(row, ">handle-req<") || strings.Contains(row, ">write<")
		if busy && strings.Contains(row, "slow.sh") {
			n++
		}
	}
	return n
}

// TestMaxConnsQueue: a burst of slow requests larger than Apache's
// MaxRequestWorkers, or lighttpd's server.max-connections. With max_conns
// below it, baton queues the rest: no request fails, the server never
// runs more of them than max_conns (its own status page says so), it never
// reaches its limit, and ctl status shows the queue.
func TestMaxConnsQueue(t *testing.T) {
	for _, tt := range []struct {
		kind    string
		extra   string
		workers int
	}{
		{backendtest.Apache, apacheWorkers(12), 12},
		{backendtest.Lighttpd, "server.max-connections = 12", 12},
	} {
		t.Run(tt.kind, func(t *testing.T) { testMaxConnsQueue(t, tt.kind, tt.extra, tt.workers, 8, 40) })
	}
}

// testMaxConnsQueue sends clients one-second requests at once through
// maxConns (below workers, to leave the server room for the health check
// and server-status) to a server of kind with extra configuration.
func testMaxConnsQueue(t *testing.T, kind, extra string, workers, maxConns, clients int) {
	ap := backendtest.StartT(t, kind, backendtest.Options{Extra: extra})
	b := startBaton(t, func(d string) string {
		// The burst queues for clients/maxConns rounds of a second and a
		// restart: give the hold room beyond that (the harness has 10 s).
		return strings.Replace(batonConfig(d, "", restartable("web", ap, "graceful", "max_conns = "+strconv.Itoa(maxConns), `slow_start = "2s"`)),
			`hold_timeout = "10s"`, fmt.Sprintf("hold_timeout = %q", time.Duration(clients/maxConns+20)*time.Second), 1)
	})
	addr := b.addr()

	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg                                  sync.WaitGroup
		maxBusy, maxSlow, maxQueued, maxInF atomic.Int64
		polls                               atomic.Int64
	)
	raise := func(v *atomic.Int64, n int64) {
		for {
			o := v.Load()
			if n <= o || v.CompareAndSwap(o, n) {
				return
			}
		}
	}
	// Apache's scoreboard, read while the burst runs.
	wg.Add(2)
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		for ctx.Err() == nil {
			if body, err := get(c, ap.URL+"/server-status?auto"); err == nil {
				if m := busyRE.FindStringSubmatch(body); m != nil {
					n, _ := strconv.ParseInt(m[1], 10, 64)
					raise(&maxBusy, n)
					polls.Add(1)
				}
			}
			if body, err := get(c, ap.URL+"/server-status"); err == nil {
				raise(&maxSlow, slowRunning(body))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if st, err := b.tryStatus(); err == nil && len(st.Backends) == 1 {
				raise(&maxQueued, st.Backends[0].Queued)
				raise(&maxInF, st.Backends[0].InFlight)
				if st.Backends[0].MaxConns != maxConns {
					t.Errorf("status max_conns: got %d, want %d", st.Backends[0].MaxConns, maxConns)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	// A graceful restart in the middle of the burst: the backend drains
	// (its queue holds), restarts and comes back with a slow start.
	restarted := make(chan string, 1)
	go func() {
		deadline := time.Now().Add(20 * time.Second)
		for maxQueued.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		out, errOut, code := b.ctl("restart", "web")
		if code != 0 {
			restarted <- fmt.Sprintf("exit %d: %s %s", code, out, errOut)
			return
		}
		t.Logf("restart during the burst:\n%s", out)
		restarted <- ""
	}()
	start := time.Now()
	var failed atomic.Int64
	var fails sync.Map
	var cw sync.WaitGroup
	client := &http.Client{Timeout: 60 * time.Second}
	for i := range clients {
		cw.Add(1)
		go func() {
			defer cw.Done()
			resp, err := client.Get("http://" + addr + "/cgi-bin/slow.sh?1")
			if err != nil {
				failed.Add(1)
				fails.Store(i, err.Error())
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != 4096 || err != nil {
				failed.Add(1)
				fails.Store(i, resp.Status+" "+strconv.FormatInt(n, 10)+" bytes")
			}
		}()
	}
	cw.Wait()
	took := time.Since(start)
	if msg := <-restarted; msg != "" {
		t.Errorf("restart during the burst: %s", msg)
	}
	cancel()
	wg.Wait()

	fails.Range(func(k, v any) bool { t.Errorf("client %v: %v", k, v); return true })
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed", n, clients)
	}
	t.Logf("%s: %d requests of 1 s, max_conns %d: took %s; busy at most %d (of %d), slow.sh running at most %d; baton in flight at most %d, queued at most %d (%d status reads)",
		kind, clients, maxConns, took.Round(time.Millisecond), maxBusy.Load(), workers, maxSlow.Load(), maxInF.Load(), maxQueued.Load(), polls.Load())
	if polls.Load() == 0 {
		t.Fatal("server-status was never read")
	}
	if g := maxSlow.Load(); g > int64(maxConns) {
		t.Errorf("the server ran %d slow requests at once, want at most max_conns %d", g, maxConns)
	}
	if g := maxSlow.Load(); g < int64(maxConns/2) {
		t.Errorf("the server ran at most %d slow requests at once: the status reading looks broken", g)
	}
	if g := maxInF.Load(); g > int64(maxConns) {
		t.Errorf("baton had %d in flight, want at most %d", g, maxConns)
	}
	if g := maxQueued.Load(); g == 0 {
		t.Error("ctl status never showed a queued request")
	}
	if min := time.Duration(clients/maxConns) * time.Second; took < min*9/10 {
		t.Errorf("the burst took %s, less than the %s that queueing at %d takes", took, min, maxConns)
	}
	if g := maxBusy.Load(); g > int64(maxConns+2) {
		t.Errorf("the server had %d busy, want at most max_conns %d + a health check + the server-status request", g, maxConns)
	}
	if g := maxBusy.Load(); g >= int64(workers) {
		t.Errorf("the server had %d busy, its limit is %d: it reached it", g, workers)
	}
	if log, _ := os.ReadFile(ap.ErrorLog); strings.Contains(string(log), "MaxRequestWorkers") || strings.Contains(string(log), "max-connections") {
		t.Errorf("the server reached its limit:\n%s", log)
	}
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestSlowStartSoak: Apache, with slow_start, is restarted in the middle
// of a soak next to lighttpd; the soak's report shows its share of
// requests ramping back up instead of jumping to half at once.
func TestSlowStartSoak(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("apache", ap, "graceful", `slow_start = "3s"`), backendTOML("lighttpd", lt.URL))
	})
	figures := filepath.Join(t.TempDir(), "soak.json")
	out, errOut, code := runBaton(t, "soak", "--target", "http://"+b.addr()+"/", "--path", "/small.txt",
		"--rate", "200", "--duration", "11s", "--socket", b.socket, "--restart-every", "6s", "--restart", "apache",
		"--json", figures)
	if code != 0 {
		t.Fatalf("soak: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("soak summary:\n%s", out)
	if !strings.Contains(out, "requests per second per backend around restart apache") {
		t.Error("the summary has no per-backend rates around the restart")
	}
	var rep soak.Report
	raw, err := os.ReadFile(figures)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 0 {
		t.Fatalf("%d requests failed", rep.Failed)
	}
	var restart *soak.Event
	for i, e := range rep.Events {
		if e.Kind == "restart" && e.OK {
			restart = &rep.Events[i]
			break
		}
	}
	if restart == nil || len(rep.BackendRates) != 2 {
		t.Fatalf("no restart, or rates for %d backends", len(rep.BackendRates))
	}
	apache := rep.BackendRates[0].PerSecond
	// The first whole second after the restart ended, and 2 s later.
	first := int(restart.End.Sub(rep.Start).Seconds()) + 1
	if first+2 >= len(apache) {
		t.Fatalf("the restart ended too late (%.1fs) to see its ramp", restart.End.Sub(rep.Start).Seconds())
	}
	early, late := apache[first], apache[first+2]
	t.Logf("apache: %d req/s in second %d after its restart, %d in second %d", early, first, late, first+2)
	if early*3 > late*2 {
		t.Errorf("no ramp: apache took %d req/s right after its restart, %d two seconds later; want the first well below", early, late)
	}
	if late < 60 {
		t.Errorf("apache took %d req/s 2 s into a 3 s slow start, want most of its half of 200", late)
	}
}
