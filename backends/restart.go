package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrBusy is returned when a backend is already being restarted, by this
// baton process or another generation.
var ErrBusy = errors.New("backends: restart already in progress")

// Step is one timed step of a restart.
type Step struct {
	Name     string        `json:"name"` // drain, restart, start, healthy
	Duration time.Duration `json:"duration_ns"`
	Detail   string        `json:"detail,omitempty"`
}

// RestartResult is the outcome of one backend restart.
type RestartResult struct {
	Backend  string        `json:"backend"`
	OK       bool          `json:"ok"`
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration_ns"`
	OldPID   int           `json:"old_pid,omitempty"`
	NewPID   int           `json:"new_pid,omitempty"`
	Steps    []Step        `json:"steps,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// Restart drains the named backend, restarts it by its method, waits until
// it is up and healthy, and readmits it. It returns when the restart has
// finished, or when ctx ends (the restart then goes on without a waiter).
// A backend already restarting, or whose PID file or commands are missing,
// is refused and left untouched.
func (s *Set) Restart(ctx context.Context, name string) (RestartResult, error) {
	b, err := s.Lookup(name)
	if err != nil {
		return RestartResult{}, err
	}
	done, err := s.startRestart(b)
	if err != nil {
		return RestartResult{Backend: name, Error: err.Error()}, err
	}
	select {
	case r := <-done:
		if !r.OK {
			return r, fmt.Errorf("backends: restart %s: %s", name, r.Error)
		}
		return r, nil
	case <-ctx.Done():
		return RestartResult{Backend: name}, fmt.Errorf("backends: restart %s: stopped waiting (%w); the restart goes on", name, ctx.Err())
	}
}

// RestartAll restarts every restartable backend, one at a time in config
// order, so at most one is out of rotation for a restart. It stops at the
// first failure.
func (s *Set) RestartAll(ctx context.Context) ([]RestartResult, error) {
	names := s.Restartable()
	if len(names) == 0 {
		return nil, errors.New("backends: no backend has a restart method (set kind)")
	}
	var results []RestartResult
	for i, name := range names {
		r, err := s.Restart(ctx, name)
		results = append(results, r)
		if err != nil {
			rest := "none"
			if i+1 < len(names) {
				rest = strings.Join(names[i+1:], ", ")
			}
			return results, fmt.Errorf("%w (restart --all stopped at %s; not restarted: %s)", err, name, rest)
		}
	}
	return results, nil
}

// Precheck finds what would make a restart fail before anything is done:
// no restart method, a missing PID file, a dead process, a PID file naming
// a process that is not the server (see verifyProcess), a command that is
// not there.
func (b *Backend) Precheck() error {
	c := b.cfg
	if !c.Restartable() {
		return fmt.Errorf("backend %s has kind %s: no restart method (set kind in the config)", c.Name, c.Kind)
	}
	if len(c.RestartCommand) > 0 {
		if _, err := exec.LookPath(c.RestartCommand[0]); err != nil {
			return fmt.Errorf("restart_command: %w", err)
		}
		return nil
	}
	if _, err := b.signalTarget(); err != nil {
		return err
	}
	if c.Restart == MethodStopStart {
		if _, err := exec.LookPath(c.StartCommand[0]); err != nil {
			return fmt.Errorf("start_command: %w", err)
		}
	}
	return nil
}

// startRestart checks and claims b, then runs its restart in a goroutine
// owned by the Set; the result arrives on the returned channel.
func (s *Set) startRestart(b *Backend) (<-chan RestartResult, error) {
	if err := b.Precheck(); err != nil {
		return nil, fmt.Errorf("backends: restart %s: %w; backend left as it was", b.cfg.Name, err)
	}
	old, _ := b.slot.update(func(w stateWord) stateWord {
		if w.phase() != PhaseNone {
			return w
		}
		return w.withPhase(PhaseDraining)
	})
	if old.phase() != PhaseNone {
		owner := atomic.LoadInt64(&b.slot.owner)
		since := time.Since(time.Unix(0, atomic.LoadInt64(&b.slot.since))).Round(time.Millisecond)
		return nil, fmt.Errorf("%w: %s is %s for %s (baton pid %d)", ErrBusy, b.cfg.Name, old.phase(), since, owner)
	}
	// The claim is ours: record who owns it. Until this store the owner is
	// 0, which adoptOrphan leaves alone.
	atomic.StoreInt64(&b.slot.since, time.Now().UnixNano())
	// The identity before the pid: a reader that sees the pid finds the
	// identity that goes with it (see ownerAlive).
	atomic.StoreUint64(&b.slot.ownerGen, uint64(s.gen))
	atomic.StoreInt64(&b.slot.owner, int64(s.pid))
	done := make(chan RestartResult, 1)
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		done <- s.runRestart(b)
	}()
	return done, nil
}

// restartRun is the state of one restart in progress.
type restartRun struct {
	s        *Set
	b        *Backend
	start    time.Time
	ctx      context.Context
	res      RestartResult
	signaled bool // the server was touched: a failure now leaves it out of rotation
}

func (r *restartRun) step(name string, phase Phase, f func() (string, error)) error {
	if phase != PhaseNone {
		r.b.slot.update(func(w stateWord) stateWord { return w.withPhase(phase) })
		atomic.StoreInt64(&r.b.slot.since, time.Now().UnixNano())
	}
	t := time.Now()
	detail, err := f()
	st := Step{Name: name, Duration: time.Since(t), Detail: detail}
	r.res.Steps = append(r.res.Steps, st)
	args := []any{"backend", r.b.cfg.Name, "step", name, "took", st.Duration.Round(time.Microsecond)}
	if detail != "" {
		args = append(args, "detail", detail)
	}
	if err != nil {
		r.s.warnf("restart step failed", append(args, "err", err)...)
		return fmt.Errorf("%s: %w", name, err)
	}
	r.s.logf("restart step", args...)
	return nil
}

// runRestart is the restart sequence: drain, close idle connections,
// restart, wait until up and healthy, readmit.
func (s *Set) runRestart(b *Backend) RestartResult {
	c := b.cfg
	ctx, cancel := context.WithTimeout(s.jobCtx, c.RestartTimeout)
	defer cancel()
	r := &restartRun{s: s, b: b, start: time.Now(), ctx: ctx}
	r.res = RestartResult{Backend: c.Name, At: r.start}
	s.logf("restart begins", "backend", c.Name, "kind", c.Kind, "method", c.Restart)

	err := r.step("drain", PhaseDraining, r.drain)
	if err == nil {
		err = r.step("restart", PhaseRestarting, r.restartServer)
	}
	if err == nil {
		err = r.step("healthy", PhaseStarting, r.waitUp)
	}
	return s.finish(r, err)
}

func (s *Set) finish(r *restartRun, err error) RestartResult {
	b := r.b
	r.res.Duration = time.Since(r.start)
	r.res.OK = err == nil
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (restart_timeout %s)", err, b.cfg.RestartTimeout)
		}
		r.res.Error = err.Error()
	}
	b.dropIdleEverywhere()
	b.slot.setResult(r.res.OK, r.res.Duration, r.res.Error)
	atomic.StoreInt64(&b.slot.owner, 0)
	atomic.StoreUint64(&b.slot.ownerGen, 0)
	b.slot.update(func(w stateWord) stateWord {
		w = w.withPhase(PhaseNone)
		if r.res.OK {
			return w.with(bitDown, false)
		}
		if r.signaled {
			// The server may be gone: keep it out until a check passes.
			return w.with(bitDown, true)
		}
		return w
	})
	if r.res.OK {
		b.fails.Store(0)
		s.logf("restart done", "backend", b.cfg.Name, "took", r.res.Duration.Round(time.Millisecond), "old_pid", r.res.OldPID, "new_pid", r.res.NewPID)
	} else {
		msg := "restart failed: " + r.res.Error
		b.lastErr.Store(&msg)
		s.warnf("restart failed", "backend", b.cfg.Name, "took", r.res.Duration.Round(time.Millisecond), "err", r.res.Error, "in_rotation", !r.signaled)
		s.kickHealth(b)
	}
	s.wake()
	if s.onRestart != nil {
		s.onRestart(r.res)
	}
	return r.res
}

// drain waits until no generation has a request in flight to the backend,
// bounded by drain_timeout; past that it goes on (the graceful signals let
// in-flight requests finish anyway) and says so.
func (r *restartRun) drain() (string, error) {
	b := r.b
	ctx, cancel := context.WithTimeout(r.ctx, b.cfg.DrainTimeout)
	defer cancel()
	// Now, and once more when the drain is over.
	b.dropIdleEverywhere()
	n0 := b.globalInflight()
	err := poll(ctx, func() bool { return b.globalInflight() <= 0 })
	if err != nil && r.ctx.Err() != nil {
		return "", r.ctx.Err()
	}
	b.dropIdleEverywhere()
	// Give the other generations' watchers time to see it.
	select {
	case <-time.After(3 * epochInterval):
	case <-r.ctx.Done():
		return "", r.ctx.Err()
	}
	if err != nil {
		return fmt.Sprintf("drain_timeout %s passed with %d requests in flight; restarting anyway", b.cfg.DrainTimeout, b.globalInflight()), nil
	}
	return fmt.Sprintf("%d in flight at start", n0), nil
}

// restartServer restarts the server by its method.
func (r *restartRun) restartServer() (string, error) {
	c := r.b.cfg
	switch {
	case len(c.RestartCommand) > 0:
		return r.runRestartCommand()
	case c.Restart == MethodStopStart:
		return r.stopStart()
	default:
		return r.signalGraceful()
	}
}

// signalTarget reads the PID file and checks that it names the server,
// the process baton may signal. It runs in Precheck and again right
// before each signal: the file may change during the drain.
func (b *Backend) signalTarget() (int, error) {
	pid, err := readPID(b.cfg.PIDFile)
	if err != nil {
		return 0, err
	}
	if err := verifyProcess(b.cfg, pid, b.set.generationPIDs()); err != nil {
		return 0, err
	}
	return pid, nil
}

func (r *restartRun) signalGraceful() (string, error) {
	b := r.b
	pid, err := b.signalTarget()
	if err != nil {
		return "", err
	}
	r.res.OldPID = pid
	var before map[int]bool
	if b.facts.NewChildrenAfterGraceful {
		before, _ = children(pid)
	}
	// A keep-alive connection left idle on the server: the server closes
	// it when it begins its graceful restart, which tells us the signal
	// was acted on (the health check that follows then meets the new
	// configuration, not the old one a moment before it reloads).
	var sentinel *sentinelConn
	if b.facts.ClosesIdleOnGraceful {
		sentinel = b.openSentinel(r.ctx)
	}
	r.signaled = true
	if err := syscall.Kill(pid, b.facts.GracefulRestart); err != nil {
		sentinel.close()
		return "", fmt.Errorf("signal %s to pid %d: %w", sigName(b.facts.GracefulRestart), pid, err)
	}
	detail := ""
	if sentinel != nil {
		t := time.Now()
		if err := sentinel.waitClosed(r.ctx); err != nil {
			return "", fmt.Errorf("pid %d did not begin its graceful restart after %s (its idle connection stayed open): %w", pid, sigName(b.facts.GracefulRestart), err)
		}
		detail = fmt.Sprintf(", idle connection closed after %s", time.Since(t).Round(time.Microsecond))
	}
	if b.facts.NewChildrenAfterGraceful {
		// Apache's parent keeps its PID; the restart is done when it runs
		// children that were not there before the signal.
		err := poll(r.ctx, func() bool {
			now, err := children(pid)
			if err != nil || !alive(pid) {
				return true // reported below
			}
			for c := range now {
				if !before[c] {
					return true
				}
			}
			return false
		})
		if err != nil {
			return "", fmt.Errorf("pid %d started no new children after %s: %w", pid, sigName(b.facts.GracefulRestart), err)
		}
		if !alive(pid) {
			return "", fmt.Errorf("pid %d exited after %s (bad configuration? see the server's error log)", pid, sigName(b.facts.GracefulRestart))
		}
	}
	return fmt.Sprintf("%s to pid %d%s", sigName(b.facts.GracefulRestart), pid, detail), nil
}

func (r *restartRun) stopStart() (string, error) {
	b := r.b
	pid, err := b.signalTarget()
	if err != nil {
		return "", err
	}
	r.res.OldPID = pid
	if r.s.before != nil {
		r.s.before(b.cfg.Name)
	}
	r.signaled = true
	if err := syscall.Kill(pid, b.facts.GracefulStop); err != nil {
		return "", fmt.Errorf("signal %s to pid %d: %w", sigName(b.facts.GracefulStop), pid, err)
	}
	t := time.Now()
	if err := poll(r.ctx, func() bool { return !alive(pid) }); err != nil {
		return "", fmt.Errorf("pid %d still running after %s: %w", pid, sigName(b.facts.GracefulStop), err)
	}
	stopped := time.Since(t)
	// A start opens the PID file before it binds; starting while the old
	// file is still there can lose the PID (lighttpd). The old process
	// removes it as it stops; give that a moment if it lags.
	gone := func() bool { _, err := os.Stat(b.cfg.PIDFile); return errors.Is(err, os.ErrNotExist) }
	pctx, cancel := context.WithTimeout(r.ctx, time.Second)
	_ = poll(pctx, gone)
	cancel()
	if !gone() {
		// The old process is dead; a stale file is only overwritten.
		r.s.warnf("pid file outlived its process", "backend", b.cfg.Name, "pid_file", b.cfg.PIDFile, "pid", pid)
	}
	attempts, err := r.runStart(pid)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s to pid %d, exited after %s; started pid %d (%d attempt(s))",
		sigName(b.facts.GracefulStop), pid, stopped.Round(time.Millisecond), r.res.NewPID, attempts), nil
}

// runStart runs start_command until the PID file names a new live process.
// A start that fails because the port is still busy is retried.
func (r *restartRun) runStart(oldPID int) (int, error) {
	b := r.b
	logPath := filepath.Join(r.s.runDir, "baton-start-"+b.cfg.Name+".log")
	const maxAttempts = 20
	for attempt := 1; ; attempt++ {
		cmd, err := startCommand(b.cfg.StartCommand, logPath)
		if err != nil {
			return attempt, fmt.Errorf("start_command: %w", err)
		}
		var newPID int
		up := func() bool {
			if p, err := readPID(b.cfg.PIDFile); err == nil && p != oldPID {
				newPID = p
				return true
			}
			select {
			case <-cmd.exited:
				// A daemonizing start has returned; its failure shows in err.
				return cmd.err != nil
			default:
				return false
			}
		}
		if err := poll(r.ctx, up); err != nil {
			return attempt, fmt.Errorf("start_command ran but %s names no new live process: %w%s", b.cfg.PIDFile, err, outputTail(logPath))
		}
		if newPID != 0 {
			r.res.NewPID = newPID
			return attempt, nil
		}
		ferr := cmd.failure()
		busy := strings.Contains(strings.ToLower(ferr.Error()), "address already in use")
		if attempt >= maxAttempts || !(busy || b.facts.StartMayFindPortBusy) {
			return attempt, fmt.Errorf("start_command failed: %w", ferr)
		}
		select {
		case <-r.ctx.Done():
			return attempt, fmt.Errorf("start_command failed: %w (then %w)", ferr, r.ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (r *restartRun) runRestartCommand() (string, error) {
	b := r.b
	if b.cfg.PIDFile != "" {
		if pid, err := readPID(b.cfg.PIDFile); err == nil {
			r.res.OldPID = pid
		}
	}
	logPath := filepath.Join(r.s.runDir, "baton-restart-"+b.cfg.Name+".log")
	r.signaled = true
	cmd, err := startCommand(b.cfg.RestartCommand, logPath)
	if err != nil {
		return "", fmt.Errorf("restart_command: %w", err)
	}
	select {
	case <-cmd.exited:
	case <-r.ctx.Done():
		cmd.kill()
		<-cmd.exited
		return "", fmt.Errorf("restart_command did not finish: %w%s", r.ctx.Err(), outputTail(logPath))
	}
	if err := cmd.failure(); err != nil {
		return "", fmt.Errorf("restart_command failed: %w", err)
	}
	return "ran " + strings.Join(b.cfg.RestartCommand, " "), nil
}

// waitUp waits until the process named by the PID file is alive (when
// there is one) and a health check passes.
func (r *restartRun) waitUp() (string, error) {
	b := r.b
	var lastErr error
	attempt := 0
	err := poll(r.ctx, func() bool {
		if b.cfg.PIDFile != "" {
			pid, err := readPID(b.cfg.PIDFile)
			if err != nil {
				lastErr = err
				return false
			}
			r.res.NewPID = pid
		}
		// Short first, doubling up to health_timeout: a connection caught
		// in the server's restart is dropped quickly, a slow health page
		// still gets its time.
		timeout := min(b.cfg.HealthTimeout, restartProbeTimeout<<min(attempt, 8))
		attempt++
		if err := b.probeWithin(r.ctx, timeout); err != nil {
			lastErr = fmt.Errorf("health check: %w", err)
			return false
		}
		return true
	})
	if err != nil {
		if lastErr != nil {
			return "", fmt.Errorf("%w; last: %v", err, lastErr)
		}
		return "", err
	}
	if r.res.NewPID != 0 {
		return fmt.Sprintf("pid %d healthy", r.res.NewPID), nil
	}
	return "healthy", nil
}

// adoptOrphan finishes a restart whose owner died (crashed, or killed at
// its drain deadline): this process takes it over, waits until the backend
// is up and healthy (bounded by restart_timeout) and readmits it, or marks
// it down.
func (s *Set) adoptOrphan(b *Backend) {
	w := b.slot.load()
	if w.phase() == PhaseNone {
		return
	}
	owner := atomic.LoadInt64(&b.slot.owner)
	if owner == 0 || owner == int64(s.pid) || s.ownerAlive(b.slot, owner) {
		return
	}
	if !atomic.CompareAndSwapInt64(&b.slot.owner, owner, int64(s.pid)) {
		return
	}
	atomic.StoreUint64(&b.slot.ownerGen, uint64(s.gen))
	s.warnf("adopting restart of dead owner", "backend", b.cfg.Name, "owner_pid", owner, "phase", w.phase())
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		ctx, cancel := context.WithTimeout(s.jobCtx, b.cfg.RestartTimeout)
		defer cancel()
		r := &restartRun{s: s, b: b, start: time.Now(), ctx: ctx, signaled: true}
		r.res = RestartResult{Backend: b.cfg.Name, At: r.start}
		err := r.step("healthy", PhaseStarting, r.waitUp)
		if err != nil {
			err = fmt.Errorf("restart owner pid %d died; %w", owner, err)
		}
		s.finish(r, err)
	}()
}

// ownerAlive reports whether the baton process owner that claimed slot's
// restart still runs. A live pid is not enough (Issue 7: a reused pid kept
// an orphaned restart from ever being adopted): the process must be the
// one that claimed it, by its genID, or, for an owner written by an older
// baton that records none, a process that started before the phase began.
func (s *Set) ownerAlive(slot *stateSlot, owner int64) bool {
	if g := genID(atomic.LoadUint64(&slot.ownerGen)); g != 0 && g.pid() == int(owner) {
		return s.alive(g)
	}
	if !alive(int(owner)) {
		return false
	}
	started, err := procStartTime(int(owner))
	if err != nil {
		return true // cannot tell: leave it to its owner
	}
	// Boot time has one-second resolution.
	return !started.After(time.Unix(0, atomic.LoadInt64(&slot.since)).Add(time.Second))
}

// DrainResult is the outcome of Drain.
type DrainResult struct {
	Backend  string        `json:"backend"`
	Already  bool          `json:"already_drained,omitempty"`
	Waited   time.Duration `json:"waited_ns"`
	InFlight int64         `json:"in_flight"` // still in flight when Drain returned
}

// Drain takes the named backend out of rotation until Undrain, then waits
// (up to drain_timeout or ctx) for its in-flight requests to finish.
func (s *Set) Drain(ctx context.Context, name string) (DrainResult, error) {
	b, err := s.Lookup(name)
	if err != nil {
		return DrainResult{}, err
	}
	old, _ := b.slot.update(func(w stateWord) stateWord { return w.with(bitDrained, true) })
	res := DrainResult{Backend: name, Already: old.drained()}
	if !res.Already {
		s.logf("backend drained", "backend", name)
	}
	t := time.Now()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.DrainTimeout)
	defer cancel()
	_ = poll(ctx, func() bool { return b.globalInflight() <= 0 })
	res.Waited = time.Since(t)
	res.InFlight = b.globalInflight()
	return res, nil
}

// Undrain puts a drained backend back into rotation (once it is healthy).
func (s *Set) Undrain(name string) (Status, error) {
	b, err := s.Lookup(name)
	if err != nil {
		return Status{}, err
	}
	old, _ := b.slot.update(func(w stateWord) stateWord { return w.with(bitDrained, false) })
	if old.drained() {
		s.logf("backend undrained", "backend", name)
		s.wake()
	}
	for _, st := range s.Status() {
		if st.Name == name {
			return st, nil
		}
	}
	return Status{}, nil
}
