// Package soak is `baton soak`: it loads a target with vegeta while it
// upgrades baton, restarts, drains and kills its backends and runs
// commands, on a schedule, and reports every request that failed, how
// latency moved around each event, and whether the pass criteria held.
//
// Memory does not grow with the number of requests: latencies go into
// fixed-size histograms (overall, near events, and one per second for the
// seconds still receiving results), and only failures are kept one by one
// (the first maxFailures). Every result can be streamed to a file in
// vegeta's encoding (Options.Output) for `vegeta report` and `vegeta plot`.
package soak

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/batonproxy/baton/backends"
)

// Defaults applied by Run to zero Options.
const (
	DefaultRate         = 500
	DefaultDuration     = 30 * time.Second
	DefaultTimeout      = 30 * time.Second
	DefaultWorkers      = 10
	DefaultMaxWorkers   = 500
	DefaultEventTimeout = 10 * time.Minute
	nearEvent           = time.Second // latency "around an event" is within this of it
	maxFailures         = 1000        // failures kept individually in the report
)

// SchemaVersion is the version of the JSON report (Report.Schema). Within
// a version fields are only ever added; a rename or removal raises it.
const SchemaVersion = 1

// Modes of a run.
const (
	ModeBaton  = "baton"  // load and events go through baton
	ModeDirect = "direct" // straight to the servers, events done as without baton
)

// Options configure a soak. Targets and Duration are required; the rest
// have usable zero values.
type Options struct {
	Targets []vegeta.Target
	Rate    int // requests per second; 0 means as fast as Workers allow
	RampTo  int // if > 0, the rate rises linearly from Rate to RampTo over Duration
	Workers int // concurrent clients (initial for a paced rate, all of them for rate 0)
	// MaxWorkers caps the clients a paced rate may grow to when the target
	// slows down (default DefaultMaxWorkers): beyond it the achieved rate
	// drops instead of the soak's memory and open files growing.
	MaxWorkers int
	Duration   time.Duration // how long to load
	Timeout    time.Duration // per request

	Socket   string                     // baton's control socket, for events and hold figures
	Backends map[string]backends.Config // baton's backends by name (from its configuration), for kill and direct mode

	// Events run at their time (Event.At after the load starts), each on
	// its own, so one may start while another is still running.
	Events []EventSpec
	// The flag form: every d, one at a time per kind.
	UpgradeEvery time.Duration // upgrade baton this often (0: never)
	RestartEvery time.Duration // restart a backend this often (0: never)
	Restart      []string      // backends to restart, in turn; empty: every restartable one

	Pass Criteria // MaxFailed 0 unless set

	// Mode is ModeBaton (the default) or ModeDirect: in direct mode the
	// targets already point at the servers and events are done to them
	// the way one would without baton (see EventSpec).
	Mode string

	TLS   *tls.Config // for https:// targets; nil: the system's roots
	HTTP2 bool        // HTTP/2 to https:// targets (else HTTP/1.1)

	WebSockets int    // long-lived WebSocket probes to WSPath on the first target's host
	WSPath     string // an echo endpoint

	Output   io.Writer // every result in vegeta's encoding; nil for none
	Progress io.Writer // a line per second; nil for none
}

// Criteria are the pass/fail limits of a soak. A zero MaxP99 or MaxHold
// is no limit; MaxFailed is always a limit (0 by default).
type Criteria struct {
	MaxFailed int
	MaxP99    time.Duration
	MaxHold   time.Duration
}

// Criterion is one limit and how the soak did against it.
type Criterion struct {
	Name   string `json:"name"` // max_failed, max_p99, max_hold
	Limit  string `json:"limit"`
	Value  string `json:"value"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Event is something done during the soak, with its outcome.
type Event struct {
	Kind    string    `json:"kind"`             // upgrade, restart, restart-all, drain, undrain, kill, command
	Target  string    `json:"target,omitempty"` // the backend, if any
	At      float64   `json:"at_s,omitempty"`   // scheduled, seconds after the start (scenario events)
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	OK      bool      `json:"ok"`
	Skipped bool      `json:"skipped,omitempty"` // nothing to do in this mode (an upgrade without baton)
	Detail  string    `json:"detail"`
}

// Duration is how long the event took.
func (e Event) Duration() time.Duration { return e.End.Sub(e.Start) }

// Name is the event's kind and target, e.g. "restart apache".
func (e Event) Name() string {
	if e.Target == "" {
		return e.Kind
	}
	return e.Kind + " " + e.Target
}

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

// BackendRate is one backend's requests per second over the run.
type BackendRate struct {
	Backend   string `json:"backend"`
	PerSecond []int  `json:"per_second"` // [i]: second i of the run
}

// Failure is one failed request.
type Failure struct {
	At    float64 `json:"at_s"` // seconds since the start
	Kind  string  `json:"kind"`
	Error string  `json:"error"`
	URL   string  `json:"url"`
}

// Hold is what baton reports about requests it held while no backend
// could take them, over every baton process seen during the soak.
type Hold struct {
	Max      time.Duration `json:"max_ns"`   // longest a request waited
	Held     int64         `json:"held"`     // requests that had to wait
	Timeouts int64         `json:"timeouts"` // gave up waiting (503)
	Known    bool          `json:"known"`    // baton's status could be read
}

// Report is the outcome of a soak.
type Report struct {
	Schema      int            `json:"schema_version"`
	Mode        string         `json:"mode"`
	Targets     []string       `json:"targets"`
	Rate        int            `json:"rate"`
	RampTo      int            `json:"ramp_to,omitempty"`
	Workers     int            `json:"workers"`
	Start       time.Time      `json:"start"`
	Duration    time.Duration  `json:"duration_ns"`
	Interrupted bool           `json:"interrupted,omitempty"`
	Requests    int            `json:"requests"`
	OK          int            `json:"ok"`
	Failed      int            `json:"failed"`
	ByKind      map[string]int `json:"failures_by_kind"`
	Achieved    float64        `json:"achieved_rate"`
	Latency     Latencies      `json:"latency"`
	NearEvents  Latencies      `json:"latency_near_events"` // in seconds within 1 s of an event
	Hold        Hold           `json:"hold"`
	// BackendRates are requests per second per backend, from baton's
	// status (sampled every 250 ms), to show how a restarted backend is
	// ramped back in (slow_start).
	BackendRates []BackendRate `json:"backend_rates,omitempty"`
	Events       []Event       `json:"events"`
	Criteria     []Criterion   `json:"criteria"`
	Seconds      []Second      `json:"seconds"`
	Failures     []Failure     `json:"failures,omitempty"` // the first 1000
	MaxRSS       int64         `json:"soak_max_rss_bytes"` // the soak process's peak resident memory
	WebSockets   *WSProbes     `json:"websockets,omitempty"`
	// Direct is the same soak straight to the servers, without baton
	// (--compare-direct), run first.
	Direct *Report `json:"direct,omitempty"`
}

// Passed reports whether every criterion held and no event failed.
func (r *Report) Passed() bool {
	if r.WebSockets.Failed() {
		return false
	}
	for _, c := range r.Criteria {
		if !c.OK {
			return false
		}
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

// Check validates o and fills its defaults without running anything: the
// errors a soak would stop on before loading. It asks baton (o.Socket)
// which backends exist.
func Check(ctx context.Context, o *Options) error {
	if len(o.Targets) == 0 {
		return errors.New("soak: no target")
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
	if o.MaxWorkers <= 0 {
		o.MaxWorkers = DefaultMaxWorkers
	}
	o.MaxWorkers = max(o.MaxWorkers, o.Workers)
	if o.Mode == "" {
		o.Mode = ModeBaton
	}
	switch {
	case o.Mode != ModeBaton && o.Mode != ModeDirect:
		return fmt.Errorf("soak: unknown mode %q", o.Mode)
	case o.Rate < 0 || o.RampTo < 0:
		return errors.New("soak: rate must not be negative")
	case o.RampTo > 0 && o.Rate == 0:
		return errors.New("soak: a ramp needs a starting rate above 0")
	case o.Pass.MaxFailed < 0:
		return errors.New("soak: max_failed must not be negative")
	}
	if o.Mode == ModeDirect {
		return checkEvents(o, nil)
	}
	needSocket := o.UpgradeEvery > 0 || o.RestartEvery > 0 || o.Pass.MaxHold > 0
	for _, e := range o.Events {
		needSocket = needSocket || e.Kind != KindCommand && e.Kind != KindKill
	}
	if needSocket && o.Socket == "" {
		return errors.New("soak: events and max_hold need baton's control socket (--socket or --config)")
	}
	var known []backends.Status
	if o.Socket != "" {
		var err error
		if known, err = statusBackends(ctx, o.Socket); err != nil {
			return err
		}
	}
	if o.RestartEvery > 0 && len(o.Restart) == 0 {
		for _, b := range known {
			if b.Kind != "" && b.Kind != backends.KindNone {
				o.Restart = append(o.Restart, b.Name)
			}
		}
		if len(o.Restart) == 0 {
			return errors.New("soak: --restart-every given but baton has no restartable backend (set kind)")
		}
	}
	for _, name := range o.Restart {
		if !hasBackend(known, name) {
			return fmt.Errorf("soak: --restart %s: baton has no backend %q (it has %s)", name, name, backendNames(known))
		}
	}
	return checkEvents(o, known)
}

// Run performs the soak and returns its report. The error is for a soak
// that could not run at all (nil report), or for results that could not be
// written to o.Output (with the report). When ctx ends (Ctrl-C), the load
// stops, events not started yet are dropped, events under way are waited
// for, and the report says it was interrupted.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := Check(ctx, &o); err != nil {
		return nil, err
	}
	// Our own transport, so that its idle keep-alive connections can be
	// closed when the load ends: left open, they would keep a server's
	// graceful stop waiting (lighttpd waits out its idle keep-alive
	// connections) in whatever runs next.
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     vegeta.DefaultTLSConfig,
		MaxIdleConnsPerHost: 10000,
	}
	defer tr.CloseIdleConnections()
	opts := []func(*vegeta.Attacker){
		vegeta.Client(&http.Client{Transport: tr}),
		vegeta.KeepAlive(true), vegeta.Timeout(o.Timeout), vegeta.MaxBody(0),
		vegeta.Workers(uint64(o.Workers)), vegeta.Connections(10000), vegeta.Redirects(vegeta.NoFollow),
	}
	var pacer vegeta.Pacer = vegeta.Rate{Freq: o.Rate, Per: time.Second}
	if o.RampTo > 0 {
		pacer = vegeta.LinearPacer{
			StartAt: vegeta.Rate{Freq: o.Rate, Per: time.Second},
			Slope:   float64(o.RampTo-o.Rate) / o.Duration.Seconds(),
		}
	}
	if o.Rate == 0 {
		opts = append(opts, vegeta.MaxWorkers(uint64(o.Workers)))
	} else {
		opts = append(opts, vegeta.MaxWorkers(uint64(o.MaxWorkers)))
	}
	if o.TLS != nil {
		opts = append(opts, vegeta.TLSConfig(o.TLS))
	}
	opts = append(opts, vegeta.HTTP2(o.HTTP2)) // after TLSConfig: it adds h2 to its ALPN
	attacker := vegeta.NewAttacker(opts...)
	var wsU *url.URL
	if o.WebSockets > 0 && len(o.Targets) > 0 {
		var err error
		if wsU, err = wsURL(o.Targets[0].URL, o.WSPath); err != nil {
			return nil, err
		}
	}

	r := &Report{Schema: SchemaVersion, Mode: o.Mode, Rate: o.Rate, RampTo: o.RampTo, Workers: o.Workers,
		Start: time.Now(), ByKind: map[string]int{}}
	r.Targets = describeTargets(o.Targets)
	ev := &events{}
	col := newCollector(r.Start, o.Timeout, ev)
	run := &runner{socket: o.Socket, backends: o.Backends, direct: o.Mode == ModeDirect}
	var holds *holdWatch
	if o.Socket != "" && o.Mode == ModeBaton {
		holds = &holdWatch{socket: o.Socket, byPID: map[int]holdSample{}}
	}

	// Every goroutine below is stopped by runCtx (the load's end or ctx)
	// and waited for by wg before the report is finished.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i, spec := range o.Events {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev.at(runCtx, r.Start, i, spec, run)
		}()
	}
	if o.UpgradeEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev.every(runCtx, o.UpgradeEvery, o.Duration, func(int) EventSpec { return EventSpec{Kind: KindUpgrade} }, run)
		}()
	}
	if o.RestartEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev.every(runCtx, o.RestartEvery, o.Duration, func(i int) EventSpec {
				return EventSpec{Kind: KindRestart, Backend: o.Restart[i%len(o.Restart)]}
			}, run)
		}()
	}
	if holds != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holds.watch(runCtx)
		}()
	}
	if wsU != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.WebSockets = runWSProbes(runCtx, wsU, o.WebSockets, o.TLS)
		}()
	}
	if o.Progress != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			progress(runCtx, o.Progress, r.Start, col, ev)
		}()
	}
	// The attack ends by itself at Duration, or early when ctx ends.
	attackDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			attacker.Stop()
		case <-attackDone:
		}
	}()

	var enc vegeta.Encoder
	var out *bufio.Writer
	var outErr error
	if o.Output != nil {
		out = bufio.NewWriterSize(o.Output, 64<<10)
		enc = vegeta.NewEncoder(out)
	}
	for res := range attacker.Attack(vegeta.NewStaticTargeter(o.Targets...), pacer, o.Duration, o.Mode) {
		col.add(res)
		if enc != nil && outErr == nil {
			outErr = enc.Encode(res)
		}
	}
	close(attackDone)
	tr.CloseIdleConnections()
	r.Interrupted = ctx.Err() != nil
	r.Duration = time.Since(r.Start)
	// The load is over: stop the timers of events not yet due, the progress
	// line and the hold watch; wait for events under way.
	cancel()
	wg.Wait()
	if o.Progress != nil {
		fmt.Fprintln(o.Progress)
	}
	if out != nil && outErr == nil {
		outErr = out.Flush()
	}
	r.Events = ev.list()
	col.finish(r)
	if holds != nil {
		holds.sample(context.WithoutCancel(ctx))
		r.Hold = holds.total()
		r.BackendRates = holds.backendRates(r.Start, int(math.Ceil(r.Duration.Seconds())))
	}
	r.Criteria = o.Pass.judge(r)
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		r.MaxRSS = ru.Maxrss * 1024
	}
	if outErr != nil {
		return r, fmt.Errorf("soak: write results: %w", outErr)
	}
	return r, nil
}

// judge checks r against the criteria.
func (c Criteria) judge(r *Report) []Criterion {
	out := []Criterion{{
		Name: "max_failed", Limit: fmt.Sprint(c.MaxFailed), Value: fmt.Sprint(r.Failed), OK: r.Failed <= c.MaxFailed,
		Detail: fmt.Sprintf("%d of %d requests failed", r.Failed, r.Requests),
	}}
	if len(r.ByKind) > 0 {
		var kinds []string
		for _, k := range sortedKeys(r.ByKind) {
			kinds = append(kinds, fmt.Sprintf("%s: %d", k, r.ByKind[k]))
		}
		out[0].Detail += " (" + strings.Join(kinds, ", ") + ")"
	}
	if r.Interrupted {
		out = append(out, Criterion{Name: "completed", Limit: "yes", Value: "no",
			Detail: fmt.Sprintf("interrupted after %s", r.Duration.Round(time.Millisecond))})
	}
	if c.MaxP99 > 0 {
		p99 := time.Duration(r.Latency.P99 * float64(time.Millisecond))
		out = append(out, Criterion{Name: "max_p99", Limit: c.MaxP99.String(), Value: p99.Round(10 * time.Microsecond).String(),
			OK: p99 <= c.MaxP99, Detail: fmt.Sprintf("p99 latency over %d requests", r.Latency.Count)})
	}
	if c.MaxHold > 0 {
		cr := Criterion{Name: "max_hold", Limit: c.MaxHold.String(), Value: r.Hold.Max.Round(time.Millisecond).String(),
			OK:     r.Hold.Known && r.Hold.Max <= c.MaxHold,
			Detail: fmt.Sprintf("longest hold baton reported; %d requests held, %d hold timeouts", r.Hold.Held, r.Hold.Timeouts)}
		if !r.Hold.Known {
			cr.Value, cr.Detail = "unknown", "baton's status could not be read"
		}
		out = append(out, cr)
	}
	return out
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
