package metrics

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

func newTable(t *testing.T) *Table {
	t.Helper()
	tb, err := NewTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	if err := tb.Register([]string{"web1", "web2"}); err != nil {
		t.Fatal(err)
	}
	return tb
}

// reopen maps tb's memfd again, as the next generation does.
func reopen(t *testing.T, tb *Table, names ...string) *Table {
	t.Helper()
	fd, err := unix.Dup(int(tb.File().Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := OpenTable(os.NewFile(uintptr(fd), "dup"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { t2.Close() })
	if err := t2.Register(names); err != nil {
		t.Fatal(err)
	}
	return t2
}

func scrape(t *testing.T, tb *Table) string {
	t.Helper()
	var b bytes.Buffer
	if err := tb.Write(&b, Live{Generation: 2, Version: "v", Backends: []BackendLive{{Name: "web1", State: "up", InFlight: 3}}}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func has(t *testing.T, text string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(text, "\n"+l+"\n") {
			t.Errorf("missing %q", l)
		}
	}
}

func TestSharedAcrossGenerations(t *testing.T) {
	old := newTable(t)
	e := &proxy.Exchange{Status: 200, Backend: "web1", Attempts: 3, DialRetries: 1, Upstream: 3 * time.Millisecond, Total: 4 * time.Millisecond, BytesOut: 10}
	old.Observe(e)
	// The next generation has a backend more and one less.
	next := reopen(t, old, "web1", "web3")
	next.Observe(e)
	old.Observe(&proxy.Exchange{Status: 503, Term: proxy.TermHoldTimeout, Held: 2 * time.Second, Total: 2 * time.Second})
	next.Observe(&proxy.Exchange{Status: 502, Backend: "web3", Attempts: 1, Term: proxy.TermBackendRefused})
	next.RecordUpgrade(true, 30*time.Millisecond)
	next.RecordRestart("web1", true, []Step{{"drain", time.Millisecond}, {"restart", 20 * time.Millisecond}, {"healthy", 5 * time.Millisecond}})
	for _, tb := range []*Table{old, next} {
		text := scrape(t, tb)
		has(t, text,
			`baton_requests_total{backend="web1",code="2xx"} 2`,
			`baton_requests_total{backend="(none)",code="5xx"} 1`,
			`baton_requests_terminated_total{cause="hold_timeout"} 1`,
			`baton_retries_total{reason="connect"} 2`,
			`baton_retries_total{reason="reset"} 2`,
			`baton_upstream_duration_seconds_bucket{backend="web1",le="0.0025"} 0`,
			`baton_upstream_duration_seconds_bucket{backend="web1",le="0.005"} 2`,
			`baton_upstream_duration_seconds_bucket{backend="web1",le="+Inf"} 2`,
			`baton_upstream_duration_seconds_count{backend="web1"} 2`,
			`baton_upstream_duration_seconds_sum{backend="web1"} 0.006`,
			`baton_hold_duration_seconds_count 1`,
			`baton_request_duration_seconds_count 4`,
			`baton_response_bytes_total{backend="web1"} 20`,
			`baton_upgrades_total{result="ok"} 1`,
			`baton_backend_restarts_total{backend="web1",result="ok"} 1`,
			`baton_backend_restart_step_duration_seconds_count{backend="web1",step="restart"} 1`,
			`baton_backend_up{backend="web1"} 1`,
			`baton_backend_in_flight_requests{backend="web1"} 3`,
			`baton_generation 2`,
		)
	}
	has(t, scrape(t, next), `baton_requests_total{backend="web3",code="5xx"} 1`)
	for _, tb := range []*Table{old, next} {
		if req, errs := tb.Totals(); req != 4 || errs != 2 {
			t.Errorf("Totals: got %d requests, %d errors; want 4, 2 (web3's included where it is not registered)", req, errs)
		}
	}
}

func TestObserveAllocs(t *testing.T) {
	tb := newTable(t)
	e := &proxy.Exchange{Status: 200, Backend: "web2", Attempts: 1, Upstream: time.Millisecond, Total: time.Millisecond}
	if n := testing.AllocsPerRun(1000, func() { tb.Observe(e) }); n != 0 {
		t.Errorf("Observe: %v allocations, want 0", n)
	}
}

func TestGenerations(t *testing.T) {
	tb := newTable(t)
	tb.Join(5, time.Now())
	tb.Serving()
	gs := tb.Generations()
	if len(gs) != 1 || gs[0].PID != os.Getpid() || gs[0].Generation != 5 || gs[0].State != "serving" {
		t.Fatalf("generations: %+v", gs)
	}
	tb.Draining()
	if gs := tb.Generations(); gs[0].State != "draining" {
		t.Errorf("state after Draining: %s", gs[0].State)
	}
	tb.Leave()
	if gs := tb.Generations(); len(gs) != 0 {
		t.Errorf("after Leave: %+v", gs)
	}
}

func BenchmarkObserve(b *testing.B) {
	tb, _ := NewTable()
	defer tb.Close()
	tb.Register([]string{"web1"})
	e := &proxy.Exchange{Status: 200, Backend: "web1", Attempts: 1, Upstream: time.Millisecond, Total: time.Millisecond, BytesOut: 100}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tb.Observe(e)
		}
	})
}
