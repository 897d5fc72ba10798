package backends

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batonproxy/baton/proxy"
)

var _ proxy.Pool = (*Set)(nil)

// Options configure a Set. The zero value is usable.
type Options struct {
	// Logger receives state changes and restart steps; nil discards them.
	Logger *slog.Logger
	// RunDir holds the output of commands baton runs for backends
	// (start-<name>.log); default os.TempDir().
	RunDir string
	// OnRestart, if set, is called with the result of every restart this
	// process ran (adopted ones included), once it has finished.
	OnRestart func(RestartResult)
	// BeforeStop, if set, is called with a backend's name after its drain
	// and before a stop-start restart stops it: the moment to end what
	// the drain does not wait for (WebSockets), cleanly, before the server
	// goes.
	BeforeStop func(backend string)
	// Balance is how requests are spread (default DefaultBalance).
	Balance Balance
	// now is the clock of slow start; a test seam (default time.Now).
	now func() time.Time
}

// Set is the configured backends: it picks one per request (by its
// balancing policy, within each backend's max_conns, queueing the rest in
// arrival order), runs their health checks and restarts them. It is safe
// for concurrent use.
type Set struct {
	backends []*Backend
	byName   map[string]*Backend
	table    *StateTable
	log      *slog.Logger
	runDir   string
	before   func(string) // Options.BeforeStop
	pid      int
	gen      genID            // this process, for its in-flight entries; 0 if /proc could not tell
	alive    func(genID) bool // genAlive; a test seam
	gensFull sync.Once        // logs the fall back to global-only counting

	onRestart func(RestartResult)

	balance Balance
	primary group // backends without backup = true
	backup  group
	now     func() time.Time

	rr      atomic.Uint64
	waiters atomic.Int64 // in Wait

	qmu     sync.Mutex
	queue   list.List    // of *waiter, in arrival order; under qmu
	queued  atomic.Int64 // queue.Len()
	grants  atomic.Int64 // woken waiters whose Pick has not run yet
	grantAt atomic.Int64 // unix nanos of the last grant

	watchC chan struct{} // wakes the watcher when the first request is held

	jobs      sync.WaitGroup // restarts owned by this process
	jobCtx    context.Context
	jobCancel context.CancelFunc

	epochStop chan struct{} // stops watchEpochs
	epochDone chan struct{}
}

// New builds the Set for cfgs over table, which carries the state left by
// the previous generation (if any). Configs must be normalized and valid.
func New(cfgs []Config, table *StateTable, opts Options) (*Set, error) {
	s := &Set{
		byName:    map[string]*Backend{},
		table:     table,
		log:       opts.Logger,
		runDir:    opts.RunDir,
		pid:       os.Getpid(),
		alive:     genAlive,
		onRestart: opts.OnRestart,
		before:    opts.BeforeStop,
		watchC:    make(chan struct{}, 1),
		balance:   opts.Balance,
		now:       opts.now,
	}
	if s.balance == "" {
		s.balance = DefaultBalance
	}
	if _, err := ParseBalance(string(s.balance)); err != nil {
		return nil, fmt.Errorf("backends: balance %w", err)
	}
	if s.now == nil {
		s.now = time.Now
		if !anySlowStart(cfgs) {
			// why: Pick reads the clock only for slow start; skip the call.
			s.now = func() time.Time { return time.Time{} }
		}
	}
	if s.runDir == "" {
		s.runDir = os.TempDir()
	}
	s.jobCtx, s.jobCancel = context.WithCancel(context.Background())
	s.epochStop, s.epochDone = make(chan struct{}), make(chan struct{})
	if g, err := genOf(s.pid); err == nil {
		s.gen = g
	} else {
		s.warnf("in-flight counts of this process are global only", "err", err)
	}
	for i, c := range cfgs {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("backends: backend[%d]: %w", i, err)
		}
		if _, dup := s.byName[c.Name]; dup {
			return nil, fmt.Errorf("backends: duplicate backend name %q", c.Name)
		}
		slot, err := table.slot(c.Name)
		if err != nil {
			return nil, err
		}
		b := newBackend(c, slot, s)
		if s.gen != 0 {
			b.gen = slot.claimGen(s.gen, s.alive)
			if b.gen == nil {
				s.gensFull.Do(func() {
					s.warnf("more than 9 baton generations alive: this one counts its in-flight requests globally only; a kill -9 of it leaves them counted", "backend", c.Name)
				})
			}
		}
		s.backends = append(s.backends, b)
		s.byName[c.Name] = b
	}
	var prim, back []*Backend
	for _, b := range s.backends {
		if b.cfg.Backup {
			back = append(back, b)
		} else {
			prim = append(prim, b)
		}
	}
	if len(prim) == 0 && len(back) > 0 {
		return nil, fmt.Errorf("backends: every backend is a backup: at least one must not be")
	}
	s.primary, s.backup = newGroup(prim), newGroup(back)
	go s.watchEpochs()
	return s, nil
}

// epochInterval is how often every generation, draining ones included,
// looks for backends that began a restart (Backend.dropIdleEverywhere).
const epochInterval = 10 * time.Millisecond

// watchEpochs closes idle pooled connections to a backend whose restart
// epoch moved, in every process, until Close.
func (s *Set) watchEpochs() {
	defer close(s.epochDone)
	t := time.NewTicker(epochInterval)
	defer t.Stop()
	for {
		select {
		case <-s.epochStop:
			return
		case <-t.C:
		}
		for _, b := range s.backends {
			b.syncEpoch()
		}
		// Every generation, a draining one too (it runs no watcher),
		// looks for room freed by the others while it has requests queued.
		s.dispatch()
	}
}

// Backends lists the configured backends in config order.
func (s *Set) Backends() []*Backend { return s.backends }

// Lookup finds a backend by name.
func (s *Set) Lookup(name string) (*Backend, error) {
	if b, ok := s.byName[name]; ok {
		return b, nil
	}
	names := make([]string, 0, len(s.backends))
	for _, b := range s.backends {
		names = append(names, b.cfg.Name)
	}
	return nil, fmt.Errorf("backends: unknown backend %q (configured: %s)", name, strings.Join(names, ", "))
}

// Unavailable describes every backend's state, for the error a held request
// gets when nothing came back in time.
func (s *Set) Unavailable() string {
	parts := make([]string, 0, len(s.backends))
	for _, b := range s.backends {
		w := b.slot.load()
		p := b.cfg.Name + " " + w.label()
		if e := b.lastErr.Load(); e != nil && w.down() {
			p += " (" + *e + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

func anySlowStart(cfgs []Config) bool {
	for _, c := range cfgs {
		if c.SlowStart > 0 {
			return true
		}
	}
	return false
}

// wake wakes as many held requests as there may be room for now.
func (s *Set) wake() { s.dispatch() }

// Run runs the health checks and the watcher until ctx ends, then returns
// once they have stopped. Only the serving generation runs it; a draining
// one stops it and keeps only its restarts.
func (s *Set) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, b := range s.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.healthLoop(ctx, b)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(ctx)
	}()
	wg.Wait()
}

// watch polls the shared table while requests are held, since a restart
// owned by another generation readmits backends there.
func (s *Set) watch(ctx context.Context) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.watchC:
		}
		for _, b := range s.backends {
			if b.slot.load().down() {
				s.kickHealth(b)
			}
		}
		for s.waiters.Load() > 0 {
			s.dispatch()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
}

// Held reports how many requests are waiting for a backend.
func (s *Set) Held() int64 { return s.waiters.Load() }

func (s *Set) logf(msg string, args ...any) {
	if s.log != nil {
		s.log.Info(msg, args...)
	}
}

func (s *Set) warnf(msg string, args ...any) {
	if s.log != nil {
		s.log.Warn(msg, args...)
	}
}

// Close stops restarts still running in this process at their next step
// and waits for them, then closes idle connections.
func (s *Set) Close() {
	s.jobCancel()
	s.jobs.Wait()
	close(s.epochStop)
	<-s.epochDone
	for _, b := range s.backends {
		b.pooled.CloseIdleConnections()
		b.fresh.CloseIdleConnections()
	}
}

// WaitRestarts waits until the restarts this process owns have finished
// (each is bounded by its restart_timeout) or ctx ends.
func (s *Set) WaitRestarts(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.jobs.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status is one backend's state for `baton ctl status`.
type Status struct {
	Name         string         `json:"name"`
	URL          string         `json:"url"`
	Kind         Kind           `json:"kind"`
	Restart      Method         `json:"restart,omitempty"`
	State        string         `json:"state"` // up, down, drained, draining, restarting, starting
	Health       string         `json:"health"`
	Drained      bool           `json:"drained"`
	InFlight     int64          `json:"in_flight"`      // all baton generations
	InFlightHere int64          `json:"in_flight_here"` // this process
	RestartOwner int            `json:"restart_owner,omitempty"`
	PhaseSince   *time.Time     `json:"phase_since,omitempty"`
	LastError    string         `json:"last_error,omitempty"`
	LastRestart  *RestartResult `json:"last_restart,omitempty"`
	// Queued is how many requests wait in baton's queue while this
	// backend is at its limit (the queue is shared by the backends that
	// take the same requests).
	Queued    int64        `json:"queued"`
	MaxConns  int          `json:"max_conns"`       // 0: no limit
	Limit     int64        `json:"limit,omitempty"` // max_conns now, lower during a slow start
	Weight    int          `json:"weight"`
	Backup    bool         `json:"backup,omitempty"`
	LastCheck *CheckResult `json:"last_check,omitempty"` // the serving generation's last health check
	// Served counts the requests this process sent to the backend.
	Served uint64 `json:"served"`
	// CooldownUntil is when a backend taken out by passive detection
	// (in this process) may be readmitted by a health check.
	CooldownUntil *time.Time `json:"cooldown_until,omitempty"`
}

// Status reports every backend, in config order.
func (s *Set) Status() []Status {
	out := make([]Status, 0, len(s.backends))
	now := s.now()
	q := s.queued.Load()
	for _, b := range s.backends {
		w := b.slot.load()
		st := Status{
			Name: b.cfg.Name, URL: b.cfg.URL, Kind: b.cfg.Kind, Restart: b.cfg.Restart,
			State: w.label(), Health: "up", Drained: w.drained(),
			InFlight: b.globalInflight(), InFlightHere: b.inflight.Load(),
		}
		if w.down() {
			st.Health = "down"
		}
		st.MaxConns, st.Weight, st.Backup = b.cfg.MaxConns, b.cfg.Weight, b.cfg.Backup
		st.Limit = b.limit(now)
		if q > 0 && st.Limit > 0 && w.routable() && st.InFlight >= st.Limit {
			st.Queued = q
		}
		st.LastCheck = b.lastCheck.Load()
		st.Served = b.served.Load()
		if c := b.coolUntil.Load(); c > time.Now().UnixNano() && w.down() {
			t := time.Unix(0, c)
			st.CooldownUntil = &t
		}
		if w.phase() != PhaseNone {
			st.RestartOwner = int(atomic.LoadInt64(&b.slot.owner))
			t := time.Unix(0, atomic.LoadInt64(&b.slot.since))
			st.PhaseSince = &t
		}
		if e := b.lastErr.Load(); e != nil {
			st.LastError = *e
		}
		if r, ok := b.slot.result(); ok {
			st.LastRestart = &RestartResult{Backend: b.cfg.Name, OK: r.ok, At: r.at, Duration: r.dur, Error: r.reason}
		}
		out = append(out, st)
	}
	return out
}

// generationPIDs lists the live baton generations known to the state
// table, never to be signalled as a backend.
func (s *Set) generationPIDs() map[int]bool {
	out := map[int]bool{s.pid: true}
	for _, b := range s.backends {
		for _, p := range b.slot.liveGens(s.alive) {
			out[p] = true
		}
	}
	return out
}

// Restartable lists the names of the backends that have a restart method,
// in config order.
func (s *Set) Restartable() []string {
	var out []string
	for _, b := range s.backends {
		if b.cfg.Restartable() {
			out = append(out, b.cfg.Name)
		}
	}
	return out
}
