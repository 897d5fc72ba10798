package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

func tomlList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// restartable is the [[backend]] section for a real server s restarted by
// method.
func restartable(name string, s *backendtest.Server, method string, extra ...string) string {
	lines := []string{
		fmt.Sprintf("kind = %q", map[string]string{backendtest.Apache: "apache", backendtest.Lighttpd: "lighttpd"}[s.Kind]),
		fmt.Sprintf("pid_file = %q", s.PIDFile),
		fmt.Sprintf("restart = %q", method),
		`restart_timeout = "20s"`,
	}
	if method == "stop-start" {
		lines = append(lines, "start_command = "+tomlList(s.StartCommand))
	}
	return backendTOML(name, s.URL, append(lines, extra...)...)
}

// evidence is what shows that a server really restarted: its PID for a
// stop-start, its generation for a graceful restart.
func evidence(t testing.TB, s *backendtest.Server, method string) int {
	t.Helper()
	if method == "stop-start" {
		p, err := s.PID()
		if err != nil {
			t.Fatalf("%s pid: %v", s.Kind, err)
		}
		return p
	}
	g, err := s.Generation()
	if err != nil {
		t.Fatalf("%s generation: %v", s.Kind, err)
	}
	return g
}

// TestRestartUnderLoad restarts a real Apache and a real lighttpd, each the
// only backend, by each method, several times under GET, raw keep-alive
// and POST load, with a slow request in flight at the first restart.
// Nothing may fail, nothing may be processed twice, the slow request
// arrives whole, and the server's PID or generation proves each restart.
func TestRestartUnderLoad(t *testing.T) { forEngines(t, testRestartUnderLoad) }

func testRestartUnderLoad(t *testing.T) {
	for _, tc := range []struct{ kind, method string }{
		{backendtest.Apache, "graceful"},
		{backendtest.Lighttpd, "graceful"},
		{backendtest.Lighttpd, "stop-start"},
		{backendtest.Apache, "stop-start"},
	} {
		t.Run(tc.kind+"/"+tc.method, func(t *testing.T) {
			s := backendtest.StartT(t, tc.kind, backendtest.Options{})
			b := startBaton(t, func(dir string) string {
				return batonConfig(dir, "", restartable("web1", s, tc.method))
			})
			addr := b.addr()
			l := startLoad(t, addr, loadSpec{GoGET: 4, Raw: 4, Post: 2})
			l.progress(t, 10)
			for i := 1; i <= 3; i++ {
				var slow <-chan error
				if i == 1 {
					slow = startSlow(t, addr, s, 2)
				}
				before := evidence(t, s, tc.method)
				out, errOut, code := b.ctl("restart", "web1", "--json")
				if code != 0 {
					t.Fatalf("restart %d: exit %d: %s %s", i, code, out, errOut)
				}
				var resp control.Response
				if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Restarts) != 1 || len(resp.Restarts[0].Steps) == 0 {
					t.Fatalf("restart %d: unexpected output (%v): %s", i, err, out)
				}
				res := resp.Restarts[0]
				after := evidence(t, s, tc.method)
				if after == before {
					t.Errorf("restart %d: %s %s evidence unchanged (%d): it did not restart", i, tc.kind, tc.method, after)
				}
				if slow != nil {
					if err := <-slow; err != nil {
						t.Errorf("slow request in flight at restart %d: %v", i, err)
					}
					// The drain ends only once the slow request was answered:
					// after the backend logged its end, just before answering.
					ends := s.SlowEnds()
					if d := res.Steps[0]; d.Name != "drain" || len(ends) == 0 || res.At.Add(d.Duration).Before(ends[len(ends)-1]) {
						t.Errorf("restart %d did not wait for the slow request: first step %+v ended before the slow request did (%v)", i, d, ends)
					}
				}
				t.Logf("restart %d: took %s, pid %d -> %d, steps %+v", i, res.Duration, res.OldPID, res.NewPID, res.Steps)
				l.progress(t, 5)
			}
			l.check(t)
			ids, err := s.PostIDs()
			if err != nil {
				t.Fatal(err)
			}
			checkPostsOnce(t, l.postIDs(), ids)
			st := b.status()
			if st.Proxy.HeldTotal == 0 || st.Proxy.LastHold == nil {
				t.Errorf("status shows no held requests (%+v); the only backend was out of rotation", st.Proxy)
			} else {
				t.Logf("held: %d requests in all, longest %s", st.Proxy.HeldTotal, st.Proxy.MaxHold)
			}
			if !strings.Contains(b.log(), "requests were held") {
				t.Errorf("the log does not report the hold episodes")
			}
			if r := st.Backends[0].LastRestart; r == nil || !r.OK {
				t.Errorf("status last restart: %+v, want ok", r)
			}
		})
	}
}

// TestRestartAllPool: `restart --all` and SIGUSR1 on a pool of Apache and
// lighttpd under load: zero failures and never both out of rotation.
func TestRestartAllPool(t *testing.T) { forEngines(t, testRestartAllPool) }

func testRestartAllPool(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("apache", ap, "graceful"), restartable("lighttpd", lt, "stop-start"))
	})
	l := startLoad(t, b.addr(), loadSpec{GoGET: 4, Raw: 4, Post: 2})
	l.progress(t, 10)

	// Watch the states all along.
	var (
		bothOut atomic.Int64
		samples atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, err := b.tryStatus()
			if err != nil {
				continue
			}
			samples.Add(1)
			out := 0
			for _, be := range st.Backends {
				if be.State != "up" {
					out++
				}
			}
			if out == 2 {
				bothOut.Add(1)
			}
		}
	}()

	apGen, ltPID := evidence(t, ap, "graceful"), evidence(t, lt, "stop-start")
	out, errOut, code := b.ctl("restart", "--all")
	if code != 0 {
		t.Fatalf("restart --all: exit %d: %s %s", code, out, errOut)
	}
	if !strings.Contains(out, "restarted apache") || !strings.Contains(out, "restarted lighttpd") {
		t.Errorf("restart --all output: %s", out)
	}
	l.progress(t, 5)

	// SIGUSR1 does the same in the background.
	b.signal(syscall.SIGUSR1)
	b.waitStatus(60*time.Second, "SIGUSR1's restart of both backends", func(st control.Status) bool {
		n := 0
		for _, be := range st.Backends {
			if be.LastRestart != nil && be.LastRestart.OK && time.Since(be.LastRestart.At) < 30*time.Second && be.State == "up" {
				n++
			}
		}
		return n == 2 && strings.Contains(b.log(), "restarted all backends")
	})
	close(stop)
	wg.Wait()
	l.progress(t, 5)
	l.check(t)
	if g := evidence(t, ap, "graceful"); g < apGen+2 {
		t.Errorf("apache generation %d -> %d, want two restarts", apGen, g)
	}
	if p := evidence(t, lt, "stop-start"); p == ltPID {
		t.Errorf("lighttpd pid unchanged (%d)", p)
	}
	if n := bothOut.Load(); n > 0 {
		t.Errorf("both backends were out of rotation in %d of %d status samples", n, samples.Load())
	}
	t.Logf("%d status samples, never both out", samples.Load())
	apIDs, _ := ap.PostIDs()
	ltIDs, _ := lt.PostIDs()
	checkPostsOnce(t, l.postIDs(), append(apIDs, ltIDs...))
}

// TestRestartNeverComesBack: the start command fails, so the only backend
// never comes back: ctl exits 1 with the reason, and requests get 503
// after hold_timeout instead of hanging.
func TestRestartNeverComesBack(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	dir := t.TempDir()
	broken := dir + "/broken.conf"
	if err := os.WriteFile(broken, []byte("this is not lighttpd configuration\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := startBaton(t, func(d string) string {
		cfg := batonConfig(d, "", backendTOML("web1", lt.URL,
			`kind = "lighttpd"`, fmt.Sprintf("pid_file = %q", lt.PIDFile), `restart = "stop-start"`,
			"start_command = "+tomlList([]string{lt.Binary, "-f", broken}), `restart_timeout = "5s"`))
		return strings.Replace(cfg, `hold_timeout = "10s"`, `hold_timeout = "1s"`, 1)
	})
	addr := b.addr()
	_, errOut, code := b.ctl("restart", "web1")
	if code != 1 || !strings.Contains(errOut, "start_command failed") || !strings.Contains(errOut, "broken.conf") {
		t.Errorf("restart with a failing start command: exit %d, stderr %q; want exit 1 with the command and its output", code, errOut)
	}
	st := b.status()
	if be := st.Backends[0]; be.State != "down" || be.LastRestart == nil || be.LastRestart.OK {
		t.Errorf("backend after the failed restart: %+v, want down with a failed last restart", be)
	}
	start := time.Now()
	resp, err := http.Get("http://" + addr + "/small.txt")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 503 && resp.StatusCode != 502 {
		t.Errorf("request with no backend: status %d, want 503 (or 502 naming the failure)", resp.StatusCode)
	}
	if took < 900*time.Millisecond || took > 5*time.Second {
		t.Errorf("request with no backend answered after %s, want about hold_timeout (1s)", took)
	}
	// The operator fixes it: start the server by hand; the health check
	// readmits it.
	if err := lt.StartAgain(); err != nil {
		t.Fatal(err)
	}
	b.waitStatus(10*time.Second, "the backend to be readmitted once healthy", func(st control.Status) bool {
		return st.Backends[0].State == "up"
	})
	resp, err = http.Get("http://" + addr + "/small.txt")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("after readmission: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
}

// TestRestartRefused: what makes a restart impossible is reported before
// anything is touched, and the backend stays in rotation.
func TestRestartRefused(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	dir := t.TempDir()
	b := startBaton(t, func(d string) string {
		return batonConfig(d, "",
			backendTOML("nopid", lt.URL, `kind = "lighttpd"`, fmt.Sprintf("pid_file = %q", dir+"/missing.pid")),
			backendTOML("nocmd", lt.URL, `kind = "lighttpd"`, fmt.Sprintf("pid_file = %q", lt.PIDFile), `restart = "stop-start"`, `start_command = ["/nonexistent/lighttpd"]`),
			backendTOML("plain", lt.URL))
	})
	l := startLoad(t, b.addr(), loadSpec{GoGET: 2, Raw: 2})
	l.progress(t, 10)
	for _, tc := range []struct{ args, want string }{
		{"restart nope", `unknown backend "nope" (configured: nopid, nocmd, plain)`},
		{"restart nopid", "does not exist (is the server running?)"},
		{"restart nocmd", "start_command"},
		{"restart plain", "no restart method"},
		{"drain nope", `unknown backend "nope"`},
	} {
		_, errOut, code := b.ctl(strings.Fields(tc.args)...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("ctl %s: exit %d, stderr %q; want exit 1 and %q", tc.args, code, errOut, tc.want)
		}
	}
	for _, be := range b.status().Backends {
		if be.State != "up" {
			t.Errorf("backend %s after refused restarts: %s, want up", be.Name, be.State)
		}
	}
	pid, _ := lt.PID()
	if !processAlive(pid) {
		t.Errorf("lighttpd was touched by a refused restart")
	}
	l.progress(t, 10)
	l.check(t)
}

// apacheServer finds the Apache entry among Server header tokens.
func apacheServer(seen map[string]int) string {
	for k := range seen {
		if strings.HasPrefix(k, "Apache/") {
			return k
		}
	}
	return ""
}

func processAlive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// TestDrainUndrain: a drained backend gets no new requests until undrain.
func TestDrainUndrain(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(d string) string {
		return batonConfig(d, "", backendTOML("apache", ap.URL), backendTOML("lighttpd", lt.URL))
	})
	addr := b.addr()
	servers := func(n int) map[string]int {
		seen := map[string]int{}
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 0; i < n; i++ {
			resp, err := c.Get("http://" + addr + "/small.txt")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			seen[strings.Fields(resp.Header.Get("Server"))[0]]++
		}
		return seen
	}
	if s := servers(10); len(s) != 2 {
		t.Fatalf("before drain: servers %v, want both", s)
	}
	out, errOut, code := b.ctl("drain", "lighttpd")
	if code != 0 || !strings.Contains(out, "lighttpd drained") {
		t.Fatalf("ctl drain: exit %d: %s %s", code, out, errOut)
	}
	if s := servers(10); len(s) != 1 || s[apacheServer(s)] != 10 {
		t.Errorf("while drained: servers %v, want apache only", s)
	}
	if st := b.status(); st.Backends[1].State != "drained" {
		t.Errorf("status: %s, want drained", st.Backends[1].State)
	}
	if _, _, code := b.ctl("undrain", "lighttpd"); code != 0 {
		t.Fatalf("ctl undrain: exit %d", code)
	}
	if s := servers(10); len(s) != 2 {
		t.Errorf("after undrain: servers %v, want both", s)
	}
}

// TestUpgradeDuringRestart: baton is upgraded while a backend restart is
// draining a slow request. The old process finishes the restart (its ctl
// client gets the result), the new one keeps the backend out of rotation
// until it is healthy, refuses a second restart, and nothing fails.
func TestUpgradeDuringRestart(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(d string) string {
		return batonConfig(d, "", restartable("web1", lt, "stop-start"))
	})
	addr := b.addr()
	l := startLoad(t, addr, loadSpec{GoGET: 4, Raw: 4, Post: 2})
	l.progress(t, 10)
	oldLT, _ := lt.PID()
	slow := startSlow(t, addr, lt, 3)

	type result struct {
		out, errOut string
		code        int
	}
	restartDone := make(chan result, 1)
	go func() {
		o, e, c := b.ctl("restart", "web1")
		restartDone <- result{o, e, c}
	}()
	b.waitStatus(10*time.Second, "the restart to start draining", func(st control.Status) bool {
		return st.Backends[0].State == "draining"
	})
	oldBaton := b.pid()
	b.signal(syscall.SIGHUP)
	newBaton := b.waitNewPID(oldBaton)

	// The new process sees the restart, owned by the old one.
	st := b.status()
	if be := st.Backends[0]; be.State == "up" || be.RestartOwner != oldBaton {
		t.Errorf("new process's view during the restart: state %s owner %d, want out of rotation, owned by %d", be.State, be.RestartOwner, oldBaton)
	}
	if _, errOut, code := b.ctl("restart", "web1"); code != 1 || !strings.Contains(errOut, "already in progress") || !strings.Contains(errOut, fmt.Sprint(oldBaton)) {
		t.Errorf("second restart during the first: exit %d, %q; want a refusal naming the owner", code, errOut)
	}
	// Until the restart is over, "up" may only be seen once the new
	// lighttpd exists.
	var early []string
	for done := false; !done; {
		select {
		case r := <-restartDone:
			if r.code != 0 || !strings.Contains(r.out, "restarted web1") {
				t.Errorf("ctl restart (answered by the old process): exit %d, %q %q", r.code, r.out, r.errOut)
			}
			done = true
		default:
			st, err := b.tryStatus()
			if err != nil {
				continue
			}
			ltPID, _ := lt.PID()
			if st.Backends[0].State == "up" && (ltPID == 0 || ltPID == oldLT) {
				early = append(early, fmt.Sprintf("up while lighttpd pid is %d", ltPID))
			}
		}
	}
	if len(early) > 0 {
		t.Errorf("readmitted before the new server existed: %v", early)
	}
	if err := <-slow; err != nil {
		t.Errorf("slow request: %v", err)
	}
	if p, _ := lt.PID(); p == oldLT {
		t.Errorf("lighttpd pid unchanged: the restart did not happen")
	}
	b.waitStatus(10*time.Second, "the backend up in the new process", func(st control.Status) bool {
		return st.Backends[0].State == "up" && st.PID == newBaton
	})
	l.progress(t, 10)
	l.check(t)
	ids, _ := lt.PostIDs()
	checkPostsOnce(t, l.postIDs(), ids)
}

// TestApachePostNoRestart: Apache's mpm_event closes idle keep-alive
// connections whenever its workers are busy; with POSTs on fresh
// connections none of that may show, and nothing is processed twice.
func TestApachePostNoRestart(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	b := startBaton(t, func(d string) string { return batonConfig(d, "", backendTOML("web1", ap.URL)) })
	l := startLoad(t, b.addr(), loadSpec{GoGET: 6, Post: 4})
	l.progress(t, 100)
	l.check(t)
	ids, _ := ap.PostIDs()
	checkPostsOnce(t, l.postIDs(), ids)
}

// TestOnlyBackendCrashes: the only backend dies (SIGKILL, not a restart
// baton runs) and comes back a moment later, as systemd would bring it
// back. The connection failures mark it down, and requests are held, not
// failed, until a health check sees it again.
func TestOnlyBackendCrashes(t *testing.T) { forEngines(t, testOnlyBackendCrashes) }

func testOnlyBackendCrashes(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(d string) string { return batonConfig(d, "", backendTOML("web1", lt.URL)) })
	l := startLoad(t, b.addr(), loadSpec{GoGET: 4, Raw: 4})
	l.progress(t, 20)
	for _, p := range lt.Processes() {
		if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	b.waitStatus(10*time.Second, "baton to mark the dead backend down", func(st control.Status) bool {
		return st.Backends[0].State == "down"
	})
	// Requests are waiting now; bring the server back.
	b.waitStatus(10*time.Second, "requests to be held", func(st control.Status) bool {
		return st.Proxy.Held > 0
	})
	if err := os.Remove(lt.PIDFile); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := lt.StartAgain(); err != nil {
		t.Fatal(err)
	}
	l.progress(t, 20)
	l.check(t)
	if st := b.status(); st.Backends[0].State != "up" || st.Proxy.HeldTotal == 0 {
		t.Errorf("after the backend came back: state %s, held in all %d", st.Backends[0].State, st.Proxy.HeldTotal)
	}
}
