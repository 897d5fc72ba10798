package handoff

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-multierror"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultUpgradeTimeout = 30 * time.Second
	DefaultDrainTimeout   = 30 * time.Second
)

// Options configure a Handoff. The zero value is usable.
type Options struct {
	// PIDFile, if set, is written (atomically) when the process is ready
	// and removed at a final stop if it still names this process.
	PIDFile string
	// UpgradeTimeout bounds how long a new process may take to become
	// ready before it is killed and the upgrade fails. Default 30s.
	UpgradeTimeout time.Duration
	// DrainTimeout bounds how long an old process finishes its connections
	// after it stopped accepting; what is left is then closed. Default 30s.
	DrainTimeout time.Duration
	// Logger receives signals and upgrade outcomes; nil discards them.
	Logger *slog.Logger
	// OnUpgrade, if set, is called with the outcome of every upgrade this
	// process started (err nil: it succeeded), from the upgrade goroutine.
	OnUpgrade func(res UpgradeResult, err error)
}

// Errors returned by Upgrade.
var (
	ErrUpgradeInProgress = errors.New("handoff: upgrade in progress")
	ErrReplaced          = errors.New("handoff: this process has been replaced by a newer one")
	ErrStopping          = errors.New("handoff: this process is stopping")
)

// Names of the files passed from one generation to the next.
const helloFile = "baton.handoff"

// UpgradeResult describes a successful upgrade.
type UpgradeResult struct {
	PID        int           `json:"pid"`        // the new process
	Generation int           `json:"generation"` // the new process's generation
	Waited     time.Duration `json:"waited_ns"`  // for the previous generation to let go
	Took       time.Duration `json:"took_ns"`    // from request to the new process being ready
	Coalesced  int           `json:"coalesced"`  // further SIGHUPs folded into this upgrade
}

// Handoff owns the process's tableflip.Upgrader, its listening sockets,
// its PID file, the signals SIGHUP/SIGTERM/SIGINT and the drain deadline.
// One goroutine runs upgrades, so at most one is in progress.
type Handoff struct {
	opts    Options
	upg     upgrader
	log     *slog.Logger
	gen     int
	started time.Time

	parent    net.Conn // to the previous generation; nil in the first
	parentPID int

	reqC      chan upgradeRequest
	closeC    chan struct{}
	closeOnce sync.Once
	doneC     chan struct{}
	sigC      chan os.Signal

	// Ready and a Stop before it are ordered by readyMu: a process with a
	// parent that stops before it is ready owns nothing but what it
	// created itself (see Stop).
	readyMu   sync.Mutex
	ready     bool     // Ready succeeded
	abandoned bool     // stopped before Ready, with a parent
	created   []string // unix socket paths this process created (not inherited)
	abandonC  chan struct{}
	exitC     chan struct{} // Exit: closed when tableflip's is, or when abandoned
	exitDone  chan struct{} // watchExit has returned

	upgrading atomic.Bool
	stopping  atomic.Bool
	replaced  atomic.Bool
	drainCut  atomic.Bool
	lastErr   atomic.Pointer[string]
}

type upgradeRequest struct {
	source string // "SIGHUP" or "ctl"
	reply  chan upgradeReply
}

type upgradeReply struct {
	res UpgradeResult
	err error
}

type helloMsg struct {
	Generation int       `json:"generation"`
	ParentPID  int       `json:"parent_pid"`
	Started    time.Time `json:"started"`
}

type reportMsg struct {
	PID        int    `json:"pid,omitempty"`
	Generation int    `json:"generation,omitempty"`
	Error      string `json:"error,omitempty"`
}

// New creates the process's Handoff. Only one may exist per process
// (tableflip's rule). Listen, AddFile and File must be called before Ready.
func New(opts Options) (*Handoff, error) {
	return newHandoff(opts, newTableflipUpgrader)
}

// newHandoff is New with the process seam: newUpg makes the upgrader.
func newHandoff(opts Options, newUpg func(Options) (upgrader, error)) (*Handoff, error) {
	if opts.UpgradeTimeout <= 0 {
		opts.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	upg, err := newUpg(opts)
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	h := &Handoff{
		opts: opts, upg: upg, log: log, gen: 1, started: time.Now(),
		reqC: make(chan upgradeRequest), closeC: make(chan struct{}), doneC: make(chan struct{}),
		sigC:     make(chan os.Signal, 4),
		abandonC: make(chan struct{}), exitC: make(chan struct{}), exitDone: make(chan struct{}),
	}
	if upg.HasParent() {
		if err := h.readHello(); err != nil {
			upg.Stop()
			return nil, err
		}
	}
	signal.Notify(h.sigC, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	go h.run()
	go h.watchExit()
	return h, nil
}

// watchExit closes Exit when tableflip's exit channel closes, or when a
// process that never became ready stops without calling tableflip's Stop
// (see Stop). It returns at Close.
func (h *Handoff) watchExit() {
	defer close(h.exitDone)
	select {
	case <-h.upg.Exit():
	case <-h.abandonC:
	case <-h.closeC:
		return
	}
	close(h.exitC)
}

func (h *Handoff) readHello() error {
	f, err := h.upg.File(helloFile)
	if err != nil || f == nil {
		return fmt.Errorf("handoff: no %s from the previous generation: %v", helloFile, err)
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("handoff: %s: %w", helloFile, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	_ = c.SetReadDeadline(time.Time{})
	var m helloMsg
	if err == nil {
		err = json.Unmarshal(line, &m)
	}
	if err != nil {
		c.Close()
		return fmt.Errorf("handoff: reading hello from the previous generation: %w", err)
	}
	h.parent, h.gen, h.parentPID = c, m.Generation, m.ParentPID
	return nil
}

// Generation is 1 for a process started from scratch and one more than its
// predecessor's for an upgraded one.
func (h *Handoff) Generation() int { return h.gen }

// Started is when this process started.
func (h *Handoff) Started() time.Time { return h.started }

// HasParent reports whether this process is the result of an upgrade.
func (h *Handoff) HasParent() bool { return h.upg.HasParent() }

// Upgrading reports whether an upgrade is under way.
func (h *Handoff) Upgrading() bool { return h.upgrading.Load() }

// Draining reports whether this process has stopped accepting: it was
// replaced or told to stop.
func (h *Handoff) Draining() bool { return h.replaced.Load() || h.stopping.Load() }

// Stopping reports whether a final stop has begun (SIGTERM, SIGINT, Stop):
// this process will not be replaced. An upgrade never sets it.
func (h *Handoff) Stopping() bool { return h.stopping.Load() }

// DrainCut reports whether the drain deadline has passed: what is still
// open is being closed.
func (h *Handoff) DrainCut() bool { return h.drainCut.Load() }

// LastUpgradeError is the reason the last upgrade failed, or "".
func (h *Handoff) LastUpgradeError() string {
	if p := h.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// Listen returns the listener for network and address inherited from the
// previous generation, or a new one. Unix sockets get their directory
// created, a stale socket file replaced and mode 0600.
func (h *Handoff) Listen(network, addr string) (net.Listener, error) {
	ln, err := h.upg.Listener(network, addr)
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	if ln != nil {
		return ln, nil
	}
	if network == "unix" {
		if err := prepareUnixSocket(addr); err != nil {
			return nil, err
		}
	}
	var lerr error
	ln, err = h.upg.ListenWithCallback(network, addr, func(network, addr string) (net.Listener, error) {
		l, err := net.Listen(network, addr)
		lerr = err // tableflip's own wrapping drops the chain
		return l, err
	})
	if err != nil {
		if lerr != nil {
			return nil, lerr
		}
		return nil, fmt.Errorf("handoff: %w", err)
	}
	if network == "unix" {
		h.readyMu.Lock()
		h.created = append(h.created, addr)
		h.readyMu.Unlock()
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("handoff: chmod %s: %w", addr, err)
		}
	}
	return ln, nil
}

// prepareUnixSocket creates the socket's directory and removes a socket
// file nobody listens on any more: only one whose connect is refused. A
// connect that times out or finds the backlog full (EAGAIN) meets a live
// listener that is busy, whose file is not ours to remove.
func prepareUnixSocket(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("handoff: socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("handoff: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("handoff: %s: another process is listening there", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("handoff: %s: not removing a socket that may be in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("handoff: removing stale socket: %w", err)
	}
	return nil
}

// File returns a file passed by the previous generation under name, or nil.
func (h *Handoff) File(name string) (*os.File, error) {
	f, err := h.upg.File(name)
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited file %s: %w", name, err)
	}
	return f, nil
}

// AddFile passes f to every later generation under name.
func (h *Handoff) AddFile(name string, f *os.File) error {
	if err := h.upg.AddFile(name, f); err != nil {
		return fmt.Errorf("handoff: pass file %s: %w", name, err)
	}
	return nil
}

// Ready writes the PID file, tells the previous generation (which then
// stops accepting and drains) and systemd that this process serves. After
// Stop it fails with ErrStopping.
func (h *Handoff) Ready() error {
	h.readyMu.Lock()
	defer h.readyMu.Unlock()
	if h.abandoned {
		return ErrStopping
	}
	if h.opts.PIDFile != "" {
		if err := writePIDFile(h.opts.PIDFile, os.Getpid()); err != nil {
			return err
		}
	}
	h.report(reportMsg{PID: os.Getpid(), Generation: h.gen})
	if err := h.upg.Ready(); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	h.ready = true
	if h.parent != nil {
		h.parent.Close()
	}
	_, _ = daemon.SdNotify(false, fmt.Sprintf("READY=1\nMAINPID=%d", os.Getpid()))
	return nil
}

// Fail tells the previous generation why this process will not become
// ready; the upgrade it asked for then fails with this reason.
func (h *Handoff) Fail(err error) {
	h.report(reportMsg{Error: err.Error()})
}

func (h *Handoff) report(m reportMsg) {
	if h.parent == nil {
		return
	}
	b, _ := json.Marshal(m)
	_ = h.parent.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = h.parent.Write(append(b, '\n'))
}

// Exit is closed when this process should stop serving: an upgrade
// succeeded or Stop was called. Then call Shutdown.
func (h *Handoff) Exit() <-chan struct{} { return h.exitC }

// Stop starts a final stop: no more upgrades; Exit is closed.
//
// A process started by an upgrade that stops before it is ready (it
// failed) removes nothing it does not own: the previous generation still
// serves on the sockets it inherited, the control socket among them, and
// owns the PID file. So it does not call tableflip's Stop, which before a
// successful upgrade unlinks every unix socket in use, inherited ones
// included (Issue 7: a failed upgrade deleted the control socket file of
// the serving process); it removes only the unix sockets it created
// itself. It writes no PID file (Ready fails after Stop).
func (h *Handoff) Stop() {
	h.readyMu.Lock()
	abandon := h.upg.HasParent() && !h.ready
	first := abandon && !h.abandoned
	if abandon {
		h.abandoned = true
	}
	created := h.created
	h.readyMu.Unlock()
	if abandon {
		if first {
			h.stopping.Store(true)
			h.log.Info("stopping before becoming ready; the previous generation keeps its sockets and PID file")
			for _, p := range created {
				if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
					_ = os.Remove(p)
				}
			}
			close(h.abandonC)
		}
		return
	}
	if h.stopping.CompareAndSwap(false, true) {
		h.log.Info("stopping: draining connections", "drain_timeout", h.opts.DrainTimeout)
		_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	}
	h.upg.Stop()
}

// Upgrade starts a new process from the same binary path and waits until
// it is ready (the result names it) or has failed (the error says why:
// its configuration error, its crash, the upgrade timeout). An upgrade
// requested while one is running gets ErrUpgradeInProgress; one requested
// while the previous generation still holds sockets waits for it (bounded
// by DrainTimeout) and says how long in the result.
func (h *Handoff) Upgrade(ctx context.Context) (UpgradeResult, error) {
	req := upgradeRequest{source: "ctl", reply: make(chan upgradeReply, 1)}
	select {
	case h.reqC <- req:
	case <-h.closeC:
		return UpgradeResult{}, ErrStopping
	case <-ctx.Done():
		return UpgradeResult{}, ctx.Err()
	}
	select {
	case r := <-req.reply:
		return r.res, r.err
	case <-ctx.Done():
		return UpgradeResult{}, fmt.Errorf("handoff: stopped waiting for the upgrade: %w", ctx.Err())
	}
}

// run is the one goroutine that starts upgrades and handles signals.
func (h *Handoff) run() {
	defer close(h.doneC)
	defer signal.Stop(h.sigC)
	var (
		waiters []upgradeRequest
		resultC chan upgradeReply
	)
	start := func(req upgradeRequest) {
		waiters = []upgradeRequest{req}
		resultC = make(chan upgradeReply, 1)
		h.upgrading.Store(true)
		h.log.Info("upgrade requested", "by", req.source, "generation", h.gen)
		go func(c chan<- upgradeReply) { c <- h.doUpgrade() }(resultC)
	}
	refuse := func() error {
		switch {
		case h.replaced.Load():
			return ErrReplaced
		case h.stopping.Load():
			return ErrStopping
		}
		return nil
	}
	for {
		select {
		case <-h.closeC:
			return
		case sig := <-h.sigC:
			switch sig {
			case syscall.SIGHUP:
				switch {
				case refuse() != nil:
					h.log.Warn("SIGHUP ignored", "reason", refuse())
				case resultC != nil:
					waiters = append(waiters, upgradeRequest{source: "SIGHUP"})
					h.log.Info("SIGHUP coalesced with the upgrade in progress")
				default:
					start(upgradeRequest{source: "SIGHUP"})
				}
			default:
				h.log.Info("signal received", "signal", sig.String())
				h.Stop()
			}
		case req := <-h.reqC:
			switch {
			case refuse() != nil:
				req.reply <- upgradeReply{err: refuse()}
			case resultC != nil:
				req.reply <- upgradeReply{err: ErrUpgradeInProgress}
			default:
				start(req)
			}
		case r := <-resultC:
			resultC = nil
			h.upgrading.Store(false)
			r.res.Coalesced = len(waiters) - 1
			if h.opts.OnUpgrade != nil {
				h.opts.OnUpgrade(r.res, r.err)
			}
			if r.err == nil {
				h.replaced.Store(true)
				h.log.Info("upgrade done: new process is serving", "new_pid", r.res.PID, "new_generation", r.res.Generation,
					"took", r.res.Took.Round(time.Microsecond), "waited_for_previous", r.res.Waited.Round(time.Microsecond), "coalesced", r.res.Coalesced)
			} else {
				msg := r.err.Error()
				h.lastErr.Store(&msg)
				h.log.Error("upgrade failed: still serving", "err", r.err)
			}
			for _, w := range waiters {
				if w.reply != nil {
					w.reply <- r
				}
			}
			waiters = nil
		}
	}
}

func (h *Handoff) doUpgrade() upgradeReply {
	t0 := time.Now()
	var res UpgradeResult
	if h.upg.HasParent() {
		// Until the previous generation lets go (it does once it stopped
		// accepting, see releaseSuccessor), tableflip refuses to upgrade.
		ctx, cancel := context.WithTimeout(context.Background(), h.opts.DrainTimeout+5*time.Second)
		err := h.upg.WaitForParent(ctx)
		timedOut := ctx.Err() != nil
		cancel()
		res.Waited = time.Since(t0)
		if timedOut {
			return upgradeReply{err: fmt.Errorf("handoff: previous generation (pid %d) still holds the upgrade after %s", h.parentPID, res.Waited.Round(time.Millisecond))}
		}
		_ = err // a parent that misbehaved while exiting is no reason not to upgrade
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return upgradeReply{err: fmt.Errorf("handoff: socketpair: %w", err)}
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "handoff-parent"), os.NewFile(uintptr(fds[1]), "handoff-child")
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return upgradeReply{err: fmt.Errorf("handoff: %w", err)}
	}
	defer conn.Close()
	hello, _ := json.Marshal(helloMsg{Generation: h.gen + 1, ParentPID: os.Getpid(), Started: time.Now()})
	_, err = conn.Write(append(hello, '\n'))
	if err == nil {
		err = h.AddFile(helloFile, theirs)
	}
	theirs.Close()
	if err != nil {
		return upgradeReply{err: fmt.Errorf("handoff: %w", err)}
	}

	_, _ = daemon.SdNotify(false, daemon.SdNotifyReloading)
	err = h.upg.Upgrade()
	if err == nil {
		// Exit is about to close; Shutdown must know it was this.
		h.replaced.Store(true)
	}
	msgs := readReports(conn, err == nil)
	if err != nil {
		_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
		h.reclaimPIDFile()
		for i := len(msgs) - 1; i >= 0; i-- {
			if msgs[i].Error != "" {
				return upgradeReply{err: fmt.Errorf("handoff: upgrade failed: new process: %s", msgs[i].Error)}
			}
		}
		return upgradeReply{err: fmt.Errorf("handoff: upgrade failed: %w", err)}
	}
	for _, m := range msgs {
		if m.PID != 0 {
			res.PID, res.Generation = m.PID, m.Generation
		}
	}
	res.Took = time.Since(t0)
	return upgradeReply{res: res}
}

// readReports reads what the new process said. After a success its PID is
// already there; after a failure whatever it wrote before dying is buffered.
func readReports(c net.Conn, success bool) []reportMsg {
	wait := 200 * time.Millisecond
	if success {
		wait = 2 * time.Second
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	var out []reportMsg
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var m reportMsg
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
			if success && m.PID != 0 {
				break
			}
		}
	}
	return out
}

// reclaimPIDFile makes the PID file name this process again after a failed
// upgrade: the new process may have written it before it died or was
// killed at the upgrade timeout.
func (h *Handoff) reclaimPIDFile() {
	if h.opts.PIDFile == "" {
		return
	}
	if pid, err := readPIDFile(h.opts.PIDFile); err == nil && pid == os.Getpid() {
		return
	}
	if err := writePIDFile(h.opts.PIDFile, os.Getpid()); err != nil {
		h.log.Error("could not restore the PID file after a failed upgrade", "err", err)
	}
}

// Drainer is a server that can stop accepting and then finish its
// connections.
type Drainer interface {
	// StopAccepting closes the server's listeners; it must not block.
	StopAccepting()
	// Drain waits for the server's connections to finish and closes the
	// rest when ctx ends.
	Drain(ctx context.Context) error
}

// Shutdown is what a process does once Exit is closed: every server stops
// accepting, the next generation is let go (so it can upgrade again while
// this one drains), and the servers drain concurrently until DrainTimeout.
// At a final stop the PID file is removed and idle keep-alive connections
// are closed at once (Server.CloseIdle). It returns every server's error.
func (h *Handoff) Shutdown(servers ...Drainer) error {
	for _, s := range servers {
		s.StopAccepting()
	}
	// An upgrade that just succeeded closes Exit before the run loop has
	// taken its result; wait for that so the outcome is known.
	settle := time.Now().Add(h.opts.UpgradeTimeout + 5*time.Second)
	for h.upgrading.Load() && time.Now().Before(settle) {
		time.Sleep(time.Millisecond)
	}
	final := !h.replaced.Load()
	if final {
		h.removePIDFile()
		// No successor: idle clients gain nothing from waiting.
		for _, s := range servers {
			if ic, ok := s.(interface{ CloseIdle() }); ok {
				ic.CloseIdle()
			}
		}
	} else if err := h.upg.release(); err != nil {
		h.log.Warn("next generation must wait for this one to exit before upgrading again", "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.DrainTimeout)
	defer cancel()
	stopCut := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			h.drainCut.Store(true)
		}
	})
	defer stopCut()
	var g multierror.Group
	for _, s := range servers {
		g.Go(func() error { return s.Drain(ctx) })
	}
	return g.Wait().ErrorOrNil()
}

// DrainTimeout is the configured bound on draining.
func (h *Handoff) DrainTimeout() time.Duration { return h.opts.DrainTimeout }

func (h *Handoff) removePIDFile() {
	if h.opts.PIDFile == "" {
		return
	}
	if pid, err := readPIDFile(h.opts.PIDFile); err == nil && pid == os.Getpid() {
		_ = os.Remove(h.opts.PIDFile)
	}
}

// Close stops the signal loop. Call it last.
func (h *Handoff) Close() {
	h.closeOnce.Do(func() { close(h.closeC) })
	<-h.doneC
	<-h.exitDone
}
