// Package soak is `baton soak`: it loads a target with vegeta while it
// upgrades baton and restarts its backends through the control socket, and
// reports every request that failed and how latency moved around each
// event. A soak passes only if no request and no event failed.
package soak

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/batonproxy/baton/cmd/internal/control"
)

// Defaults applied by Run to zero Options.
const (
	DefaultRate     = 500
	DefaultDuration = 30 * time.Second
	DefaultTimeout  = 30 * time.Second
	DefaultWorkers  = 10
	nearEvent       = time.Second // latency "around an event" is within this of it
	maxFailures     = 1000        // failures kept individually in the report
)

// Options configure a soak. Targets and Duration are required; the rest
// have usable zero values.
type Options struct {
	Targets  []vegeta.Target
	Rate     int           // requests per second; 0 means as fast as Workers allow
	Workers  int           // concurrent clients (initial for a paced rate, all of them for rate 0)
	Duration time.Duration // how long to load
	Timeout  time.Duration // per request

	Socket       string        // baton's control socket, for events
	UpgradeEvery time.Duration // upgrade baton this often (0: never)
	RestartEvery time.Duration // restart a backend this often (0: never)
	Restart      []string      // backends to restart, in turn; empty: every restartable one

	TLS   *tls.Config // for https:// targets; nil: the system's roots
	HTTP2 bool        // HTTP/2 to https:// targets (else HTTP/1.1)

	WebSockets int    // long-lived WebSocket probes to WSPath on the first target's host
	WSPath     string // an echo endpoint

	Progress io.Writer // a line per second; nil for none
}

// Event is an upgrade or restart triggered during the soak.
type Event struct {
	Kind   string    `json:"kind"` // upgrade or restart
	Target string    `json:"target,omitempty"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	OK     bool      `json:"ok"`
	Detail string    `json:"detail"`
}

// Duration is how long the event took.
func (e Event) Duration() time.Duration { return e.End.Sub(e.Start) }

// Latencies are percentiles in milliseconds.
type Latencies struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

// Second is one second of the run.
type Second struct {
	T      int     `json:"t"` // seconds since the start
	OK     int     `json:"ok"`
	Failed int     `json:"failed"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

// Failure is one failed request.
type Failure struct {
	At    float64 `json:"at_s"` // seconds since the start
	Kind  string  `json:"kind"`
	Error string  `json:"error"`
	URL   string  `json:"url"`
}

// Report is the outcome of a soak.
type Report struct {
	Targets    []string       `json:"targets"`
	Rate       int            `json:"rate"`
	Workers    int            `json:"workers"`
	Start      time.Time      `json:"start"`
	Duration   time.Duration  `json:"duration_ns"`
	Requests   int            `json:"requests"`
	OK         int            `json:"ok"`
	Failed     int            `json:"failed"`
	ByKind     map[string]int `json:"failures_by_kind"`
	Achieved   float64        `json:"achieved_rate"`
	Latency    Latencies      `json:"latency"`
	NearEvents Latencies      `json:"latency_near_events"` // within 1 s of an event
	Events     []Event        `json:"events"`
	Seconds    []Second       `json:"seconds"`
	Failures   []Failure      `json:"failures,omitempty"` // the first 1000
	WebSockets *WSProbes      `json:"websockets,omitempty"`
}

// Passed reports whether nothing failed: no request, no event.
func (r *Report) Passed() bool {
	if r.Failed > 0 || r.WebSockets.Failed() {
		return false
	}
	for _, e := range r.Events {
		if !e.OK {
			return false
		}
	}
	return true
}

// Classify names the kind of a failure: "status NNN" for an HTTP error
// status, else refused, reset, timeout, eof or error. It returns "" for a
// success (2xx or 3xx).
func Classify(code uint16, errText string) string {
	if errText == "" && code >= 200 && code < 400 {
		return ""
	}
	if code != 0 && errText == "" {
		return fmt.Sprintf("status %d", code)
	}
	e := strings.ToLower(errText)
	switch {
	case strings.Contains(e, "connection refused"):
		return "refused"
	case strings.Contains(e, "connection reset"), strings.Contains(e, "broken pipe"):
		return "reset"
	case strings.Contains(e, "timeout"), strings.Contains(e, "deadline exceeded"):
		return "timeout"
	case strings.Contains(e, "eof"), strings.Contains(e, "server closed idle connection"):
		return "eof"
	case code != 0 && (code < 200 || code >= 400):
		return fmt.Sprintf("status %d", code)
	case code != 0:
		return "error"
	}
	return "error"
}

// Run performs the soak and returns its report; the error is for a soak
// that could not run at all.
func Run(ctx context.Context, o Options) (*Report, error) {
	if len(o.Targets) == 0 {
		return nil, errors.New("soak: no target")
	}
	if o.Duration <= 0 {
		o.Duration = DefaultDuration
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Rate < 0 {
		return nil, errors.New("soak: rate must not be negative")
	}
	if (o.UpgradeEvery > 0 || o.RestartEvery > 0) && o.Socket == "" {
		return nil, errors.New("soak: events need --socket (baton's control socket)")
	}
	var wsU *url.URL
	if o.WebSockets > 0 {
		var err error
		if wsU, err = wsURL(o.Targets[0].URL, o.WSPath); err != nil {
			return nil, err
		}
	}
	restart := o.Restart
	if o.RestartEvery > 0 && len(restart) == 0 {
		var err error
		if restart, err = restartable(ctx, o.Socket); err != nil {
			return nil, err
		}
	}

	opts := []func(*vegeta.Attacker){
		vegeta.KeepAlive(true), vegeta.Timeout(o.Timeout), vegeta.MaxBody(0),
		vegeta.Workers(uint64(o.Workers)), vegeta.Connections(10000), vegeta.Redirects(vegeta.NoFollow),
	}
	if o.TLS != nil {
		opts = append(opts, vegeta.TLSConfig(o.TLS))
	}
	opts = append(opts, vegeta.HTTP2(o.HTTP2)) // after TLSConfig: it adds h2 to its ALPN
	pacer := vegeta.Rate{Freq: o.Rate, Per: time.Second}
	if o.Rate == 0 {
		opts = append(opts, vegeta.MaxWorkers(uint64(o.Workers)))
	}
	attacker := vegeta.NewAttacker(opts...)

	r := &Report{Rate: o.Rate, Workers: o.Workers, Start: time.Now(), ByKind: map[string]int{}}
	r.Targets = describeTargets(o.Targets)
	col := newCollector(r.Start)
	ev := &events{}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if o.UpgradeEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev.every(runCtx, o.UpgradeEvery, o.Duration, func(int) Event { return upgrade(runCtx, o.Socket) })
		}()
	}
	if o.RestartEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev.every(runCtx, o.RestartEvery, o.Duration, func(i int) Event {
				return restartOne(runCtx, o.Socket, restart[i%len(restart)])
			})
		}()
	}
	if o.Progress != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			progress(runCtx, o.Progress, r.Start, col, ev)
		}()
	}
	if wsU != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.WebSockets = runWSProbes(runCtx, wsU, o.WebSockets, o.TLS)
		}()
	}
	go func() {
		<-runCtx.Done()
		attacker.Stop()
	}()
	for res := range attacker.Attack(vegeta.NewStaticTargeter(o.Targets...), pacer, o.Duration, "soak") {
		col.add(res)
	}
	cancel()
	wg.Wait()
	if o.Progress != nil {
		fmt.Fprintln(o.Progress)
	}
	r.Events = ev.list()
	col.finish(r)
	return r, nil
}

// describeTargets lists the distinct targets in order, with how many times
// each stands in the list (its share of the load) when more than once.
func describeTargets(ts []vegeta.Target) []string {
	count := map[string]int{}
	var order []string
	for _, t := range ts {
		k := t.Method + " " + t.URL
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	out := make([]string, len(order))
	for i, k := range order {
		out[i] = k
		if n := count[k]; n > 1 {
			out[i] = fmt.Sprintf("%s (x%d)", k, n)
		}
	}
	return out
}

// restartable asks baton which backends can be restarted.
func restartable(ctx context.Context, socket string) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := control.Do(cctx, socket, control.Request{Cmd: control.CmdStatus})
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	if resp.Status == nil {
		return nil, fmt.Errorf("soak: status: %s", resp.Error)
	}
	var out []string
	for _, b := range resp.Status.Backends {
		if b.Kind != "" && b.Kind != "none" {
			out = append(out, b.Name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("soak: --restart-every given but baton has no restartable backend (set kind)")
	}
	return out, nil
}

func upgrade(ctx context.Context, socket string) Event {
	return event(ctx, socket, "upgrade", "", control.Request{Cmd: control.CmdUpgrade}, func(resp control.Response) string {
		u := resp.Upgrade
		if u == nil {
			return ""
		}
		return fmt.Sprintf("pid %d, generation %d, ready in %s", u.PID, u.Generation, u.Took.Round(time.Microsecond))
	})
}

func restartOne(ctx context.Context, socket, name string) Event {
	return event(ctx, socket, "restart", name, control.Request{Cmd: control.CmdRestart, Backend: name}, func(resp control.Response) string {
		if len(resp.Restarts) != 1 {
			return ""
		}
		rr := resp.Restarts[0]
		var steps []string
		for _, s := range rr.Steps {
			steps = append(steps, fmt.Sprintf("%s %s", s.Name, s.Duration.Round(time.Millisecond)))
		}
		return fmt.Sprintf("pid %d -> %d; %s", rr.OldPID, rr.NewPID, strings.Join(steps, ", "))
	})
}

// event sends req to baton's control socket and records it as an event of
// kind on target: ok with detail(response), or failed with the error.
func event(ctx context.Context, socket, kind, target string, req control.Request, detail func(control.Response) string) Event {
	e := Event{Kind: kind, Target: target, Start: time.Now()}
	resp, err := control.Do(ctx, socket, req)
	e.End = time.Now()
	switch {
	case err != nil:
		e.Detail = err.Error()
	case !resp.OK:
		e.Detail = resp.Error
	default:
		e.OK = true
		e.Detail = detail(resp)
	}
	return e
}

// events records events; one kind runs one at a time.
type events struct {
	mu    sync.Mutex
	items []Event
	last  string
}

func (ev *events) add(e Event) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.items = append(ev.items, e)
	state := "ok"
	if !e.OK {
		state = "FAILED"
	}
	ev.last = fmt.Sprintf("%s %s %s (%s)", e.Kind, e.Target, state, e.Duration().Round(time.Millisecond))
}

func (ev *events) list() []Event {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	out := slices.Clone(ev.items)
	slices.SortFunc(out, func(a, b Event) int { return a.Start.Compare(b.Start) })
	return out
}

func (ev *events) lastText() string {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.last
}

// every runs f at each multiple of d until the load ends, one call at a
// time (a tick that comes while f runs is skipped).
func (ev *events) every(ctx context.Context, d, total time.Duration, f func(int) Event) {
	t := time.NewTicker(d)
	defer t.Stop()
	end := time.After(total - d/4)
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-end:
			return
		case <-t.C:
		}
		ev.add(f(i))
	}
}

// collector accumulates results.
type collector struct {
	start time.Time
	mu    sync.Mutex
	at    []int64 // ns since start, per request
	lat   []int64 // latency ns, per request
	fail  []bool
	byKnd map[string]int
	fails []Failure
	nOK   int
	nFail int
}

func newCollector(start time.Time) *collector {
	return &collector{start: start, byKnd: map[string]int{}}
}

func (c *collector) add(res *vegeta.Result) {
	kind := Classify(res.Code, res.Error)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at = append(c.at, res.Timestamp.Sub(c.start).Nanoseconds())
	c.lat = append(c.lat, res.Latency.Nanoseconds())
	c.fail = append(c.fail, kind != "")
	if kind == "" {
		c.nOK++
		return
	}
	c.nFail++
	c.byKnd[kind]++
	if len(c.fails) < maxFailures {
		msg := res.Error
		if msg == "" {
			msg = http.StatusText(int(res.Code))
		}
		c.fails = append(c.fails, Failure{At: res.Timestamp.Sub(c.start).Seconds(), Kind: kind, Error: msg, URL: res.URL})
	}
}

func (c *collector) snapshot() (ok, failed int, p99 float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.lat)
	from := max(0, n-2000)
	recent := slices.Clone(c.lat[from:])
	return c.nOK, c.nFail, percentiles(recent).P99
}

func (c *collector) finish(r *Report) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r.Duration = time.Since(r.Start)
	r.Requests, r.OK, r.Failed = len(c.lat), c.nOK, c.nFail
	r.ByKind = c.byKnd
	r.Failures = c.fails
	if r.Duration > 0 {
		r.Achieved = float64(r.Requests) / r.Duration.Seconds()
	}
	r.Latency = percentiles(c.lat)

	var near []int64
	for i, at := range c.at {
		t := c.start.Add(time.Duration(at))
		for _, e := range r.Events {
			if !t.Before(e.Start.Add(-nearEvent)) && !t.After(e.End.Add(nearEvent)) {
				near = append(near, c.lat[i])
				break
			}
		}
	}
	r.NearEvents = percentiles(near)

	secs := int(r.Duration/time.Second) + 1
	buckets := make([][]int64, secs)
	r.Seconds = make([]Second, secs)
	for i, at := range c.at {
		s := min(int(at/int64(time.Second)), secs-1)
		s = max(s, 0)
		buckets[s] = append(buckets[s], c.lat[i])
		if c.fail[i] {
			r.Seconds[s].Failed++
		} else {
			r.Seconds[s].OK++
		}
	}
	for s := range r.Seconds {
		p := percentiles(buckets[s])
		r.Seconds[s].T, r.Seconds[s].P50, r.Seconds[s].P99, r.Seconds[s].Max = s, p.P50, p.P99, p.Max
	}
}

// percentiles computes nearest-rank percentiles of latencies in ns, in ms.
func percentiles(ns []int64) Latencies {
	if len(ns) == 0 {
		return Latencies{}
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		i = min(max(i, 0), len(s)-1)
		return float64(s[i]) / 1e6
	}
	return Latencies{Count: len(s), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: float64(s[len(s)-1]) / 1e6}
}

func progress(ctx context.Context, w io.Writer, start time.Time, c *collector, ev *events) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastN := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, failed, p99 := c.snapshot()
		n := ok + failed
		last := ev.lastText()
		if last == "" {
			last = "-"
		}
		fmt.Fprintf(w, "\r%5.0fs  %6d req/s  ok %-8d failed %-5d p99 %7.2fms  last event: %-50.50s",
			time.Since(start).Seconds(), n-lastN, ok, failed, p99, last)
		lastN = n
	}
}
