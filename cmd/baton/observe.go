package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/accesslog"
	"github.com/batonproxy/baton/cmd/internal/metrics"
	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/internal/shmem"
	"github.com/batonproxy/baton/proxy"
)

// metricsFile is the name under which the metrics table is passed to the
// next generation.
const metricsFile = "baton.metrics"

// observer is the proxy's Observer: every finished request goes into the
// shared counters and, if configured, the access log.
type observer struct {
	table *metrics.Table
	log   *accesslog.Log // nil: no access log
	h     *handoff.Handoff
	gen   int
}

func (o *observer) Observe(e *proxy.Exchange) {
	o.table.Observe(e)
	if o.log != nil {
		o.log.Log(e, accesslog.Extra{Generation: o.gen, Draining: o.h.Draining(), DrainCut: o.h.DrainCut()})
	}
}

// openMetrics maps the metrics table inherited from the previous
// generation, or a new one, passes it on, and registers the backends. A
// table that cannot be used is replaced by a new one (counters begin again
// from zero), and what was corrupt in one that can is logged.
func openMetrics(h *handoff.Handoff, names []string, log *slog.Logger) (*metrics.Table, error) {
	f, err := h.File(metricsFile)
	if err != nil {
		return nil, err
	}
	var t *metrics.Table
	if f != nil {
		t, err = metrics.OpenTable(f)
		if err != nil {
			log.Error("refused the metrics table passed by the previous generation; starting from a new one: counters begin again from zero", "err", err)
			t, err = metrics.NewTable()
		} else {
			logRepairs(log, t.Repairs())
		}
	} else {
		t, err = metrics.NewTable()
	}
	if err != nil {
		return nil, err
	}
	if err := h.AddFile(metricsFile, t.File()); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.Register(names); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// logRepairs logs what a loader of shared memory found corrupt and did.
func logRepairs(log *slog.Logger, rs []shmem.Repair) {
	for _, r := range rs {
		logRepair(log, r)
	}
}

func logRepair(log *slog.Logger, r shmem.Repair) {
	log.Warn("corrupt shared memory dropped", "table", r.Table, "entry", r.Entry, "field", r.Field, "problem", r.Problem, "action", r.Action)
}

// recordRestart is backends.Options.OnRestart: restarts into the shared
// counters, the last one per backend kept for the status page.
func (i *instance) recordRestart(r backends.RestartResult) {
	steps := make([]metrics.Step, len(r.Steps))
	for k, s := range r.Steps {
		steps[k] = metrics.Step{Name: s.Name, Duration: s.Duration}
	}
	if t := i.mtab.Load(); t != nil {
		t.RecordRestart(r.Backend, r.OK, steps)
	}
	i.restartsMu.Lock()
	if i.lastRestarts == nil {
		i.lastRestarts = map[string]backends.RestartResult{}
	}
	i.lastRestarts[r.Backend] = r
	i.restartsMu.Unlock()
}

// recordUpgrade is handoff.Options.OnUpgrade.
func (i *instance) recordUpgrade(res handoff.UpgradeResult, err error) {
	if t := i.mtab.Load(); t != nil {
		t.RecordUpgrade(err == nil, res.Took)
	}
}

// event is one line of the status page's recent events: what baton logged
// at info level or above.
type event struct {
	Time  time.Time `json:"time"`
	Level string    `json:"level"`
	Msg   string    `json:"msg"`
	Attrs string    `json:"attrs,omitempty"`
}

// eventRing keeps the last events. It is safe for concurrent use.
type eventRing struct {
	mu   sync.Mutex
	buf  []event
	next int
	full bool
}

func newEventRing(n int) *eventRing { return &eventRing{buf: make([]event, n)} }

func (r *eventRing) add(e event) {
	r.mu.Lock()
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
	r.mu.Unlock()
}

// list returns the events, newest first.
func (r *eventRing) list() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	out := make([]event, 0, n)
	for k := 1; k <= n; k++ {
		out = append(out, r.buf[(r.next-k+len(r.buf))%len(r.buf)])
	}
	return out
}

// teeHandler passes records on to h and copies those at info level and
// above into ring, for the status page. Logging is off the hot path
// (errors are logged once per burst), so the copy costs nothing there.
type teeHandler struct {
	h    slog.Handler
	ring *eventRing
}

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || t.h.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		var sb strings.Builder
		r.Attrs(func(a slog.Attr) bool {
			if sb.Len() > 0 {
				sb.WriteByte(' ')
			}
			fmt.Fprintf(&sb, "%s=%v", a.Key, a.Value)
			return sb.Len() < 400
		})
		t.ring.add(event{Time: r.Time, Level: r.Level.String(), Msg: r.Message, Attrs: sb.String()})
	}
	if t.h.Enabled(ctx, r.Level) {
		return t.h.Handle(ctx, r)
	}
	return nil
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{h: t.h.WithAttrs(as), ring: t.ring}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{h: t.h.WithGroup(name), ring: t.ring}
}
