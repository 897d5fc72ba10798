package soak

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		code uint16
		err  string
		want string
	}{
		{200, "", ""},
		{204, "", ""},
		{302, "", ""},
		{500, "", "status 500"},
		{503, "", "status 503"},
		{404, "", "status 404"},
		{0, "Get \"http://127.0.0.1:1/\": dial tcp 127.0.0.1:1: connect: connection refused", "refused"},
		{0, "read tcp 127.0.0.1:5->127.0.0.1:6: read: connection reset by peer", "reset"},
		{0, "write tcp 127.0.0.1:5->127.0.0.1:6: write: broken pipe", "reset"},
		{0, "Get \"http://x/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)", "timeout"},
		{0, "Get \"http://x/\": EOF", "eof"},
		{0, "http: server closed idle connection", "eof"},
		{0, "something else", "error"},
	} {
		if got := Classify(tc.code, tc.err); got != tc.want {
			t.Errorf("Classify(%d, %q): got %q, want %q", tc.code, tc.err, got, tc.want)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var ns []int64
	for i := 1; i <= 100; i++ {
		ns = append(ns, int64(i)*int64(time.Millisecond))
	}
	got := percentiles(ns)
	want := Latencies{Count: 100, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("percentiles(1..100 ms): got %+v, want %+v", got, want)
	}
	if got := percentiles(nil); got != (Latencies{}) {
		t.Errorf("percentiles(nil): got %+v, want zero", got)
	}
	if got := percentiles([]int64{int64(7 * time.Millisecond)}); got.P50 != 7 || got.P99 != 7 || got.Max != 7 {
		t.Errorf("percentiles of one: got %+v", got)
	}
}

// TestRunClassifiesFailures loads a server that answers 200, 500, resets
// the connection, and an address that refuses: each failure is counted
// under its kind, and the report fails.
func TestRunClassifiesFailures(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	mux.HandleFunc("/reset", func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST
		}
		c.Close()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String() + "/"
	dead.Close()

	rep, err := Run(context.Background(), Options{
		Targets: []vegeta.Target{
			{Method: "GET", URL: srv.URL + "/ok"},
			{Method: "GET", URL: srv.URL + "/500"},
			{Method: "GET", URL: srv.URL + "/reset"},
			{Method: "GET", URL: deadURL},
		},
		Rate: 200, Duration: time.Second, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Passed() {
		t.Errorf("report passed with failures: %+v", rep.ByKind)
	}
	for _, k := range []string{"status 500", "reset", "refused"} {
		if rep.ByKind[k] == 0 {
			t.Errorf("no failure counted as %q: %v", k, rep.ByKind)
		}
	}
	if rep.OK == 0 {
		t.Errorf("no success counted")
	}
	sum := rep.OK
	for _, n := range rep.ByKind {
		sum += n
	}
	if sum != rep.Requests || rep.OK+rep.Failed != rep.Requests {
		t.Errorf("counts do not add up: %d ok + %v = %d, failed %d, requests %d", rep.OK, rep.ByKind, sum, rep.Failed, rep.Requests)
	}
	var secOK, secFailed int
	for _, s := range rep.Seconds {
		secOK += s.OK
		secFailed += s.Failed
	}
	if secOK != rep.OK || secFailed != rep.Failed {
		t.Errorf("per-second figures add up to %d ok, %d failed; want %d, %d", secOK, secFailed, rep.OK, rep.Failed)
	}
}

func TestReportHTML(t *testing.T) {
	start := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	rep := &Report{
		Targets: []string{"GET http://127.0.0.1:8080/"}, Rate: 100, Start: start, Duration: 10 * time.Second,
		Requests: 1000, OK: 998, Failed: 2, ByKind: map[string]int{"reset": 2},
		Events: []Event{
			{Kind: "upgrade", Start: start.Add(2 * time.Second), End: start.Add(2*time.Second + 20*time.Millisecond), OK: true, Detail: "pid 7"},
			{Kind: "restart", Target: "web1", Start: start.Add(5 * time.Second), End: start.Add(6 * time.Second), OK: false, Detail: "start_command failed"},
		},
		Failures: []Failure{{At: 5.5, Kind: "reset", Error: "connection reset"}, {At: 5.6, Kind: "reset", Error: "connection reset"}},
	}
	for s := 0; s < 10; s++ {
		rep.Seconds = append(rep.Seconds, Second{T: s, OK: 100, P50: 1, P99: 2, Max: 3})
	}
	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	// Two charts, each with one marker per event.
	if got, want := strings.Count(html, "event-marker"), 2*len(rep.Events); got != want {
		t.Errorf("event markers: got %d, want %d", got, want)
	}
	if got := strings.Count(html, `class="failure"`); got != len(rep.Failures) {
		t.Errorf("failure marks: got %d, want %d", got, len(rep.Failures))
	}
	for _, want := range []string{"<svg", "FAIL", "restart web1", "start_command failed", "<polyline"} {
		if !strings.Contains(html, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, fetch := range []string{"<script src", "<link ", "https://", "url("} {
		if strings.Contains(html, fetch) {
			t.Errorf("report is not self-contained: it has %q", fetch)
		}
	}
	var sum bytes.Buffer
	rep.WriteSummary(&sum)
	for _, want := range []string{"failed     2", "reset", "FAIL", "restart web1"} {
		if !strings.Contains(sum.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, sum.String())
		}
	}
}
