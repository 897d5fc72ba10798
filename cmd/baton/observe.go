package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/accesslog"
	"github.com/batonproxy/baton/cmd/internal/events"
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
	cuts  *drainCuts
}

func (o *observer) Observe(e *proxy.Exchange) {
	// cuts.deadline is set before any server closes a connection at the
	// deadline (deadlineWatch); the Handoff's flag may come a moment
	// after.
	cut := o.cuts.deadline.Load() || o.h.DrainCut()
	if cut && e.Term == proxy.TermClientAborted {
		o.cuts.n.Add(1)
	}
	o.table.Observe(e)
	if o.log != nil {
		o.log.Log(e, accesslog.Extra{Generation: o.gen, Draining: o.h.Draining(), DrainCut: cut})
	}
}

// drainCuts counts the requests that the drain deadline cut short in this
// process: those that ended, once it had passed, without the whole
// response (accesslog's "drained"). Only an observer sees how a request
// ends; without one (no access log, no admin listener) shutdown goes by
// the requests in flight at the deadline.
type drainCuts struct {
	deadline atomic.Bool  // the drain deadline has passed
	n        atomic.Int64 // requests cut short since
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

// eventsFile is the name under which the events ring is passed to the
// next generation.
const eventsFile = "baton.events"

// openEvents maps the events ring inherited from the previous generation,
// or a new one, and passes it on. An inherited ring that cannot be used
// (another layout) costs its events, not the start.
func openEvents(h *handoff.Handoff) (r *events.Ring, lost error, err error) {
	f, err := h.File(eventsFile)
	if err != nil {
		return nil, nil, err
	}
	if f != nil {
		if r, lost = events.Open(f); lost != nil {
			r = nil
		}
	}
	if r == nil {
		if r, err = events.New(); err != nil {
			return nil, lost, err
		}
	}
	if err := h.AddFile(eventsFile, r.File()); err != nil {
		r.Close()
		return nil, lost, err
	}
	return r, lost, nil
}

// eventLog is where log records at info level and above go for the status
// page: the events ring shared by every generation once start has opened
// it, a few records kept here before. It is safe for concurrent use.
type eventLog struct {
	ring atomic.Pointer[events.Ring]
	gen  atomic.Int64 // this process's generation, once known
	pid  int

	mu    sync.Mutex
	early []events.Event // before attach
}

func newEventLog() *eventLog { return &eventLog{pid: os.Getpid()} }

func (l *eventLog) add(e events.Event) {
	e.PID, e.Generation = l.pid, int(l.gen.Load())
	if r := l.ring.Load(); r != nil {
		r.Add(e)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.ring.Load(); r != nil {
		r.Add(e)
	} else if len(l.early) < events.Size {
		l.early = append(l.early, e)
	}
}

// attach sends the events to r from now on, the early ones first. The
// ring is never unmapped: a goroutine may log until the process exits.
func (l *eventLog) attach(r *events.Ring) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.early {
		r.Add(e)
	}
	l.early = nil
	l.ring.Store(r)
}

// list returns the events, newest first.
func (l *eventLog) list() []event {
	var evs []events.Event
	if r := l.ring.Load(); r != nil {
		evs = r.List()
	} else {
		l.mu.Lock()
		for k := len(l.early) - 1; k >= 0; k-- {
			evs = append(evs, l.early[k])
		}
		l.mu.Unlock()
	}
	out := make([]event, len(evs))
	for k, e := range evs {
		out[k] = event{Time: e.Time, Level: slog.Level(e.Level).String(), Msg: e.Msg, Attrs: e.Attrs, PID: e.PID, Generation: e.Generation}
	}
	return out
}

// event is one line of the status page's recent events.
type event struct {
	Time       time.Time `json:"time"`
	Level      string    `json:"level"`
	Msg        string    `json:"msg"`
	Attrs      string    `json:"attrs,omitempty"`
	PID        int       `json:"pid"`
	Generation int       `json:"generation"` // of the process that logged it; 0: before it knew
}

// teeHandler passes records on to h and copies those at info level and
// above into the event log, for the status page. Logging is off the hot
// path (errors are logged once per burst), so the copy costs nothing
// there.
type teeHandler struct {
	h    slog.Handler
	evts *eventLog
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
			return sb.Len() < events.MaxAttrs
		})
		t.evts.add(events.Event{Time: r.Time, Level: int(r.Level), Msg: r.Message, Attrs: sb.String()})
	}
	if t.h.Enabled(ctx, r.Level) {
		return t.h.Handle(ctx, r)
	}
	return nil
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{h: t.h.WithAttrs(as), evts: t.evts}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{h: t.h.WithGroup(name), evts: t.evts}
}
