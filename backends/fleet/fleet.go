package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Key layout under the prefix (see doc.go).
const (
	dirMembers  = "members/"
	dirDrain    = "drain/"
	dirRestart  = "restart/"
	keyTickets  = "tickets"
	electTicket = "tickets"
	semRestarts = "restarts"
)

// Timing of the member's loop.
const (
	viewInterval   = 100 * time.Millisecond // local view read, published on change
	inFlightEvery  = 5 * time.Second        // in-flight counts alone republished at most this often
	probeInterval  = 200 * time.Millisecond // health probes after a fleet restart
	maxRecordBytes = 256 << 10              // larger values from etcd are refused
)

// Local is baton's side of a member: its backends and what the fleet may
// do to them. Drain and Undrain are level-triggered and idempotent: baton
// should keep the fleet's drain apart from an operator's local drain (its
// own bit in the state table), so that readmitting after a fleet restart
// never undoes a local `ctl drain`. Methods are called from the fleet's
// goroutines and must not block on the fleet.
type Local interface {
	// Backends is this member's view of its backends now; the fleet fills
	// FleetDrained, Quiet and Confirmed itself.
	Backends() []BackendView
	// Drain takes the named backend out of rotation for the fleet.
	Drain(name string)
	// Undrain ends the fleet's drain of the named backend.
	Undrain(name string)
	// Probe runs one health check of the named backend now, as its health
	// check is configured; nil means healthy.
	Probe(ctx context.Context, name string) error
}

// BackendView is one member's view of one backend, as published in its
// member record.
type BackendView struct {
	Name     string `json:"name"`
	Pool     string `json:"pool"`            // default DefaultPool
	State    string `json:"state"`           // baton's label: up, down, drained, restarting, ...
	Ready    bool   `json:"ready"`           // it would take a request now
	Healthy  bool   `json:"healthy"`         // its health checks pass
	InFlight int64  `json:"in_flight"`       // requests in flight to it from this member
	Local    bool   `json:"local,omitempty"` // this member can restart it
	// DrainTimeout bounds how long this member waits for its in-flight
	// requests once drained (baton's drain_timeout); not published.
	DrainTimeout time.Duration `json:"-"`

	// Set by the fleet:
	FleetDrained bool   `json:"fleet_drained,omitempty"` // a fleet mark drains it here
	Quiet        bool   `json:"quiet,omitempty"`         // fleet-drained and no request in flight (or its drain timeout passed)
	Confirmed    string `json:"confirmed,omitempty"`     // the fleet restart whose result this member probed healthy
}

// Member is a member's record in etcd: who it is and its view of every
// backend it has.
type Member struct {
	Name       string        `json:"name"`
	Generation int           `json:"generation"`
	Host       string        `json:"host"`
	PID        int           `json:"pid"`
	Boot       string        `json:"boot,omitempty"` // kernel boot id, to tell a crashed predecessor on the same host
	Version    string        `json:"version,omitempty"`
	Updated    time.Time     `json:"updated"`
	Backends   []BackendView `json:"backends"`
	Lease      string        `json:"lease,omitempty"` // hex, from etcd, not stored
}

// Mark is a fleet-wide drain of one backend: persistent (Kind "drain", by
// `ctl drain NAME --fleet`, until undrain) or a fleet restart's (Kind
// "restart", under the initiator's lease: it ends with the restart, or
// with the initiator).
type Mark struct {
	Backend string    `json:"backend"`
	Kind    string    `json:"kind"` // "drain" or "restart"
	By      string    `json:"by"`   // the member that set it
	At      time.Time `json:"at"`
	Reason  string    `json:"reason,omitempty"`
	Op      string    `json:"op,omitempty"`    // restart: the operation's id
	Phase   string    `json:"phase,omitempty"` // restart: drain, restart, restarted
}

// Mark kinds and restart phases.
const (
	KindDrain   = "drain"
	KindRestart = "restart"

	PhaseDrain     = "drain"
	PhaseRestart   = "restart"
	PhaseRestarted = "restarted"
)

// Handover is what a member's next generation needs to resume its
// membership: baton passes it through handoff's files, as it passes the
// state table, so an upgrade is no leave and join.
type Handover struct {
	Name       string  `json:"name"`
	Lease      LeaseID `json:"lease"`
	Generation int     `json:"generation"`
}

// Options configure a Fleet. Local is required.
type Options struct {
	Local Local
	// Generation is baton's generation (handoff.Generation); it is in the
	// member record, and a higher one of the same member supersedes a
	// lower one.
	Generation int
	// Handover is what the previous generation's Handover returned, or
	// nil for a fresh start.
	Handover []byte
	// Version is baton's version, shown in the member record.
	Version string
	// Logger receives what the background loop cannot return: degraded
	// and reconnected, marks applied, ticket key rotations. nil discards.
	Logger *slog.Logger
	// Tickets receives the fleet's TLS ticket keys; nil (or no
	// secret_file) shares none.
	Tickets TicketSink
	// TicketRotation and TicketKeep are as in handoff.TicketOptions
	// (defaults 1h and 4).
	TicketRotation time.Duration
	TicketKeep     int
}

// Fleet is one member of a fleet of batons: the member's side (Sync and
// Run keep its record and apply the fleet's marks) and the initiator's
// (RestartEverywhere, RestartAll, Drain, Undrain, Status). It is safe for
// concurrent use.
type Fleet struct {
	cfg   Config
	c     Coordinator
	local Local
	log   *slog.Logger
	opts  Options
	self  Member // Name, Generation, Host, PID, Boot, Version
	exe   string // our executable, to recognise a live predecessor
	seal  *sealer
	hand  *Handover

	syncMu sync.Mutex // one sync at a time

	mu         sync.Mutex
	lease      Lease
	leaseID    LeaseID // last lease, kept after it is lost, to resume it
	members    map[string]Member
	marks      map[string]Mark // by key: drain/x, restart/x
	degraded   error
	superseded bool
	synced     bool
	applied    map[string]time.Time // fleet-drained here since
	confirmed  map[string]string    // backend -> op probed healthy
	probing    map[string]probe
	lastSig    []byte
	lastFull   []byte
	lastAt     time.Time
	tickets    ticketState
	rev        int64

	probeC chan probeResult
	probes sync.WaitGroup
	ops    sync.WaitGroup
}

type probe struct {
	op     string
	cancel context.CancelFunc
}

type probeResult struct{ backend, op string }

// New makes the member for c, which it owns (Close closes it). cfg must be
// normalized and valid. It does no I/O beyond reading the secret file.
func New(c Coordinator, cfg Config, opts Options) (*Fleet, error) {
	if opts.Local == nil {
		return nil, errors.New("fleet: no Local")
	}
	f := &Fleet{
		cfg:       cfg,
		c:         c,
		local:     opts.Local,
		log:       opts.Logger,
		opts:      opts,
		members:   map[string]Member{},
		marks:     map[string]Mark{},
		applied:   map[string]time.Time{},
		confirmed: map[string]string{},
		probing:   map[string]probe{},
		probeC:    make(chan probeResult, 16),
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	host, _ := os.Hostname()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	f.exe, _ = os.Executable()
	f.self = Member{Name: cfg.Name, Generation: opts.Generation, Host: host, PID: os.Getpid(), Boot: strings.TrimSpace(string(boot)), Version: opts.Version}
	if len(opts.Handover) > 0 {
		var h Handover
		if err := json.Unmarshal(opts.Handover, &h); err != nil {
			return nil, fmt.Errorf("fleet: handover from the previous generation: %w", err)
		}
		if h.Name == cfg.Name {
			f.hand = &h
			f.leaseID = h.Lease
		}
	}
	if cfg.SecretFile != "" && opts.Tickets != nil {
		secret, err := readSecret(cfg.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("fleet: secret_file: %w", err)
		}
		f.seal, err = newSealer(secret, cfg.Prefix)
		clear(secret)
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}

// call bounds one call to the coordinator by call_timeout.
func (f *Fleet) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, f.cfg.CallTimeout)
}

// Handover is what the next generation passes to New as
// Options.Handover. Calling it changes nothing: until the next generation
// has published its record this one goes on renewing the lease (both do,
// harmlessly), and it stops applying marks once it sees its successor's
// record.
func (f *Fleet) Handover() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := json.Marshal(Handover{Name: f.cfg.Name, Lease: f.leaseID, Generation: f.self.Generation})
	return b
}

// Sync joins the fleet (or resumes the previous generation's membership),
// reads the fleet's marks, applies them to the local backends (Drain for
// every marked one, Undrain for every other), and publishes this member's
// record. Call it before baton says Ready, so a member that joins takes no
// traffic to a backend the fleet has drained. It returns the marks that
// apply here. With etcd unreachable it returns the error; Run keeps trying.
func (f *Fleet) Sync(ctx context.Context) ([]Mark, error) {
	if err := f.sync(ctx); err != nil {
		f.setDegraded(err)
		return nil, err
	}
	f.setDegraded(nil)
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Mark
	for _, m := range f.marks {
		if _, ok := f.applied[m.Backend]; ok {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Mark) int { return strings.Compare(a.Backend+a.Kind, b.Backend+b.Kind) })
	return out, nil
}

func (f *Fleet) sync(ctx context.Context) error {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	if err := f.join(ctx); err != nil {
		return err
	}
	cctx, cancel := f.call(ctx)
	kvs, rev, err := f.c.List(cctx, "")
	cancel()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.members, f.marks = map[string]Member{}, map[string]Mark{}
	var tickets []byte
	for _, kv := range kvs {
		if kv.Key == keyTickets {
			tickets = kv.Value
			continue
		}
		f.applyLocked(Change{KV: kv})
	}
	f.rev = rev
	f.lastSig = nil // publish now
	f.mu.Unlock()
	if tickets != nil {
		f.applyTickets(tickets)
	}
	f.reconcile(true)
	return f.publish(ctx)
}

// join makes sure this process renews a member lease: the previous
// generation's (handed over), its own last one (after etcd was away), or
// a new one, after checking that no live baton uses the name.
func (f *Fleet) join(ctx context.Context) error {
	f.mu.Lock()
	l, id := f.lease, f.leaseID
	f.mu.Unlock()
	if l != nil {
		select {
		case <-l.Done():
		default:
			return nil
		}
	}
	ttl := f.cfg.LeaseTTL
	if id != 0 {
		cctx, cancel := f.call(ctx)
		nl, err := f.c.Resume(cctx, id, ttl)
		cancel()
		switch {
		case err == nil:
			f.setLease(nl)
			if f.hand != nil {
				f.log.Info("fleet: membership resumed from the previous generation", "lease", fmt.Sprintf("%x", id))
				f.hand = nil
			}
			return nil
		case !errors.Is(err, ErrLeaseGone):
			return err
		}
		f.log.Warn("fleet: lease ended; joining again", "lease", fmt.Sprintf("%x", id))
	}
	if err := f.checkName(ctx, id); err != nil {
		return err
	}
	cctx, cancel := f.call(ctx)
	nl, err := f.c.Grant(cctx, ttl)
	cancel()
	if err != nil {
		return err
	}
	f.setLease(nl)
	f.log.Info("fleet: joined", "member", f.cfg.Name, "lease", fmt.Sprintf("%x", nl.ID()))
	return nil
}

func (f *Fleet) leaseDone() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lease.Done()
}

func (f *Fleet) setLease(l Lease) {
	f.mu.Lock()
	if f.lease != nil {
		f.lease.Close()
	}
	f.lease, f.leaseID = l, l.ID()
	f.mu.Unlock()
}

// checkName refuses a name whose record belongs to a live lease of
// another baton; a crashed predecessor on this host (same boot, its
// process gone or no baton) is cleared.
func (f *Fleet) checkName(ctx context.Context, ours LeaseID) error {
	cctx, cancel := f.call(ctx)
	kv, ok, err := f.c.Get(cctx, dirMembers+f.cfg.Name)
	cancel()
	if err != nil || !ok || kv.Lease == 0 || kv.Lease == ours {
		return err
	}
	var m Member
	_ = json.Unmarshal(kv.Value, &m)
	if m.Host == f.self.Host && (m.Boot != f.self.Boot || !f.liveBaton(m.PID)) {
		cctx, cancel := f.call(ctx)
		defer cancel()
		f.log.Info("fleet: clearing the membership of a baton that is gone", "member", f.cfg.Name, "pid", m.PID, "lease", fmt.Sprintf("%x", kv.Lease))
		return f.c.Revoke(cctx, kv.Lease)
	}
	return fmt.Errorf("fleet: member name %q is in use by a live baton (host %s, pid %d): give each baton its own [fleet] name", f.cfg.Name, m.Host, m.PID)
}

// liveBaton reports whether pid is alive and runs our executable.
func (f *Fleet) liveBaton(pid int) bool {
	if pid <= 0 || pid == os.Getpid() {
		return false
	}
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	exe, err := os.Readlink(filepath.Join("/proc", fmt.Sprint(pid), "exe"))
	return err != nil || exe == f.exe // cannot tell: take it as live
}

// Run keeps this member in the fleet until ctx ends: it renews the lease,
// watches the marks (applying them), publishes the local view when it
// changes, confirms restarts by probing, rotates the ticket keys while it
// leads their election, and applies the ticket keys. While etcd is
// unreachable it is degraded (Status says why) and retries; on reconnect
// it reads everything again and republishes. It returns nil when ctx ends.
// Run does not end the membership: call Leave (a final stop) or Close
// (hand-over to the next generation).
func (f *Fleet) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		f.mu.Lock()
		synced, sup := f.synced && first, f.superseded && f.lease != nil
		f.mu.Unlock()
		if sup {
			select {
			case <-f.leaseDone():
				return nil // detached: the next generation renews it
			default:
			}
		}
		first = false
		if !synced {
			if err := f.sync(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				f.setDegraded(err)
				t := time.NewTimer(backoff)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
				backoff = min(backoff*2, f.cfg.LeaseTTL/2)
				continue
			}
		}
		backoff = 100 * time.Millisecond
		f.setDegraded(nil)
		err := f.watch(ctx)
		if ctx.Err() != nil {
			break
		}
		f.setDegraded(err)
	}
	return nil
}

// watch follows the fleet's keys from the last sync's revision until the
// watch ends, the lease is lost, or ctx ends.
func (f *Fleet) watch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	var rot sync.WaitGroup
	defer func() {
		cancel()
		f.stopProbes()
		rot.Wait()
	}()
	f.mu.Lock()
	lease, rev := f.lease, f.rev
	f.mu.Unlock()
	ch := f.c.Watch(wctx, "", rev)
	rctx, stopRotator := context.WithCancel(wctx)
	defer stopRotator()
	if f.seal != nil {
		rot.Go(func() { f.rotator(rctx, lease) })
	}
	tick := time.NewTicker(viewInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case c, ok := <-ch:
			if !ok {
				return fmt.Errorf("fleet: watch of %s ended", f.c)
			}
			if c.Key == keyTickets {
				if !c.Deleted {
					f.applyTickets(c.Value)
				}
				continue
			}
			f.mu.Lock()
			f.applyLocked(c)
			sup := f.superseded
			f.mu.Unlock()
			if sup {
				stopRotator()
			}
			f.reconcile(false)
		case <-lease.Done():
			return fmt.Errorf("fleet: lease %x not renewed for %s: %s unreachable", lease.ID(), f.cfg.LeaseTTL, f.c)
		case r := <-f.probeC:
			f.mu.Lock()
			if p, ok := f.probing[r.backend]; ok && p.op == r.op {
				f.confirmed[r.backend] = r.op
				delete(f.probing, r.backend)
				f.lastSig = nil
			}
			f.mu.Unlock()
			if err := f.publish(ctx); err != nil {
				return err
			}
		case <-tick.C:
			f.reconcile(false) // a backend added or quiet by now
			if err := f.publish(ctx); err != nil {
				return err
			}
		}
	}
}

// applyLocked records one change of a member record or a mark.
func (f *Fleet) applyLocked(c Change) {
	switch {
	case strings.HasPrefix(c.Key, dirMembers):
		name := strings.TrimPrefix(c.Key, dirMembers)
		if c.Deleted {
			delete(f.members, name)
			if name == f.cfg.Name && !f.superseded {
				f.lastSig = nil // our record went (revoked?): publish again
			}
			return
		}
		var m Member
		if len(c.Value) > maxRecordBytes || json.Unmarshal(c.Value, &m) != nil || m.Name != name {
			return
		}
		m.Lease = fmt.Sprintf("%x", c.Lease)
		f.members[name] = m
		if name == f.cfg.Name && f.lease != nil && c.Lease == f.lease.ID() {
			if m.Generation > f.self.Generation {
				if !f.superseded {
					f.log.Info("fleet: the next generation has taken over the membership", "generation", m.Generation)
				}
				f.superseded = true
			} else if m.Generation < f.self.Generation {
				f.lastSig = nil // an older generation wrote last: write ours again
			}
		}
	case strings.HasPrefix(c.Key, dirDrain), strings.HasPrefix(c.Key, dirRestart):
		kind, name, _ := strings.Cut(c.Key, "/")
		if c.Deleted {
			delete(f.marks, c.Key)
			return
		}
		var m Mark
		if len(c.Value) > maxRecordBytes || json.Unmarshal(c.Value, &m) != nil || m.Backend != name || !validName(name) || m.Kind != kind {
			f.log.Warn("fleet: ignoring a malformed mark", "key", c.Key)
			return
		}
		f.marks[c.Key] = m
	}
}

// reconcile applies the marks to the local backends: Drain where a mark
// is and the fleet has not drained it, Undrain where none is and it has
// (all = every backend without a mark, as after a fresh sync), and starts
// or stops the probes of restarted backends.
func (f *Fleet) reconcile(all bool) {
	views := f.local.Backends()
	var drain, undrain []string
	f.mu.Lock()
	if f.superseded {
		f.mu.Unlock()
		return
	}
	known := map[string]bool{}
	now := time.Now()
	for _, v := range views {
		known[v.Name] = true
		_, d := f.marks[dirDrain+v.Name]
		rm, r := f.marks[dirRestart+v.Name]
		_, have := f.applied[v.Name]
		switch {
		case (d || r) && !have:
			f.applied[v.Name] = now
			drain = append(drain, v.Name)
		case !(d || r) && (have || all):
			delete(f.applied, v.Name)
			undrain = append(undrain, v.Name)
		}
		p, probing := f.probing[v.Name]
		wantProbe := r && rm.Phase == PhaseRestarted && f.confirmed[v.Name] != rm.Op
		if probing && (!wantProbe || p.op != rm.Op) {
			p.cancel()
			delete(f.probing, v.Name)
			probing = false
		}
		if wantProbe && !probing {
			f.startProbeLocked(v.Name, rm.Op)
		}
		if !r {
			delete(f.confirmed, v.Name)
		}
	}
	for name := range f.applied {
		if !known[name] { // removed from the configuration
			delete(f.applied, name)
		}
	}
	if all {
		f.synced = true
	}
	f.mu.Unlock()
	for _, n := range drain {
		f.log.Info("fleet: backend drained by the fleet", "backend", n)
		f.local.Drain(n)
	}
	for _, n := range undrain {
		if !all {
			f.log.Info("fleet: backend readmitted by the fleet", "backend", n)
		}
		f.local.Undrain(n)
	}
}

func (f *Fleet) startProbeLocked(name, op string) {
	ctx, cancel := context.WithCancel(context.Background())
	f.probing[name] = probe{op: op, cancel: cancel}
	f.probes.Go(func() {
		for {
			if err := f.local.Probe(ctx, name); err == nil {
				select {
				case f.probeC <- probeResult{name, op}:
				case <-ctx.Done():
				}
				return
			}
			t := time.NewTimer(probeInterval)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
}

func (f *Fleet) stopProbes() {
	f.mu.Lock()
	for n, p := range f.probing {
		p.cancel()
		delete(f.probing, n)
	}
	f.mu.Unlock()
	f.probes.Wait()
}

// view is the local view with the fleet's fields filled in.
func (f *Fleet) viewLocked(views []BackendView) []BackendView {
	now := time.Now()
	for i := range views {
		v := &views[i]
		if v.Pool == "" {
			v.Pool = DefaultPool
		}
		if at, ok := f.applied[v.Name]; ok {
			v.FleetDrained = true
			v.Quiet = v.InFlight <= 0 || (v.DrainTimeout > 0 && now.Sub(at) >= v.DrainTimeout)
		}
		v.Confirmed = f.confirmed[v.Name]
	}
	return views
}

// publish writes this member's record if it changed: at once for a change
// of state, within inFlightEvery for in-flight counts alone (they are
// current only while a backend is fleet-drained, when they matter).
func (f *Fleet) publish(ctx context.Context) error {
	views := f.local.Backends()
	f.mu.Lock()
	if f.superseded || f.lease == nil {
		f.mu.Unlock()
		return nil
	}
	m := f.self
	m.Backends = f.viewLocked(views)
	full, _ := json.Marshal(m)
	m.Backends = slices.Clone(m.Backends)
	for i := range m.Backends {
		if !m.Backends[i].FleetDrained {
			m.Backends[i].InFlight = 0
		}
	}
	sig, _ := json.Marshal(m)
	now := time.Now()
	if bytes.Equal(sig, f.lastSig) && (bytes.Equal(full, f.lastFull) || now.Sub(f.lastAt) < inFlightEvery) {
		f.mu.Unlock()
		return nil
	}
	m.Backends = views
	m.Updated = now.UTC()
	val, _ := json.Marshal(m)
	lease := f.lease.ID()
	f.mu.Unlock()
	cctx, cancel := f.call(ctx)
	err := f.c.Put(cctx, dirMembers+f.cfg.Name, val, lease)
	cancel()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.lastSig, f.lastFull, f.lastAt = sig, full, now
	f.mu.Unlock()
	return nil
}

func (f *Fleet) setDegraded(err error) {
	f.mu.Lock()
	was := f.degraded
	f.degraded = err
	f.mu.Unlock()
	switch {
	case err != nil && was == nil:
		f.log.Warn("fleet: degraded: fleet operations refused, local state is last known", "err", err)
	case err == nil && was != nil:
		f.log.Info("fleet: reconnected: marks read again, view republished")
	}
}

// usable refuses a fleet operation while the member is degraded or not
// joined.
func (f *Fleet) usable() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.degraded != nil {
		return fmt.Errorf("fleet: refused while %s is unreachable (local operations still work; drop --fleet): %w", f.c, f.degraded)
	}
	if f.lease == nil {
		return fmt.Errorf("fleet: not joined to %s yet", f.c)
	}
	return nil
}

// Status is the fleet as this member last saw it: `ctl status --fleet`'s
// "fleet" object.
type Status struct {
	Member      string       `json:"member"`
	Generation  int          `json:"generation"`
	Lease       string       `json:"lease,omitempty"`
	Coordinator string       `json:"coordinator"`
	Degraded    bool         `json:"degraded"`
	Error       string       `json:"error,omitempty"`
	Members     []Member     `json:"members"`
	Marks       []Mark       `json:"marks"`
	Tickets     TicketStatus `json:"tickets"`
}

// Status reports the fleet from this member's cache; it never waits for
// etcd (while degraded, what it shows is last known).
func (f *Fleet) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Member: f.cfg.Name, Generation: f.self.Generation, Coordinator: f.c.String(), Members: []Member{}, Marks: []Mark{}, Tickets: f.tickets.status(f.seal != nil)}
	if f.leaseID != 0 {
		st.Lease = fmt.Sprintf("%x", f.leaseID)
	}
	if f.degraded != nil {
		st.Degraded, st.Error = true, f.degraded.Error()
	} else if f.lease == nil {
		st.Degraded, st.Error = true, "not joined yet"
	}
	for _, m := range f.members {
		st.Members = append(st.Members, m)
	}
	slices.SortFunc(st.Members, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	for _, m := range f.marks {
		st.Marks = append(st.Marks, m)
	}
	slices.SortFunc(st.Marks, func(a, b Mark) int { return strings.Compare(a.Kind+"/"+a.Backend, b.Kind+"/"+b.Backend) })
	return st
}

// Detach stops renewing the member lease now, without ending it, and
// stops publishing and applying marks: for the old generation of an
// upgrade once the new one has resumed the membership. Fleet operations
// this process runs go on under their own leases.
func (f *Fleet) Detach() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.superseded = true
	if f.lease != nil {
		f.lease.Close()
	}
}

// Close ends this process's part: it waits for the fleet operations it
// runs to finish (they are bounded by their timeouts), stops renewing the
// lease without ending it (the next generation renews it, or it expires
// after lease_ttl) and closes the coordinator. Call it after Run returned.
func (f *Fleet) Close() error {
	f.ops.Wait()
	f.stopProbes()
	f.mu.Lock()
	if f.lease != nil {
		f.lease.Close()
	}
	f.mu.Unlock()
	return f.c.Close()
}

// Leave ends the membership now (a final stop): the lease is revoked, so
// the member's record and candidacy go at once; then Close.
func (f *Fleet) Leave(ctx context.Context) error {
	f.ops.Wait()
	f.mu.Lock()
	l := f.lease
	f.mu.Unlock()
	var err error
	if l != nil {
		cctx, cancel := f.call(ctx)
		err = l.Revoke(cctx)
		cancel()
	}
	return errors.Join(err, f.Close())
}
