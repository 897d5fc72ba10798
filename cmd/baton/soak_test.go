package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/soak"
)

// TestSoakExitStatus: exit 0 when everything succeeded, 1 when any request
// failed.
func TestSoakExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		want   int
	}{
		{"all ok", 200, 0},
		{"server errors", 500, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(tc.status) }))
			t.Cleanup(srv.Close)
			var out, errOut bytes.Buffer
			code := cmdSoak([]string{"--target", srv.URL + "/", "--rate", "50", "--duration", "500ms"}, &out, &errOut)
			if code != tc.want {
				t.Errorf("exit %d, want %d\n%s%s", code, tc.want, out.String(), errOut.String())
			}
		})
	}
}

// TestSoakEndToEnd runs `baton soak` for 8 s against baton in front of a
// real Apache and a real lighttpd, with baton upgrades and backend
// restarts, and expects exit 0, a report with the events and JSON figures.
func TestSoakEndToEnd(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("apache", ap, "graceful"), restartable("lighttpd", lt, "stop-start"))
	})
	dir := t.TempDir()
	report, figures := filepath.Join(dir, "soak.html"), filepath.Join(dir, "soak.json")
	out, errOut, code := runBaton(t, "soak", "--target", "http://"+b.addr()+"/", "--path", "/small.txt", "--path", "/index.html",
		"--rate", "200", "--duration", "8s", "--socket", b.socket, "--upgrade-every", "2s", "--restart-every", "3s",
		"--report", report, "--json", figures)
	if code != 0 {
		t.Fatalf("soak: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("soak summary:\n%s", out)
	var rep soak.Report
	b2, err := os.ReadFile(figures)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b2, &rep); err != nil {
		t.Fatalf("figures do not parse: %v", err)
	}
	var upgrades, restarts int
	for _, e := range rep.Events {
		switch e.Kind {
		case "upgrade":
			upgrades++
		case "restart":
			restarts++
		}
	}
	if upgrades < 3 || restarts < 2 || rep.Failed != 0 || rep.Requests < 1000 {
		t.Errorf("figures: %d upgrades, %d restarts, %d requests, %d failed; want >= 3, >= 2, >= 1000, 0", upgrades, restarts, rep.Requests, rep.Failed)
	}
	html, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(html), "event-marker"); got != 2*len(rep.Events) {
		t.Errorf("report has %d event markers, want %d", got, 2*len(rep.Events))
	}
	if st := b.status(); st.Generation != 1+upgrades {
		t.Errorf("baton generation %d after %d upgrades", st.Generation, upgrades)
	}
}

// TestSoakScenarioCompare runs a scenario file through the real binary
// against baton in front of a real Apache and a real lighttpd, with
// --compare-direct: the same load and events first straight to the
// servers (Apache graceful, lighttpd stop-start, a kill -9, a command),
// where requests fail, then through baton, where none may. Every output is
// read back with the tool its format is for: the results with vegeta's
// decoder, the JUnit report with encoding/xml, the figures as JSON.
func TestSoakScenarioCompare(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("apache", ap, "graceful"), restartable("lighttpd", lt, "stop-start"))
	})
	dir := t.TempDir()
	scenario := filepath.Join(dir, "scenario.toml")
	writeText(t, scenario, fmt.Sprintf(`
[baton]
config = %q

[load]
rate = 200
workers = 10
duration = "8s"

[[target]]
url = "http://%s/small.txt"

[[target]]
url = "http://%s/index.html"
headers = { "X-Soak" = "1" }

[[event]]
at = "1s"
kind = "upgrade"

[[event]]
at = "1500ms"
kind = "restart"
backend = "apache"

[[event]]
at = "2500ms"
kind = "kill"
backend = "lighttpd"
start_after = "200ms"

[[event]]
at = "5s"
kind = "restart"
backend = "lighttpd"

[[event]]
at = "6500ms"
kind = "command"
command = ["touch", %q]

[pass]
max_failed = 0
max_hold = "10s"

[compare]
direct = [%q, %q]
`, b.cfgPath, b.addr(), b.addr(), filepath.Join(dir, "deployed"), ap.URL, lt.URL))
	results, junit, figures, report := filepath.Join(dir, "results.bin"), filepath.Join(dir, "junit.xml"),
		filepath.Join(dir, "soak.json"), filepath.Join(dir, "soak.html")
	out, errOut, code := runBaton(t, "soak", "--scenario", scenario, "--output", results, "--junit", junit,
		"--json", figures, "--report", report)
	t.Logf("soak summary:\n%s", out)
	if code != 0 {
		t.Fatalf("soak: exit %d\n%s", code, errOut)
	}

	var rep soak.Report
	if err := json.Unmarshal(readFile(t, figures), &rep); err != nil {
		t.Fatalf("figures do not parse: %v", err)
	}
	if rep.Schema != soak.SchemaVersion || rep.Mode != soak.ModeBaton || rep.Direct == nil || rep.Direct.Mode != soak.ModeDirect {
		t.Fatalf("figures: schema %d, mode %q, direct %v", rep.Schema, rep.Mode, rep.Direct != nil)
	}
	if rep.Failed != 0 || rep.Requests < 1000 {
		t.Errorf("through baton: %d of %d requests failed; want 0 of >= 1000", rep.Failed, rep.Requests)
	}
	// Without baton the kill -9 and the stop-start leave lighttpd's port
	// closed for a while: some requests must fail (that is the comparison).
	if rep.Direct.Failed == 0 || rep.Direct.ByKind["refused"] == 0 {
		t.Errorf("straight to the servers: %d failed (%v); want refused connections", rep.Direct.Failed, rep.Direct.ByKind)
	}
	for _, r := range []*soak.Report{rep.Direct, &rep} {
		if len(r.Events) != 5 {
			t.Fatalf("%s run: %d events, want 5: %+v", r.Mode, len(r.Events), r.Events)
		}
		for _, e := range r.Events {
			if !e.OK {
				t.Errorf("%s run: event %s failed: %s", r.Mode, e.Name(), e.Detail)
			}
			if skip := r.Mode == soak.ModeDirect && e.Kind == soak.KindUpgrade; e.Skipped != skip {
				t.Errorf("%s run: event %s skipped=%v", r.Mode, e.Name(), e.Skipped)
			}
		}
	}
	if !rep.Hold.Known {
		t.Errorf("hold figures unknown")
	}
	if _, err := os.Stat(filepath.Join(dir, "deployed")); err != nil {
		t.Errorf("the command event did not run: %v", err)
	}

	for path, want := range map[string]int{results: rep.Requests, filepath.Join(dir, "results.direct.bin"): rep.Direct.Requests} {
		n, failed := decodeResults(t, path)
		if n != want {
			t.Errorf("%s: %d results, want %d", path, n, want)
		}
		if path == results && failed != 0 {
			t.Errorf("%s: %d failed results", path, failed)
		}
	}
	vegetaReport(t, results)

	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name  string `xml:"name,attr"`
			Cases []struct {
				Name    string    `xml:"name,attr"`
				Failure *struct{} `xml:"failure"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(readFile(t, junit), &doc); err != nil {
		t.Fatalf("JUnit does not parse: %v", err)
	}
	if len(doc.Suites) != 3 || doc.Failures != 0 {
		t.Fatalf("JUnit: %d suites, %d failures; want 3, 0", len(doc.Suites), doc.Failures)
	}
	if got, want := len(doc.Suites[0].Cases), 2; got != want { // max_failed, max_hold
		t.Errorf("JUnit criteria cases: %d, want %d", got, want)
	}
	if got := len(doc.Suites[1].Cases); got != 5 {
		t.Errorf("JUnit event cases: %d, want 5", got)
	}
	html := string(readFile(t, report))
	for _, want := range []string{"without baton", "through baton", `class="vs"`} {
		if !strings.Contains(html, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestSoakBadScenario: a scenario naming a backend baton does not have, or
// an event after the load's end, is refused before any load starts.
func TestSoakBadScenario(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	t.Cleanup(srv.Close)
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("lighttpd", lt, "stop-start"))
	})
	for _, tc := range []struct {
		name, events, want string
	}{
		{"unknown backend", "[[event]]\nat = \"1s\"\nkind = \"restart\"\nbackend = \"nginx\"\n", `baton has no backend "nginx" (it has lighttpd)`},
		{"past the end", "[[event]]\nat = \"3s\"\nkind = \"upgrade\"\n", "event[0].at: 3s is past the load's duration 2s"},
		{"unknown kind", "[[event]]\nat = \"1s\"\nkind = \"reload\"\n", `event[0].kind: unknown kind "reload"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "s.toml")
			writeText(t, p, fmt.Sprintf("[baton]\nsocket = %q\n[load]\nduration = \"2s\"\n[[target]]\nurl = %q\n%s", b.socket, srv.URL, tc.events))
			out, errOut, code := runBaton(t, "soak", "--scenario", p)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q\n%s", code, errOut, tc.want, out)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests were sent", n)
	}
}

// TestSoakInterrupt: SIGINT during a soak stops the load and still writes
// every report; the run counts as failed (it did not complete).
func TestSoakInterrupt(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	results, figures, junit := filepath.Join(dir, "r.bin"), filepath.Join(dir, "s.json"), filepath.Join(dir, "j.xml")
	cmd := exec.Command(batonBin, "soak", "--target", srv.URL+"/", "--rate", "100", "--duration", "60s",
		"--output", results, "--json", figures, "--junit", junit)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	// Interrupt once results are being written (the first 64 KiB flushed).
	waitFor(t, 30*time.Second, "results in the output file", func() bool {
		fi, err := os.Stat(results)
		return err == nil && fi.Size() > 0
	})
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 {
			t.Errorf("exit: %v, want status 1 (interrupted)\n%s", err, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("soak did not stop on SIGINT")
	}
	var rep soak.Report
	if err := json.Unmarshal(readFile(t, figures), &rep); err != nil {
		t.Fatalf("figures: %v\n%s", err, errOut.String())
	}
	if !rep.Interrupted || rep.Requests == 0 || rep.Duration > 50*time.Second {
		t.Errorf("figures: interrupted %v, %d requests, ran %s", rep.Interrupted, rep.Requests, rep.Duration)
	}
	if n, _ := decodeResults(t, results); n != rep.Requests {
		t.Errorf("output has %d results, report %d", n, rep.Requests)
	}
	if !strings.Contains(string(readFile(t, junit)), `name="completed"`) {
		t.Errorf("JUnit lacks the failed completed case")
	}
}

func writeText(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeResults reads a --output file with vegeta's own decoder.
func decodeResults(t testing.TB, path string) (n, failed int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := vegeta.DecoderFor(f)
	if dec == nil {
		t.Fatalf("%s: not in a vegeta results encoding", path)
	}
	for {
		var r vegeta.Result
		if err := dec.Decode(&r); err != nil {
			if errors.Is(err, io.EOF) {
				return n, failed
			}
			t.Fatalf("%s: result %d: %v", path, n, err)
		}
		n++
		if soak.Classify(r.Code, r.Error) != "" {
			failed++
		}
	}
}

// vegetaReport runs `vegeta report` on a results file if the vegeta
// command builds (from the module cache or the Go module proxy); it is a
// plus, not a requirement, so a failure to build is only logged.
func vegetaReport(t testing.TB, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "github.com/tsenart/vegeta/v12@v12.13.0", "report", path)
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("vegeta report not run (vegeta not in the module cache?): %v\n%s", err, tail(string(out), 400))
		return
	}
	if !strings.Contains(string(out), "Success") || !strings.Contains(string(out), "100.00%") {
		t.Errorf("vegeta report:\n%s", out)
	}
	t.Logf("vegeta report %s:\n%s", path, out)
}
