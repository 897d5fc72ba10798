package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrBusy is returned when a fleet restart of the backend is already under
// way, started by this member or another.
var ErrBusy = errors.New("fleet: restart already in progress")

// Defaults of RestartOptions.
const (
	DefaultDrainWait  = 30 * time.Second
	DefaultHealthWait = 60 * time.Second
)

// waitPoll is how often an initiator reads the members' records while it
// waits for them.
const waitPoll = 100 * time.Millisecond

// RestartFunc restarts a backend on this member (baton's local restart:
// the server's signal, or its restart_command) and returns once it is up
// and healthy here, or failed. It gets the backend's name as the operator
// gave it to this member, never a name read from etcd.
type RestartFunc func(ctx context.Context, backend string) error

// RestartOptions bound a fleet restart.
type RestartOptions struct {
	// DrainWait bounds the wait for every member to report the backend
	// quiet (members stop counting at their own drain_timeout); then the
	// restart is abandoned and the backend readmitted. Default
	// DefaultDrainWait plus lease_ttl.
	DrainWait time.Duration
	// HealthWait bounds the wait, after the restart, for every member to
	// probe it healthy; then it is readmitted anyway and the members' own
	// health checks decide. Default DefaultHealthWait.
	HealthWait time.Duration
	// Progress, if set, is called with each step as it happens.
	Progress func(Event)

	keepPoolReady bool // RestartAll: never the last ready backend of its pool
}

// Event is one step of a fleet operation, for `ctl` to print as it goes.
type Event struct {
	At      time.Time `json:"at"`
	Backend string    `json:"backend"`
	// Step is one of lock, wait, drain, drained, restart, restarted,
	// healthy, readmitted, skipped, failed.
	Step    string   `json:"step"`
	Detail  string   `json:"detail,omitempty"`
	Members []string `json:"members,omitempty"`
}

// Result is the outcome of a fleet restart of one backend.
type Result struct {
	Backend   string        `json:"backend"`
	OK        bool          `json:"ok"`
	Restarted bool          `json:"restarted"`         // the restart function ran
	Members   []string      `json:"members,omitempty"` // the live members that had it drained
	Duration  time.Duration `json:"duration_ns"`
	Error     string        `json:"error,omitempty"`
}

func (o *RestartOptions) emit(backend, step, detail string, members []string) {
	if o.Progress != nil {
		o.Progress(Event{At: time.Now(), Backend: backend, Step: step, Detail: detail, Members: members})
	}
}

func (f *Fleet) localView(name string) (BackendView, bool) {
	for _, v := range f.local.Backends() {
		if v.Name == name {
			if v.Pool == "" {
				v.Pool = DefaultPool
			}
			return v, true
		}
	}
	return BackendView{}, false
}

// RestartEverywhere restarts backend with the fleet's confirmation: it
// takes the backend's fleet-wide lock (else ErrBusy), its pool's lock and
// a slot of the fleet's max_parallel_restarts, all under a lease of its
// own; marks the backend draining for every member; waits until every live
// member that has it reports it drained and quiet; runs restart; waits
// until every member has probed it healthy; and readmits it everywhere by
// removing the mark. A member whose lease ends meanwhile is no longer
// waited for. If ctx ends before restart runs, the backend is readmitted
// at once; once restart has run, the operation finishes regardless of ctx
// (bounded by o's waits). If this process dies, its lease ends after
// lease_ttl and with it the mark and the locks: no backend stays drained.
func (f *Fleet) RestartEverywhere(ctx context.Context, backend string, restart RestartFunc, o RestartOptions) (Result, error) {
	start := time.Now()
	res := Result{Backend: backend}
	err := f.restartEverywhere(ctx, backend, restart, &o, &res)
	res.Duration = time.Since(start)
	if err != nil {
		res.Error = err.Error()
		step := "failed"
		if errors.Is(err, errSkipped) {
			step = "skipped"
		}
		o.emit(backend, step, err.Error(), nil)
		return res, err
	}
	res.OK = true
	return res, nil
}

var errSkipped = errors.New("skipped")

func (f *Fleet) restartEverywhere(ctx context.Context, backend string, restart RestartFunc, o *RestartOptions, res *Result) (err error) {
	v, ok := f.localView(backend)
	if !ok {
		return fmt.Errorf("fleet: restart %s: no such backend on this member", backend)
	}
	if err := f.usable(); err != nil {
		return err
	}
	if o.DrainWait <= 0 {
		o.DrainWait = DefaultDrainWait + f.cfg.LeaseTTL
	}
	if o.HealthWait <= 0 {
		o.HealthWait = DefaultHealthWait
	}
	f.ops.Add(1)
	defer f.ops.Done()

	cctx, cancel := f.call(ctx)
	lease, err := f.c.Grant(cctx, f.cfg.LeaseTTL)
	cancel()
	if err != nil {
		return err
	}
	// Revoking the operation's lease removes the mark and releases the
	// locks in one step, whatever happened before.
	readmitted := false
	defer func() {
		rctx, cancel := f.call(context.Background())
		defer cancel()
		rerr := lease.Revoke(rctx)
		switch {
		case rerr == nil:
		case readmitted:
			// The mark is gone already; the locks go with the lease.
			f.log.Warn("fleet: restart locks not released; they go when the lease ends", "backend", backend, "ttl", f.cfg.LeaseTTL, "err", rerr)
		case err == nil:
			err = fmt.Errorf("fleet: restart %s: readmit: %w (the mark goes when the lease ends, within %s)", backend, rerr, f.cfg.LeaseTTL)
		}
	}()
	cctx, cancel = f.call(ctx)
	_, err = f.c.Lock(cctx, lease, "backend/"+backend, true)
	cancel()
	if errors.Is(err, ErrLocked) {
		return f.busy(ctx, backend)
	}
	if err != nil {
		return err
	}
	o.emit(backend, "lock", "backend "+backend+", pool "+v.Pool, nil)
	if err := f.waitHeld(ctx, o, backend, "pool "+v.Pool, lease, func(ctx context.Context) error {
		_, err := f.c.Lock(ctx, lease, "pool/"+v.Pool, false)
		return err
	}); err != nil {
		return err
	}
	if err := f.waitHeld(ctx, o, backend, "a restart slot", lease, func(ctx context.Context) error {
		_, err := f.c.Acquire(ctx, lease, semRestarts, f.cfg.MaxParallelRestarts)
		return err
	}); err != nil {
		return err
	}
	if o.keepPoolReady {
		if err := f.waitPoolReady(ctx, o, lease, backend, v.Pool); err != nil {
			return err
		}
	}

	op := fmt.Sprintf("%s-%x", f.cfg.Name, lease.ID())
	mark := Mark{Backend: backend, Kind: KindRestart, By: f.cfg.Name, At: time.Now().UTC(), Op: op, Phase: PhaseDrain}
	if err := f.putMark(ctx, mark, lease.ID()); err != nil {
		return err
	}
	o.emit(backend, "drain", "draining on every member", nil)
	dctx, cancel := context.WithTimeout(ctx, o.DrainWait)
	members, err := f.waitMembers(dctx, o, lease, backend, "drained", func(v BackendView) bool { return v.FleetDrained && v.Quiet })
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("fleet: restart %s: stopped before the restart (%w); readmitted everywhere", backend, ctx.Err())
		}
		return fmt.Errorf("fleet: restart %s: not drained everywhere within %s: %w; not restarted, readmitted everywhere", backend, o.DrainWait, err)
	}
	res.Members = members
	o.emit(backend, "drained", "quiet on every member", members)

	// From here on the operation finishes whatever ctx does.
	ctx = context.WithoutCancel(ctx)
	mark.Phase = PhaseRestart
	if err := f.putMark(ctx, mark, lease.ID()); err != nil {
		return err
	}
	o.emit(backend, "restart", "", nil)
	res.Restarted = true
	if err := restart(ctx, backend); err != nil {
		return fmt.Errorf("fleet: restart %s: %w; readmitted everywhere (the members' health checks decide)", backend, err)
	}
	mark.Phase = PhaseRestarted
	if err := f.putMark(ctx, mark, lease.ID()); err != nil {
		return err
	}
	o.emit(backend, "restarted", "waiting for every member's health check", nil)
	hctx, cancel := context.WithTimeout(ctx, o.HealthWait)
	members, err = f.waitMembers(hctx, o, lease, backend, "healthy", func(v BackendView) bool { return v.Confirmed == op })
	cancel()
	if err != nil {
		return fmt.Errorf("fleet: restart %s: not healthy everywhere within %s: %w; readmitted everywhere (the members' health checks decide)", backend, o.HealthWait, err)
	}
	o.emit(backend, "healthy", "on every member", members)
	cctx, cancel = f.call(ctx)
	err = f.c.Delete(cctx, dirRestart+backend)
	cancel()
	if err != nil {
		return err
	}
	readmitted = true
	o.emit(backend, "readmitted", "", members)
	return nil
}

// busy names the initiator of the restart under way.
func (f *Fleet) busy(ctx context.Context, backend string) error {
	cctx, cancel := f.call(ctx)
	defer cancel()
	kv, ok, _ := f.c.Get(cctx, dirRestart+backend)
	var m Mark
	if ok && json.Unmarshal(kv.Value, &m) == nil && m.By != "" {
		return fmt.Errorf("%w: %s, started by member %s at %s (phase %s)", ErrBusy, backend, m.By, m.At.Format(time.RFC3339), m.Phase)
	}
	return fmt.Errorf("%w: %s", ErrBusy, backend)
}

// waitHeld takes a lock or slot that may take a while, saying so.
func (f *Fleet) waitHeld(ctx context.Context, o *RestartOptions, backend, what string, lease Lease, take func(context.Context) error) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- take(wctx) }()
	said := false
	t := time.NewTimer(waitPoll)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("fleet: restart %s: waiting for %s: %w", backend, what, err)
			}
			return nil
		case <-lease.Done():
			cancel()
			<-done
			return fmt.Errorf("fleet: restart %s: waiting for %s: %w", backend, what, ErrLeaseGone)
		case <-t.C:
			if !said {
				o.emit(backend, "wait", "waiting for "+what+" (another fleet restart holds it)", nil)
				said = true
			}
		}
	}
}

func (f *Fleet) putMark(ctx context.Context, m Mark, lease LeaseID) error {
	b, _ := json.Marshal(m)
	dir := dirDrain
	if m.Kind == KindRestart {
		dir = dirRestart
	}
	cctx, cancel := f.call(ctx)
	defer cancel()
	return f.c.Put(cctx, dir+m.Backend, b, lease)
}

// listMembers reads every member record now.
func (f *Fleet) listMembers(ctx context.Context) ([]Member, error) {
	cctx, cancel := f.call(ctx)
	kvs, _, err := f.c.List(cctx, dirMembers)
	cancel()
	if err != nil {
		return nil, err
	}
	var ms []Member
	for _, kv := range kvs {
		var m Member
		if len(kv.Value) > maxRecordBytes || json.Unmarshal(kv.Value, &m) != nil || dirMembers+m.Name != kv.Key {
			continue
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// waitMembers waits until every live member that has backend reports ok
// for it, and returns those members. A failed read is retried until ctx
// ends; the error then names the members still waited for.
func (f *Fleet) waitMembers(ctx context.Context, o *RestartOptions, lease Lease, backend, what string, ok func(BackendView) bool) ([]string, error) {
	var lastWaiting []string
	var lastErr error
	for {
		ms, err := f.listMembers(ctx)
		if err == nil {
			var have, waiting []string
			for _, m := range ms {
				for _, v := range m.Backends {
					if v.Name != backend {
						continue
					}
					have = append(have, m.Name)
					if !ok(v) {
						waiting = append(waiting, fmt.Sprintf("%s (%s, %d in flight)", m.Name, v.State, v.InFlight))
					}
				}
			}
			_, mine := f.localView(backend)
			if mine && !slices.Contains(have, f.cfg.Name) {
				// why: our own record is missing (its lease lapsed, or
				// not yet republished): with no records at all the wait
				// would pass for want of anyone to wait for.
				waiting = append(waiting, f.cfg.Name+" (this member's record is missing)")
			}
			if len(waiting) == 0 {
				return have, nil
			}
			if !slices.Equal(waiting, lastWaiting) {
				o.emit(backend, "wait", "not yet "+what+" on "+strings.Join(waiting, ", "), nil)
				lastWaiting = waiting
			}
			lastErr = fmt.Errorf("not %s on %s", what, strings.Join(waiting, ", "))
		} else {
			lastErr = err
		}
		t := time.NewTimer(waitPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, lastErr
		case <-lease.Done():
			t.Stop()
			return nil, fmt.Errorf("the operation's lease is no longer renewed (%s unreachable?): %w", f.c, ErrLeaseGone)
		case <-t.C:
		}
	}
}

// waitPoolReady waits until another backend of pool is ready on every
// member that has it (if the pool has another), so that a rolling restart
// never takes out the last ready backend of a pool.
func (f *Fleet) waitPoolReady(ctx context.Context, o *RestartOptions, lease Lease, backend, pool string) error {
	others := f.poolOthers(backend, pool)
	if len(others) == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, o.DrainWait)
	defer cancel()
	said := false
	for {
		ms, err := f.listMembers(wctx)
		if err == nil {
			for name := range others {
				ready, seen := true, false
				for _, m := range ms {
					for _, v := range m.Backends {
						if v.Name == name {
							seen = true
							ready = ready && v.Ready && !v.FleetDrained
						}
					}
				}
				if seen && ready && f.poolOthers(backend, pool)[name] {
					return nil
				}
			}
			if !said {
				o.emit(backend, "wait", fmt.Sprintf("the last ready backend of pool %s: waiting for another (%s)", pool, strings.Join(slices.Sorted(maps.Keys(others)), ", ")), nil)
				said = true
			}
		}
		t := time.NewTimer(waitPoll)
		select {
		case <-wctx.Done():
			t.Stop()
			return fmt.Errorf("fleet: restart %s: %w: it is the last ready backend of pool %s (%s not ready everywhere)", backend, errSkipped, pool, strings.Join(slices.Sorted(maps.Keys(others)), ", "))
		case <-lease.Done():
			t.Stop()
			return fmt.Errorf("fleet: restart %s: %w", backend, ErrLeaseGone)
		case <-t.C:
		}
	}
}

// poolOthers is the other backends of pool here, each with whether it is
// ready here now (fresher than this member's published record).
func (f *Fleet) poolOthers(backend, pool string) map[string]bool {
	others := map[string]bool{}
	for _, v := range f.local.Backends() {
		if v.Pool == "" {
			v.Pool = DefaultPool
		}
		if v.Pool == pool && v.Name != backend {
			others[v.Name] = v.Ready
		}
	}
	return others
}

// RestartAll restarts every backend of this member with RestartEverywhere,
// pools side by side and each pool's backends one after the other, at most
// max_parallel_restarts at once (fleet-wide: the slots are in etcd), never
// the last ready backend of a pool that has another. After ctx ends no
// further backend is started; one under way finishes as RestartEverywhere
// says. It returns every backend's result and the errors joined.
func (f *Fleet) RestartAll(ctx context.Context, restart RestartFunc, o RestartOptions) ([]Result, error) {
	if err := f.usable(); err != nil {
		return nil, err
	}
	o.keepPoolReady = true
	views := f.local.Backends()
	var pools []string
	byPool := map[string][]int{}
	for i, v := range views {
		p := v.Pool
		if p == "" {
			p = DefaultPool
		}
		if _, ok := byPool[p]; !ok {
			pools = append(pools, p)
		}
		byPool[p] = append(byPool[p], i)
	}
	results := make([]Result, len(views))
	errs := make([]error, len(views))
	slots := make(chan struct{}, f.cfg.MaxParallelRestarts)
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Go(func() {
			for _, i := range byPool[p] {
				name := views[i].Name
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
				}
				if ctx.Err() != nil {
					results[i] = Result{Backend: name, Error: "not started: " + ctx.Err().Error()}
					errs[i] = fmt.Errorf("fleet: restart %s: not started: %w", name, ctx.Err())
					o.emit(name, "skipped", results[i].Error, nil)
					continue
				}
				results[i], errs[i] = f.RestartEverywhere(ctx, name, restart, o)
				<-slots
			}
		})
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// DrainResult is the outcome of a fleet-wide drain.
type DrainResult struct {
	Backend string   `json:"backend"`
	Members []string `json:"members,omitempty"` // the members that report it quiet
	Error   string   `json:"error,omitempty"`   // why the wait ended early
}

// Drain marks backend drained for the whole fleet until Undrain: the mark
// has no lease, so it survives every member's restart and upgrade, and a
// member that joins later applies it before it takes traffic. It then
// waits, up to wait (0: not at all), until every member that has the
// backend reports it quiet.
func (f *Fleet) Drain(ctx context.Context, backend, reason string, wait time.Duration) (DrainResult, error) {
	res := DrainResult{Backend: backend}
	if err := f.known(backend); err != nil {
		return res, err
	}
	if err := f.usable(); err != nil {
		return res, err
	}
	m := Mark{Backend: backend, Kind: KindDrain, By: f.cfg.Name, At: time.Now().UTC(), Reason: reason}
	if err := f.putMark(ctx, m, 0); err != nil {
		return res, err
	}
	if wait <= 0 {
		return res, nil
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var o RestartOptions
	members, err := f.waitMembers(wctx, &o, neverLost{}, backend, "quiet", func(v BackendView) bool { return v.FleetDrained && v.Quiet })
	res.Members = members
	if err != nil {
		res.Error = err.Error() // drained all the same; the wait ended
	}
	return res, nil
}

// Undrain removes the fleet-wide drain mark of backend; every member
// readmits it (unless a fleet restart's mark or its own state keeps it out).
func (f *Fleet) Undrain(ctx context.Context, backend string) error {
	if err := f.known(backend); err != nil {
		return err
	}
	if err := f.usable(); err != nil {
		return err
	}
	cctx, cancel := f.call(ctx)
	defer cancel()
	return f.c.Delete(cctx, dirDrain+backend)
}

// known accepts a backend this member or any member has.
func (f *Fleet) known(backend string) error {
	if !validName(backend) {
		return fmt.Errorf("fleet: %q is no backend name", backend)
	}
	if _, ok := f.localView(backend); ok {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.marks[dirDrain+backend]; ok {
		return nil // undrain what no member has any more
	}
	for _, m := range f.members {
		for _, v := range m.Backends {
			if v.Name == backend {
				return nil
			}
		}
	}
	return fmt.Errorf("fleet: no member has a backend %q", backend)
}

// neverLost is a Lease whose Done never closes, for waits under no lease.
type neverLost struct{}

func (neverLost) ID() LeaseID                      { return 0 }
func (neverLost) Done() <-chan struct{}            { return nil }
func (neverLost) Close()                           {}
func (neverLost) Revoke(ctx context.Context) error { return nil }
