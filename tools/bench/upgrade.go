package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// upgradesPerSeries is how many upgrades or reloads each series makes.
const upgradesPerSeries = 10

// ctlUpgrade is one `baton ctl upgrade --json` answer.
type ctlUpgrade struct {
	PID        int           `json:"pid"`
	Generation int           `json:"generation"`
	Waited     time.Duration `json:"waited_ns"`
	Took       time.Duration `json:"took_ns"`
}

// ctlSeries is a series of baton ctl upgrades.
type ctlSeries struct {
	label    string
	upgrades []ctlUpgrade
	wrk      *wrkResult // the load during the series, if any
	err      error
}

// reloadSeries is a series of reloads of one setup under wrk load.
type reloadSeries struct {
	setup, method string
	took          []time.Duration // signal to new process serving
	wrk           wrkResult
	err           error
}

// sighupSeries is a series of upgrades of one program triggered by SIGHUP
// and timed from the outside: signal to PID file naming the new process.
type sighupSeries struct {
	program, label string
	took           []time.Duration
	wrk            *wrkResult // the load during the series, if any
	err            error
}

// upgradeResults are the figures of the upgrade section of the report.
type upgradeResults struct {
	ctl     []ctlSeries
	sighup  []sighupSeries
	reloads []reloadSeries
}

func (u upgradeResults) failed() bool {
	for _, s := range u.ctl {
		if s.err != nil {
			return true
		}
	}
	for _, s := range u.sighup {
		if s.err != nil {
			return true
		}
	}
	for _, r := range u.reloads {
		if r.err != nil {
			return true
		}
	}
	return false
}

// loadLabel describes the load of the loaded upgrade series.
const loadLabel = "under wrk -c50, small.txt"

// measureUpgrades times baton's upgrades idle and under load, through the
// control socket and from the outside, times the minimal tableflip
// program's upgrades the same outside way, then counts what wrk saw go
// wrong while baton, HAProxy and nginx were reloaded.
func (b *bench) measureUpgrades(ctx context.Context) upgradeResults {
	var u upgradeResults
	b.progress("baton: %d ctl upgrades, idle", upgradesPerSeries)
	u.ctl = append(u.ctl, b.ctlUpgradesIdle(ctx))
	if ctx.Err() != nil {
		return u
	}
	b.progress("baton: %d ctl upgrades under wrk c=50 small.txt", upgradesPerSeries)
	u.ctl = append(u.ctl, b.ctlUpgradesLoaded(ctx))
	baton := b.setupByName(setupBaton)
	for _, loaded := range []bool{false, true} {
		if ctx.Err() != nil {
			return u
		}
		s := b.sighupUpgrades(ctx, setupBaton, baton.proc.pgid(), b.batonPID, "http://"+baton.addr+"/small.txt", loaded)
		u.sighup = append(u.sighup, s)
	}
	if ctx.Err() != nil {
		return u
	}
	u.sighup = append(u.sighup, b.tableflipUpgrades(ctx)...)
	for _, rl := range b.reloaders() {
		if ctx.Err() != nil {
			return u
		}
		b.progress("%s: %d reloads (%s) under wrk c=50 small.txt", rl.setup, upgradesPerSeries, rl.method)
		r := b.reloadUnderLoad(ctx, rl)
		if r.err != nil {
			b.progress("%s: reloads: %v", rl.setup, r.err)
		} else {
			b.progress("%s: reloads done; wrk errors: %s", rl.setup, r.wrk.errs)
		}
		u.reloads = append(u.reloads, r)
	}
	return u
}

func (b *bench) ctlUpgradesIdle(ctx context.Context) ctlSeries {
	s := ctlSeries{label: "idle"}
	s.upgrades, s.err = b.ctlUpgrades(ctx, upgradesPerSeries)
	return s
}

func (b *bench) ctlUpgradesLoaded(ctx context.Context) ctlSeries {
	s := ctlSeries{label: "under wrk -c50, small.txt"}
	baton := b.setupByName(setupBaton)
	w, err := startWrk(ctx, b.tools.wrk, "http://"+baton.addr+"/small.txt", 50, 10*time.Minute)
	if err != nil {
		s.err = err
		return s
	}
	sleepCtx(ctx, time.Second)
	s.upgrades, s.err = b.ctlUpgrades(ctx, upgradesPerSeries)
	sleepCtx(ctx, time.Second)
	w.stop()
	res, err := w.wait()
	if err != nil && s.err == nil {
		s.err = err
	}
	s.wrk = &res
	return s
}

// ctlUpgrades runs n upgrades through the control socket, one after the
// other; each returns once the new process serves. The pause lets the old
// generation finish draining, so that took_ns is not the previous
// upgrade's drain.
func (b *bench) ctlUpgrades(ctx context.Context, n int) ([]ctlUpgrade, error) {
	var out []ctlUpgrade
	for i := 0; i < n; i++ {
		u, err := b.ctlUpgrade(ctx)
		if err != nil {
			return out, fmt.Errorf("bench: baton upgrade %d of %d: %w", i+1, n, err)
		}
		out = append(out, u)
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return out, nil
}

func (b *bench) ctlUpgrade(ctx context.Context) (ctlUpgrade, error) {
	cmd := exec.CommandContext(ctx, b.opts.baton, "ctl", "--socket", b.batonSocket, "--timeout", "60s", "upgrade", "--json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	var resp struct {
		OK      bool        `json:"ok"`
		Error   string      `json:"error"`
		Upgrade *ctlUpgrade `json:"upgrade"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		return ctlUpgrade{}, fmt.Errorf("ctl upgrade: %v: %w (stderr: %s)", runErr, err, strings.TrimSpace(stderr.String()))
	}
	if !resp.OK || resp.Upgrade == nil {
		return ctlUpgrade{}, fmt.Errorf("ctl upgrade: %s (%v)", resp.Error, runErr)
	}
	return *resp.Upgrade, nil
}

// tableflipUpgrades starts the minimal tableflip program, times its
// upgrades idle and under load like baton's, and stops it again.
func (b *bench) tableflipUpgrades(ctx context.Context) []sighupSeries {
	p, addr, err := b.startServer(ctx, progTableflip, b.startTableflip)
	if err != nil {
		return []sighupSeries{{program: progTableflip, label: "idle", err: err}}
	}
	defer b.stopProc(p)
	b.progress("%s on %s (pid %d)", progTableflip, addr, p.pgid())
	var out []sighupSeries
	for _, loaded := range []bool{false, true} {
		if ctx.Err() != nil {
			break
		}
		s := b.sighupUpgrades(ctx, progTableflip, p.pgid(), b.path("tfref.pid"), "http://"+addr+"/small.txt", loaded)
		if s.err != nil {
			s.err = fmt.Errorf("%w; log: %s", s.err, p.logTail())
		}
		out = append(out, s)
	}
	return out
}

// sighupUpgrades times upgradesPerSeries upgrades of program, running in
// process group pg and writing pidFile once a new process is ready, idle or
// under wrk -c50 on url.
func (b *bench) sighupUpgrades(ctx context.Context, program string, pg int, pidFile, url string, loaded bool) sighupSeries {
	s := sighupSeries{program: program, label: "idle"}
	var w *wrkRun
	if loaded {
		s.label = loadLabel
		var err error
		if w, err = startWrk(ctx, b.tools.wrk, url, 50, 10*time.Minute); err != nil {
			s.err = err
			return s
		}
		sleepCtx(ctx, time.Second)
	}
	b.progress("%s: %d SIGHUP upgrades, %s, timed by the PID file", program, upgradesPerSeries, s.label)
	s.took, s.err = timeSighups(ctx, pg, pidFile, upgradesPerSeries)
	if w != nil {
		sleepCtx(ctx, time.Second)
		w.stop()
		res, err := w.wait()
		if err != nil && s.err == nil {
			s.err = err
		}
		s.wrk = &res
	}
	if s.err != nil {
		b.progress("%s: SIGHUP upgrades: %v", program, s.err)
	}
	return s
}

// timeSighups makes n upgrades of the program in process group pg, one
// after the other, each triggered by SIGHUP to the PID in pidFile and timed
// by timeSighup. Before each, it pauses 0.5 s and then waits until the
// process named in pidFile is the group's only live process: the ones
// upgraded from have exited, so no upgrade waits for a predecessor's drain
// (tableflip even refuses to upgrade before its parent has exited).
func timeSighups(ctx context.Context, pg int, pidFile string, n int) ([]time.Duration, error) {
	var out []time.Duration
	for i := 0; i < n; i++ {
		sleepCtx(ctx, 500*time.Millisecond)
		old, others := 0, 0
		err := waitUntil(ctx, 30*time.Second, func() bool {
			pid, err := readPIDFile(pidFile)
			if err != nil {
				return false
			}
			old, others = pid, 0
			for _, p := range groupMembers(pg) {
				if p.pid != pid {
					others++
				}
			}
			return others == 0 && alive(pid)
		})
		if err != nil {
			return out, fmt.Errorf("bench: upgrade %d of %d: %d other process(es) besides %d still run: %w", i+1, n, others, old, err)
		}
		d, err := timeSighup(ctx, old, pidFile, 30*time.Second)
		if err != nil {
			return out, fmt.Errorf("bench: upgrade %d of %d: %w", i+1, n, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// timeSighup sends SIGHUP to pid and polls pidFile every 0.2 ms until it
// names another process, returning the time from the signal to then. It
// sleeps with nanosleep(2): the Go runtime's timers are only as precise as
// a millisecond for short sleeps on Linux.
func timeSighup(ctx context.Context, pid int, pidFile string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return 0, fmt.Errorf("SIGHUP %d: %w", pid, err)
	}
	pause := syscall.NsecToTimespec(int64(200 * time.Microsecond))
	for {
		if p, err := readPIDFile(pidFile); err == nil && p != pid {
			return time.Since(start), nil
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("PID file %s still names %d %s after SIGHUP", pidFile, pid, timeout)
		}
		ts := pause
		_ = syscall.Nanosleep(&ts, nil)
	}
}

// reloader reloads one setup: reload sends the signal and returns once the
// new process (or worker) serves.
type reloader struct {
	setup, method string
	reload        func(ctx context.Context) error
}

func (b *bench) reloaders() []reloader {
	return []reloader{
		{setupBaton, "SIGHUP; wait for the PID file to change", b.reloadBaton},
		{setupHAProxy, "master-worker, SIGUSR2; wait for \"Loading success\"", b.reloadHAProxy},
		{setupNginx, "SIGHUP; wait for a new worker", b.reloadNginx},
	}
}

// reloadUnderLoad runs wrk -c50 on small.txt against the setup while it is
// reloaded upgradesPerSeries times, spaced evenly over -duration.
func (b *bench) reloadUnderLoad(ctx context.Context, rl reloader) reloadSeries {
	r := reloadSeries{setup: rl.setup, method: rl.method}
	s := b.setupByName(rl.setup)
	url := "http://" + s.addr + "/small.txt"
	spacing := max(b.opts.duration/upgradesPerSeries, 300*time.Millisecond)
	w, err := startWrk(ctx, b.tools.wrk, url, 50, 10*time.Minute)
	if err != nil {
		r.err = err
		return r
	}
	start := time.Now().Add(time.Second)
	for i := 0; i < upgradesPerSeries && ctx.Err() == nil; i++ {
		sleepCtx(ctx, time.Until(start.Add(time.Duration(i)*spacing)))
		t := time.Now()
		if err := rl.reload(ctx); err != nil {
			r.err = fmt.Errorf("bench: reload %s %d of %d: %w", rl.setup, i+1, upgradesPerSeries, err)
			break
		}
		r.took = append(r.took, time.Since(t))
	}
	sleepCtx(ctx, time.Second)
	w.stop()
	res, err := w.wait()
	if err != nil && r.err == nil {
		r.err = err
	}
	r.wrk = res
	if r.err == nil {
		if err := getSmall(ctx, checkClient(2*time.Second), url); err != nil {
			r.err = fmt.Errorf("bench: %s after reloads: %w", rl.setup, err)
		}
	}
	return r
}

// reloadBaton sends SIGHUP to the PID in baton's PID file and waits until
// the file names another process: the new generation, which serves.
func (b *bench) reloadBaton(ctx context.Context) error {
	old, err := readPIDFile(b.batonPID)
	if err != nil {
		return err
	}
	if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP baton %d: %w", old, err)
	}
	return waitUntil(ctx, 30*time.Second, func() bool {
		pid, err := readPIDFile(b.batonPID)
		return err == nil && pid != old
	})
}

// reloadHAProxy sends SIGUSR2 to the master, which re-executes itself and
// starts a worker that takes the listeners over; it logs "Loading success."
// once that worker runs.
func (b *bench) reloadHAProxy(ctx context.Context) error {
	count := func(s string) int {
		data, _ := os.ReadFile(b.haproxyLog)
		return strings.Count(string(data), s)
	}
	ok, failed := count("Loading success"), count("Loading failure")
	master := b.setupByName(setupHAProxy).proc.pgid()
	if err := syscall.Kill(master, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("SIGUSR2 haproxy %d: %w", master, err)
	}
	var errFailed = errors.New("haproxy logged a loading failure")
	var result error
	err := waitUntil(ctx, 30*time.Second, func() bool {
		if count("Loading failure") > failed {
			result = errFailed
			return true
		}
		return count("Loading success") > ok
	})
	if err != nil {
		return err
	}
	return result
}

// reloadNginx sends SIGHUP to the master and waits for a worker that was
// not there before; old workers finish their connections meanwhile.
func (b *bench) reloadNginx(ctx context.Context) error {
	master := b.setupByName(setupNginx).proc.pgid()
	old := map[int]bool{}
	for _, c := range childrenOf(master) {
		old[c.pid] = true
	}
	if err := syscall.Kill(master, syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP nginx %d: %w", master, err)
	}
	return waitUntil(ctx, 30*time.Second, func() bool {
		for _, c := range childrenOf(master) {
			if !old[c.pid] && cmdline(c.pid) == "nginx: worker process" {
				return true
			}
		}
		return false
	})
}

func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// waitUntil polls cond every 5 ms until it holds, timeout passes or ctx ends.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s", timeout)
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
