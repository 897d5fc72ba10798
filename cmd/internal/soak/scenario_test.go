package soak

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/batonproxy/baton/backends"
)

const goodScenario = `
[load]
rate = 200
workers = 10
duration = "10s"

[[target]]
url = "http://127.0.0.1:8080/index.html"
method = "GET"

[[target]]
url = "http://127.0.0.1:8080/cgi-bin/post.sh"
method = "post"
headers = { "Content-Type" = "text/plain", "X-Request-Id" = "s1" }
body_file = "body.txt"
weight = 2

[[event]]
at = "2s"
kind = "upgrade"

[[event]]
at = "4s"
kind = "restart"
backend = "apache"

[[event]]
at = "5s"
kind = "kill"
backend = "lighttpd"
start_after = "1s"

[[event]]
at = "7s"
kind = "command"
command = ["true"]
backend = "apache"

[pass]
max_failed = 0
max_p99 = "500ms"
max_hold = "5s"

[compare]
direct = ["http://127.0.0.1:8081"]
`

func writeScenario(t *testing.T, text string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "body.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "scenario.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadScenario(t *testing.T) {
	sc, err := LoadScenario(writeScenario(t, goodScenario))
	if err != nil {
		t.Fatal(err)
	}
	o := sc.Options
	if o.Rate != 200 || o.Workers != 10 || o.Duration != 10*time.Second {
		t.Errorf("load: rate %d workers %d duration %s", o.Rate, o.Workers, o.Duration)
	}
	if len(o.Targets) != 3 {
		t.Fatalf("targets: got %d, want 3 (the POST has weight 2)", len(o.Targets))
	}
	post := o.Targets[1]
	if post.Method != "POST" || string(post.Body) != "hello" || post.Header.Get("X-Request-Id") != "s1" {
		t.Errorf("POST target: %+v", post)
	}
	if len(o.Events) != 4 || o.Events[2].Kind != KindKill || o.Events[2].StartAfter != time.Second || o.Events[1].At != 4*time.Second {
		t.Errorf("events: %+v", o.Events)
	}
	if o.Pass != (Criteria{MaxFailed: 0, MaxP99: 500 * time.Millisecond, MaxHold: 5 * time.Second}) {
		t.Errorf("pass: %+v", o.Pass)
	}
	if len(sc.Direct) != 1 {
		t.Errorf("compare.direct: %v", sc.Direct)
	}
}

// TestScenarioErrors: a bad scenario is refused, naming the file, the key
// and the reason, before anything runs.
func TestScenarioErrors(t *testing.T) {
	load := "[load]\nduration = \"10s\"\n[[target]]\nurl = \"http://127.0.0.1:1/\"\n"
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown event kind", load + "[[event]]\nat = \"1s\"\nkind = \"reboot\"\n", `event[0].kind: unknown kind "reboot" (want one of upgrade, restart, restart-all, drain, undrain, kill, command)`},
		{"time past the duration", load + "[[event]]\nat = \"10s\"\nkind = \"upgrade\"\n", `event[0].at: 10s is past the load's duration 10s`},
		{"no time", load + "[[event]]\nkind = \"upgrade\"\n", `event[0].at: missing`},
		{"unknown key", load + "[[event]]\nat = \"1s\"\nkind = \"upgrade\"\nbackedn = \"x\"\n", `event.backedn: unknown key`},
		{"bad duration", "[load]\nduration = \"ten\"\n", `load.duration: "ten" is not a duration`},
		{"no target", "[load]\nduration = \"1s\"\n", `target: no [[target]]`},
		{"bad url", "[[target]]\nurl = \"127.0.0.1:8080\"\n", `target[0].url`},
		{"body and body_file", "[[target]]\nurl = \"http://x:1/\"\nbody = \"a\"\nbody_file = \"b\"\n", `give body or body_file, not both`},
		{"negative rate", "[load]\nrate = -1\n[[target]]\nurl = \"http://x:1/\"\n", `load.rate: must not be negative`},
		{"syntax", "[load\n", `to end table name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadScenario(writeScenario(t, tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "scenario.toml") {
				t.Errorf("got %v, want an error naming scenario.toml with %q", err, tc.want)
			}
		})
	}
}

// TestCheckEvents: what only the running baton or its configuration can
// tell (which backends exist, their PID files) is checked before the load.
func TestCheckEvents(t *testing.T) {
	cfgs := map[string]backends.Config{
		"apache":   {Name: "apache", Kind: backends.KindApache, PIDFile: "/x/apache2.pid", Restart: backends.MethodGraceful},
		"lighttpd": {Name: "lighttpd", Kind: backends.KindLighttpd, PIDFile: "/x/lighttpd.pid", Restart: backends.MethodStopStart},
		"static":   {Name: "static", Kind: backends.KindNone},
	}
	known := []backends.Status{{Name: "apache"}, {Name: "lighttpd"}, {Name: "static"}}
	for _, tc := range []struct {
		name   string
		mode   string
		events []EventSpec
		want   string // "" for no error
	}{
		{"fine", ModeBaton, []EventSpec{{At: time.Second, Kind: KindRestart, Backend: "apache"}, {At: 2 * time.Second, Kind: KindKill, Backend: "apache"}}, ""},
		{"unknown backend", ModeBaton, []EventSpec{{At: time.Second, Kind: KindRestart, Backend: "nginx"}}, `baton has no backend "nginx" (it has apache, lighttpd, static)`},
		{"restart without a backend", ModeBaton, []EventSpec{{At: time.Second, Kind: KindRestart}}, "which backend?"},
		{"upgrade with a backend", ModeBaton, []EventSpec{{At: time.Second, Kind: KindUpgrade, Backend: "apache"}}, "takes no backend"},
		{"past the end", ModeBaton, []EventSpec{{At: 10 * time.Second, Kind: KindUpgrade}}, "past the load's duration"},
		{"unknown kind", ModeBaton, []EventSpec{{At: time.Second, Kind: "reboot"}}, `unknown kind "reboot"`},
		{"command without argv", ModeBaton, []EventSpec{{At: time.Second, Kind: KindCommand}}, "no command"},
		{"start_after without a start command", ModeBaton, []EventSpec{{At: time.Second, Kind: KindKill, Backend: "lighttpd", StartAfter: time.Second}}, "start_after needs a command"},
		{"direct restart of kind none", ModeDirect, []EventSpec{{At: time.Second, Kind: KindRestart, Backend: "static"}}, "cannot be restarted without baton"},
		{"direct stop-start without start_command", ModeDirect, []EventSpec{{At: time.Second, Kind: KindRestart, Backend: "lighttpd"}}, "stop-start without a start_command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &Options{Duration: 10 * time.Second, Mode: tc.mode, Backends: cfgs, Events: tc.events}
			k := known
			if tc.mode == ModeDirect {
				k = nil
			}
			err := checkEvents(o, k)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRunOutputJUnit: --output holds every result in vegeta's encoding,
// read back by vegeta's own decoder, and the JUnit report parses and has a
// case per criterion and per event, the failing ones marked.
func TestRunOutputJUnit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			http.Error(w, "no", http.StatusBadGateway)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	var out bytes.Buffer
	rep, err := Run(context.Background(), Options{
		Targets:  []vegeta.Target{{Method: "GET", URL: srv.URL + "/a"}, {Method: "GET", URL: srv.URL + "/a"}, {Method: "GET", URL: srv.URL + "/bad"}},
		Rate:     300,
		Duration: time.Second,
		Events: []EventSpec{
			{At: 200 * time.Millisecond, Kind: KindCommand, Command: []string{"true"}},
			{At: 400 * time.Millisecond, Kind: KindCommand, Command: []string{"false"}},
		},
		Pass:   Criteria{MaxFailed: 1000, MaxP99: time.Nanosecond},
		Output: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	dec := vegeta.DecoderFor(bytes.NewReader(out.Bytes()))
	if dec == nil {
		t.Fatal("vegeta does not recognise the --output encoding")
	}
	var n, failed int
	for {
		var res vegeta.Result
		if err := dec.Decode(&res); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decode result %d: %v", n, err)
		}
		n++
		if res.Code != 200 {
			failed++
		}
	}
	if n != rep.Requests || failed != rep.Failed || n < 250 {
		t.Errorf("decoded %d results (%d failed); report: %d requests, %d failed", n, failed, rep.Requests, rep.Failed)
	}

	var x bytes.Buffer
	if err := rep.WriteJUnit(&x); err != nil {
		t.Fatal(err)
	}
	var doc junitSuites
	if err := xml.Unmarshal(x.Bytes(), &doc); err != nil {
		t.Fatalf("JUnit XML does not parse: %v\n%s", err, x.String())
	}
	got := map[string]bool{} // case name -> failed
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			got[c.Name] = c.Failure != nil
		}
	}
	want := map[string]bool{
		"max_failed <= 1000": false, "max_p99 <= 1ns": true,
		"01 command at 0.2s": false, "02 command at 0.4s": true,
	}
	for name, failed := range want {
		f, ok := got[name]
		if !ok {
			t.Errorf("JUnit has no case %q; has %v", name, got)
		} else if f != failed {
			t.Errorf("JUnit case %q failed=%v, want %v", name, f, failed)
		}
	}
	if doc.Tests != 4 || doc.Failures != 2 {
		t.Errorf("JUnit totals: %d tests, %d failures; want 4, 2", doc.Tests, doc.Failures)
	}
}

// TestRunInterrupted: when the context ends (Ctrl-C) the load stops at
// once, an event under way is waited for and recorded, an event not yet
// due is dropped, and the report says it was interrupted and fails.
func TestRunInterrupted(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	started, done := filepath.Join(dir, "started"), filepath.Join(dir, "done")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		rep *Report
		err error
	}
	resC := make(chan result, 1)
	t0 := time.Now()
	go func() {
		rep, err := Run(ctx, Options{
			Targets: []vegeta.Target{{Method: "GET", URL: srv.URL}}, Rate: 100, Duration: 20 * time.Second,
			Events: []EventSpec{
				{At: 100 * time.Millisecond, Kind: KindCommand, Command: []string{"sh", "-c", "touch " + started + "; sleep 0.5; touch " + done}},
				{At: 15 * time.Second, Kind: KindCommand, Command: []string{"true"}},
			},
		})
		resC <- result{rep, err}
	}()
	// Interrupt once the first event is under way.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first event never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	res := <-resC
	if res.err != nil {
		t.Fatal(res.err)
	}
	rep := res.rep
	if took := time.Since(t0); took > 5*time.Second {
		t.Errorf("interrupted soak took %s", took)
	}
	if _, err := os.Stat(done); err != nil {
		t.Errorf("the event under way was not waited for: %v", err)
	}
	if len(rep.Events) != 1 || !rep.Events[0].OK {
		t.Errorf("events: %+v; want the first only, ok", rep.Events)
	}
	if !rep.Interrupted || rep.Passed() || rep.Requests == 0 {
		t.Errorf("interrupted %v, passed %v, %d requests; want true, false, some", rep.Interrupted, rep.Passed(), rep.Requests)
	}
	var x bytes.Buffer
	if err := rep.WriteJUnit(&x); err != nil || !strings.Contains(x.String(), `name="completed"`) {
		t.Errorf("JUnit lacks a failed \"completed\" case (%v):\n%s", err, x.String())
	}
}
