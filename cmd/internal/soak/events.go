package soak

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// Event kinds.
const (
	KindUpgrade    = "upgrade"     // baton ctl upgrade
	KindRestart    = "restart"     // baton ctl restart BACKEND
	KindRestartAll = "restart-all" // baton ctl restart --all
	KindDrain      = "drain"       // baton ctl drain BACKEND
	KindUndrain    = "undrain"     // baton ctl undrain BACKEND
	KindKill       = "kill"        // kill -9 of BACKEND's main process (its PID file)
	KindCommand    = "command"     // run Command; then restart BACKEND if set
)

// EventKinds lists the event kinds in the order the documentation gives.
var EventKinds = []string{KindUpgrade, KindRestart, KindRestartAll, KindDrain, KindUndrain, KindKill, KindCommand}

// EventSpec is one event to run during a soak.
//
// Through baton (ModeBaton) the control socket does upgrade, restart,
// restart-all, drain and undrain. Straight to the servers (ModeDirect) a
// restart is what the server offers without baton: the graceful-restart
// signal (apachectl graceful), or for stop-start the graceful-stop signal,
// a wait for the process to exit, and start_command, all taken from baton's
// configuration; upgrade, drain and undrain have nothing to act on and are
// recorded as skipped. kill and command are the same in both modes.
type EventSpec struct {
	At      time.Duration // after the load starts
	Kind    string
	Backend string   // restart, drain, undrain, kill; command: restart it after the command
	Command []string // command: the argv to run; kill: what starts the server again (default: its start_command)
	// StartAfter, for kill: start the server again this long after killing
	// it (0: leave it dead).
	StartAfter time.Duration
	PIDFile    string        // kill: overrides the backend's pid_file
	Timeout    time.Duration // bound on the whole event (default DefaultEventTimeout)
}

// checkEvents validates the events against the known backends (from
// baton's status; nil in direct mode, where o.Backends is used).
func checkEvents(o *Options, known []backends.Status) error {
	if known == nil {
		for name, b := range o.Backends {
			known = append(known, backends.Status{Name: name, Kind: b.Kind})
		}
		slices.SortFunc(known, func(a, b backends.Status) int { return strings.Compare(a.Name, b.Name) })
	}
	for i := range o.Events {
		e := &o.Events[i]
		where := fmt.Sprintf("soak: event %d (%s at %s)", i+1, e.Kind, e.At)
		if !slices.Contains(EventKinds, e.Kind) {
			return fmt.Errorf("%s: unknown kind %q (want one of %s)", where, e.Kind, strings.Join(EventKinds, ", "))
		}
		if e.At < 0 || e.At >= o.Duration {
			return fmt.Errorf("%s: at %s is past the load's duration %s", where, e.At, o.Duration)
		}
		if e.Timeout <= 0 {
			e.Timeout = DefaultEventTimeout
		}
		needBackend := e.Kind == KindRestart || e.Kind == KindDrain || e.Kind == KindUndrain || e.Kind == KindKill
		switch {
		case needBackend && e.Backend == "":
			return fmt.Errorf("%s: which backend? (backend = \"NAME\")", where)
		case !needBackend && e.Kind != KindCommand && e.Backend != "":
			return fmt.Errorf("%s: takes no backend", where)
		case e.Kind == KindCommand && len(e.Command) == 0:
			return fmt.Errorf("%s: no command (command = [\"sh\", \"-c\", \"...\"])", where)
		case e.Kind != KindCommand && e.Kind != KindKill && len(e.Command) > 0:
			return fmt.Errorf("%s: takes no command", where)
		case e.Kind != KindKill && (e.StartAfter != 0 || e.PIDFile != ""):
			return fmt.Errorf("%s: start_after and pid_file are for kill", where)
		}
		if e.Backend == "" {
			continue
		}
		if !hasBackend(known, e.Backend) {
			return fmt.Errorf("%s: baton has no backend %q (it has %s)", where, e.Backend, backendNames(known))
		}
		cfg, haveCfg := o.Backends[e.Backend]
		if e.Kind == KindKill && e.PIDFile == "" {
			if !haveCfg || cfg.PIDFile == "" {
				return fmt.Errorf("%s: no pid_file known for %s (give baton's --config, or pid_file in the event)", where, e.Backend)
			}
		}
		if e.Kind == KindKill && e.StartAfter > 0 && len(e.Command) == 0 && (!haveCfg || len(cfg.StartCommand) == 0) {
			return fmt.Errorf("%s: start_after needs a command, or a start_command for %s in baton's configuration", where, e.Backend)
		}
		if o.Mode == ModeDirect && (e.Kind == KindRestart || e.Kind == KindCommand) {
			if err := canRestartDirect(e.Backend, cfg, haveCfg); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
	}
	if o.Mode == ModeDirect {
		for _, name := range o.Restart {
			cfg, ok := o.Backends[name]
			if err := canRestartDirect(name, cfg, ok); err != nil {
				return fmt.Errorf("soak: --restart %s: %w", name, err)
			}
		}
	}
	return nil
}

func hasBackend(known []backends.Status, name string) bool {
	return slices.ContainsFunc(known, func(b backends.Status) bool { return b.Name == name })
}

func backendNames(known []backends.Status) string {
	if len(known) == 0 {
		return "none"
	}
	var names []string
	for _, b := range known {
		names = append(names, b.Name)
	}
	return strings.Join(names, ", ")
}

// statusBackends asks baton for its backends.
func statusBackends(ctx context.Context, socket string) ([]backends.Status, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := control.Do(cctx, socket, control.Request{Cmd: control.CmdStatus})
	if err != nil {
		return nil, fmt.Errorf("soak: baton's status: %w", err)
	}
	if resp.Status == nil {
		return nil, fmt.Errorf("soak: baton's status: %s", resp.Error)
	}
	return resp.Status.Backends, nil
}

// span is when an event was under way, widened by nearEvent; an event
// still running has no end.
type span struct {
	from, to time.Time
	running  bool
}

func (s span) overlaps(from, to time.Time) bool {
	return to.After(s.from) && (s.running || from.Before(s.to))
}

// events records events as they start and end.
type events struct {
	mu      sync.Mutex
	items   []Event
	running map[int]time.Time // by ticket
	next    int
	last    string
}

func (ev *events) begin() (ticket int) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.running == nil {
		ev.running = map[int]time.Time{}
	}
	ev.next++
	ev.running[ev.next] = time.Now()
	return ev.next
}

func (ev *events) end(ticket int, e Event) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	delete(ev.running, ticket)
	ev.items = append(ev.items, e)
	state := "ok"
	switch {
	case e.Skipped:
		state = "skipped"
	case !e.OK:
		state = "FAILED"
	}
	ev.last = fmt.Sprintf("%s %s (%s)", e.Name(), state, e.Duration().Round(time.Millisecond))
}

func (ev *events) spans() []span {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var out []span
	for _, e := range ev.items {
		if !e.Skipped {
			out = append(out, span{from: e.Start.Add(-nearEvent), to: e.End.Add(nearEvent)})
		}
	}
	for _, t := range ev.running {
		out = append(out, span{from: t.Add(-nearEvent), running: true})
	}
	return out
}

func (ev *events) list() []Event {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	out := slices.Clone(ev.items)
	slices.SortStableFunc(out, func(a, b Event) int { return a.Start.Compare(b.Start) })
	return out
}

func (ev *events) lastText() string {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.last
}

// do runs spec and records it. It runs to the end even if the load is
// interrupted, bounded by spec.Timeout.
func (ev *events) do(ctx context.Context, spec EventSpec, run *runner, at time.Duration) {
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = DefaultEventTimeout
	}
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	ticket := ev.begin()
	e := run.run(ectx, spec)
	if at > 0 {
		e.At = at.Seconds()
	}
	ev.end(ticket, e)
}

// at waits until spec.At after start, then runs it, unless ctx ends first.
func (ev *events) at(ctx context.Context, start time.Time, i int, spec EventSpec, run *runner) {
	t := time.NewTimer(time.Until(start.Add(spec.At)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	ev.do(ctx, spec, run, max(spec.At, time.Nanosecond))
}

// every runs next(i) at each multiple of d until the load ends, one at a
// time (a tick that comes while one runs is skipped).
func (ev *events) every(ctx context.Context, d, total time.Duration, next func(int) EventSpec, run *runner) {
	t := time.NewTicker(d)
	defer t.Stop()
	end := time.NewTimer(total - d/4)
	defer end.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-end.C:
			return
		case <-t.C:
		}
		ev.do(ctx, next(i), run, 0)
	}
}

// runner does events: through baton's control socket, or directly.
type runner struct {
	socket   string
	backends map[string]backends.Config
	direct   bool
}

func (r *runner) run(ctx context.Context, spec EventSpec) Event {
	e := Event{Kind: spec.Kind, Target: spec.Backend, Start: time.Now()}
	var detail string
	var err error
	switch {
	case spec.Kind == KindKill:
		detail, err = r.kill(ctx, spec)
	case spec.Kind == KindCommand:
		detail, err = runCommand(ctx, spec.Command)
		if err == nil && spec.Backend != "" {
			var more string
			more, err = r.restart(ctx, spec.Backend)
			detail = strings.TrimSpace(detail + "; then restart " + spec.Backend + ": " + more)
		}
	case r.direct && spec.Kind == KindRestart:
		detail, err = r.restart(ctx, spec.Backend)
	case r.direct && spec.Kind == KindRestartAll:
		detail, err = r.restartAllDirect(ctx)
	case r.direct:
		e.Skipped, e.OK, e.End = true, true, time.Now()
		e.Detail = "skipped: nothing to " + spec.Kind + " without baton"
		return e
	default:
		detail, err = r.control(ctx, spec)
	}
	e.End = time.Now()
	e.OK, e.Detail = err == nil, detail
	if err != nil {
		e.Detail = err.Error()
		if detail != "" {
			e.Detail = detail + ": " + err.Error()
		}
	}
	return e
}

// control sends spec to baton and describes the answer.
func (r *runner) control(ctx context.Context, spec EventSpec) (string, error) {
	req := control.Request{Backend: spec.Backend}
	switch spec.Kind {
	case KindUpgrade:
		req.Cmd = control.CmdUpgrade
	case KindRestart:
		req.Cmd = control.CmdRestart
	case KindRestartAll:
		req.Cmd, req.All = control.CmdRestart, true
	case KindDrain:
		req.Cmd = control.CmdDrain
	case KindUndrain:
		req.Cmd = control.CmdUndrain
	}
	resp, err := control.Do(ctx, r.socket, req)
	if err != nil {
		return "", err
	}
	if !resp.OK {
		return "", errors.New(resp.Error)
	}
	switch {
	case resp.Upgrade != nil:
		u := resp.Upgrade
		return fmt.Sprintf("pid %d, generation %d, ready in %s", u.PID, u.Generation, u.Took.Round(time.Microsecond)), nil
	case len(resp.Restarts) > 0:
		var parts []string
		for _, rr := range resp.Restarts {
			var steps []string
			for _, s := range rr.Steps {
				steps = append(steps, fmt.Sprintf("%s %s", s.Name, s.Duration.Round(time.Millisecond)))
			}
			p := fmt.Sprintf("pid %d -> %d; %s", rr.OldPID, rr.NewPID, strings.Join(steps, ", "))
			if len(resp.Restarts) > 1 {
				p = rr.Backend + ": " + p
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, " | "), nil
	case resp.Drain != nil:
		return fmt.Sprintf("waited %s, %d in flight left", resp.Drain.Waited.Round(time.Millisecond), resp.Drain.InFlight), nil
	case resp.Backend != nil:
		return "state " + resp.Backend.State, nil
	}
	return "", nil
}

// restart restarts a backend through baton, or directly in direct mode.
func (r *runner) restart(ctx context.Context, name string) (string, error) {
	if !r.direct {
		return r.control(ctx, EventSpec{Kind: KindRestart, Backend: name})
	}
	cfg, ok := r.backends[name]
	if err := canRestartDirect(name, cfg, ok); err != nil {
		return "", err
	}
	return restartDirect(ctx, cfg)
}

func (r *runner) restartAllDirect(ctx context.Context) (string, error) {
	var names []string
	for name, b := range r.backends {
		if b.Kind != backends.KindNone && b.Kind != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var parts []string
	for _, name := range names {
		d, err := restartDirect(ctx, r.backends[name])
		parts = append(parts, name+": "+d)
		if err != nil {
			return strings.Join(parts, " | "), fmt.Errorf("%s: %w", name, err)
		}
	}
	return strings.Join(parts, " | "), nil
}

// kill sends SIGKILL to the backend's main process, then optionally starts
// it again.
func (r *runner) kill(ctx context.Context, spec EventSpec) (string, error) {
	cfg := r.backends[spec.Backend]
	pidFile := spec.PIDFile
	if pidFile == "" {
		pidFile = cfg.PIDFile
	}
	// The same identity check baton makes before any signal: the process
	// must be this backend's server, listening on its address.
	check := cfg
	check.PIDFile = pidFile
	pid, err := backends.CheckPIDFile(check)
	if err != nil {
		return "", err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return "", fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	detail := fmt.Sprintf("kill -9 %d", pid)
	if spec.StartAfter <= 0 {
		return detail, nil
	}
	t := time.NewTimer(spec.StartAfter)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return detail, ctx.Err()
	case <-t.C:
	}
	argv := spec.Command
	if len(argv) == 0 {
		argv = cfg.StartCommand
	}
	// Wait for the kernel to have reaped it, so its port is free.
	if err := waitGone(ctx, pid, ""); err != nil {
		return detail, err
	}
	out, err := startDetached(ctx, argv)
	detail += fmt.Sprintf("; started again after %s", spec.StartAfter)
	if out != "" {
		detail += ": " + out
	}
	if err != nil {
		return detail, err
	}
	// Done when the PID file names the new process.
	for {
		if p, err := readPIDFile(pidFile); err == nil && p != pid && alive(p) {
			return detail + fmt.Sprintf(", pid %d", p), nil
		}
		select {
		case <-ctx.Done():
			return detail, fmt.Errorf("no new process in %s: %w", pidFile, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func canRestartDirect(name string, cfg backends.Config, ok bool) error {
	if !ok {
		return fmt.Errorf("restart %s straight to the server needs baton's configuration (--config)", name)
	}
	if len(cfg.RestartCommand) > 0 {
		return nil
	}
	if _, ok := backends.Facts(cfg.Kind); !ok || cfg.PIDFile == "" {
		return fmt.Errorf("backend %s (kind %q) cannot be restarted without baton: no restart_command and no pid_file", name, cfg.Kind)
	}
	if cfg.Restart == backends.MethodStopStart && len(cfg.StartCommand) == 0 {
		return fmt.Errorf("backend %s: stop-start without a start_command", name)
	}
	return nil
}

// restartDirect restarts a server the way it is done without baton: its
// restart_command, its graceful-restart signal, or for stop-start the
// graceful-stop signal, a wait until it has exited, and its start_command.
func restartDirect(ctx context.Context, cfg backends.Config) (string, error) {
	if len(cfg.RestartCommand) > 0 {
		return runCommand(ctx, cfg.RestartCommand)
	}
	facts, _ := backends.Facts(cfg.Kind)
	pid, err := backends.CheckPIDFile(cfg)
	if err != nil {
		return "", err
	}
	start := time.Now()
	if cfg.Restart != backends.MethodStopStart {
		if err := syscall.Kill(pid, facts.GracefulRestart); err != nil {
			return "", fmt.Errorf("signal %d: %w", pid, err)
		}
		return fmt.Sprintf("%s to pid %d", sigName(facts.GracefulRestart), pid), nil
	}
	if err := syscall.Kill(pid, facts.GracefulStop); err != nil {
		return "", fmt.Errorf("signal %d: %w", pid, err)
	}
	if err := waitGone(ctx, pid, cfg.PIDFile); err != nil {
		return "", err
	}
	stopped := time.Since(start)
	out, err := startDetached(ctx, cfg.StartCommand)
	detail := fmt.Sprintf("%s to pid %d, exited after %s, started again", sigName(facts.GracefulStop), pid, stopped.Round(time.Millisecond))
	if out != "" {
		detail += ": " + out
	}
	return detail, err
}

func sigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGUSR1:
		return "SIGUSR1"
	case syscall.SIGWINCH:
		return "SIGWINCH"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return s.String()
}

// waitGone polls until pid has exited (or is a zombie) and, if pidFile is
// given, the file is gone or names another process.
func waitGone(ctx context.Context, pid int, pidFile string) error {
	for {
		gone := !alive(pid)
		if gone && pidFile != "" {
			if p, err := readPIDFile(pidFile); err == nil && p == pid {
				gone = false
			}
		}
		if gone {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pid %d still running: %w", pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(st), ')')
	return !(i > 0 && i+2 < len(st) && st[i+2] == 'Z')
}

// runCommand runs argv and waits for it; its output is the detail.
func runCommand(ctx context.Context, argv []string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	detail := strings.TrimSpace(string(out))
	if len(detail) > 300 {
		detail = detail[:300] + "..."
	}
	if err != nil {
		return detail, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	if detail == "" {
		detail = strings.Join(argv, " ")
	}
	return detail, nil
}

// startDetached runs a server's start command in its own session, so the
// server outlives the soak, retrying for a few seconds while it fails (the
// old process may still hold the port).
func startDetached(ctx context.Context, argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("no start command")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		out, err := cmd.CombinedOutput()
		if err == nil {
			return strings.TrimSpace(string(out)), nil
		}
		if time.Now().After(deadline) {
			return strings.TrimSpace(string(out)), fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// holdSample is one baton process's hold counters.
type holdSample struct {
	max      time.Duration
	held     int64
	timeouts int64
}

// holdWatch polls baton's status for its hold counters, which each baton
// process keeps from its start; the soak's figure is the largest and the
// sum over the processes seen.
type holdWatch struct {
	socket string
	mu     sync.Mutex
	byPID  map[int]holdSample
	// served[pid][backend] is what each baton process said it sent each
	// backend; rates sums them over processes at each sample.
	served map[int]map[string]uint64
	rates  []servedSample
	names  []string // backends in baton's order
}

// servedSample is the requests sent to each backend by every baton
// process seen so far, at one moment.
type servedSample struct {
	at    time.Time
	total map[string]uint64
}

func (h *holdWatch) watch(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		h.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *holdWatch) sample(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := control.Do(cctx, h.socket, control.Request{Cmd: control.CmdStatus})
	if err != nil || resp.Status == nil {
		return
	}
	st := resp.Status
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byPID[st.PID] = holdSample{max: st.Proxy.MaxHold, held: st.Proxy.HeldTotal, timeouts: st.Proxy.HoldTimeouts}
	if h.served == nil {
		h.served = map[int]map[string]uint64{}
	}
	m := map[string]uint64{}
	for _, b := range st.Backends {
		m[b.Name] = b.Served
		if !slices.Contains(h.names, b.Name) {
			h.names = append(h.names, b.Name)
		}
	}
	h.served[st.PID] = m
	total := map[string]uint64{}
	for _, pm := range h.served {
		for n, v := range pm {
			total[n] += v
		}
	}
	h.rates = append(h.rates, servedSample{at: time.Now(), total: total})
}

// backendRates turns the samples into requests per second per backend,
// one value per second of the run since start.
func (h *holdWatch) backendRates(start time.Time, secs int) []BackendRate {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.rates) == 0 || secs <= 0 {
		return nil
	}
	// The cumulative count at the end of each second: the last sample
	// taken before it ended.
	cum := make([]map[string]uint64, secs+1)
	base := h.rates[0].total
	j := 0
	for sec := 0; sec <= secs; sec++ {
		end := start.Add(time.Duration(sec) * time.Second)
		for j+1 < len(h.rates) && !h.rates[j+1].at.After(end) {
			j++
		}
		cum[sec] = h.rates[j].total
	}
	var out []BackendRate
	for _, n := range h.names {
		br := BackendRate{Backend: n, PerSecond: make([]int, secs)}
		for sec := 1; sec <= secs; sec++ {
			prev, cur := cum[sec-1][n], cum[sec][n]
			if sec == 1 {
				prev = base[n]
			}
			if cur > prev {
				br.PerSecond[sec-1] = int(cur - prev)
			}
		}
		out = append(out, br)
	}
	return out
}

func (h *holdWatch) total() Hold {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := Hold{Known: len(h.byPID) > 0}
	for _, s := range h.byPID {
		out.Max = max(out.Max, s.max)
		out.Held += s.held
		out.Timeouts += s.timeouts
	}
	return out
}
