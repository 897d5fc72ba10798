package soak

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
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

func TestHist(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []int64 // ns
		q      float64
		want   int64
	}{
		{"empty", nil, 0.5, 0},
		{"one", []int64{7e6}, 0.99, 7e6},
		{"exact below 256ns", []int64{1, 2, 3, 200}, 0.5, 2},
		{"p50 of 1..100ms", msRange(1, 100), 0.50, 50e6},
		{"p90 of 1..100ms", msRange(1, 100), 0.90, 90e6},
		{"p99 of 1..100ms", msRange(1, 100), 0.99, 99e6},
		{"p100 is the max", msRange(1, 100), 1, 100e6},
		{"36 min and beyond share the last bucket", []int64{1 << 45}, 0.5, 1 << 45},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h hist
			for _, v := range tc.values {
				h.add(v)
			}
			got := h.quantile(tc.q)
			// Within the histogram's 0.8% resolution, and never below.
			if got < tc.want || float64(got-tc.want) > 0.008*float64(tc.want) {
				t.Errorf("quantile(%g): got %d, want %d (+0.8%%)", tc.q, got, tc.want)
			}
		})
	}
}

func msRange(from, to int) []int64 {
	var out []int64
	for i := from; i <= to; i++ {
		out = append(out, int64(i)*int64(time.Millisecond))
	}
	return out
}

// TestHistBuckets: every value falls in a bucket whose top is at least the
// value and at most 0.8% above it, buckets are in order, and the index
// stays in range.
func TestHistBuckets(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<42; v = v + 1 + v/300 {
		i := bucket(v)
		if i < prev || i >= histLen {
			t.Fatalf("bucket(%d) = %d after %d (len %d)", v, i, prev, histLen)
		}
		prev = i
		top := bucketTop(i)
		if v < 1<<41 && (top < v || float64(top-v) > 0.008*float64(v)+1) {
			t.Fatalf("bucket(%d) = %d, top %d", v, i, top)
		}
	}
}

// TestCollectorMemoryFlat: a million results over 200 seconds leave the
// heap where a hundred thousand over 20 seconds left it (give or take the
// per-second rows), the point of streaming percentiles.
func TestCollectorMemoryFlat(t *testing.T) {
	heapAfter := func(n, secs int) uint64 {
		start := time.Now()
		c := newCollector(start, 5*time.Second, &events{})
		res := &vegeta.Result{Code: 200}
		for i := range n {
			res.Timestamp = start.Add(time.Duration(i) * time.Duration(secs) * time.Second / time.Duration(n))
			res.Latency = time.Duration(100+i%5000) * time.Microsecond
			c.add(res)
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		r := &Report{Duration: time.Duration(secs) * time.Second}
		c.finish(r)
		if r.Requests != n || r.OK != n || len(r.Seconds) != secs+1 {
			t.Fatalf("%d results over %ds: report has %d requests, %d ok, %d seconds", n, secs, r.Requests, r.OK, len(r.Seconds))
		}
		return ms.HeapAlloc
	}
	small := heapAfter(100_000, 20)
	big := heapAfter(1_000_000, 200)
	// 17 bytes a result (what keeping every sample cost) would be 15 MB more.
	if big > small+2<<20 {
		t.Errorf("heap after 1M results %d bytes, after 100k %d: grows with the number of results", big, small)
	}
	t.Logf("heap: %d bytes after 100k results, %d after 1M", small, big)
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
	// Both charts mark each failure.
	if got := strings.Count(html, `class="failure"`); got != 2*len(rep.Failures) {
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
