package handoff

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The upgrade state machine, tested with a fake next process (the
// upgrader seam), as tableflip tests its own with a fake process. The real
// re-exec is tested end to end with the built binary in cmd/baton.

// fakeUpgrader stands in for tableflip: Upgrade runs next, which plays the
// next process on the hello socket the Handoff passed to it.
type fakeUpgrader struct {
	hasParent  bool
	parentC    chan struct{} // WaitForParent returns once it is closed
	parentHold time.Duration // or after this long

	mu        sync.Mutex
	files     map[string]*os.File     // added for the next process
	inherited map[string]*os.File     // passed by the previous one
	listeners map[string]net.Listener // inherited listeners by address
	next      func(hello net.Conn) error
	upgrades  int
	ready     bool
	stopped   bool
	released  int

	exitC    chan struct{}
	exitOnce sync.Once
}

func newFake() *fakeUpgrader {
	return &fakeUpgrader{
		parentC: make(chan struct{}), files: map[string]*os.File{}, inherited: map[string]*os.File{},
		listeners: map[string]net.Listener{}, exitC: make(chan struct{}),
	}
}

func (f *fakeUpgrader) HasParent() bool { return f.hasParent }

func (f *fakeUpgrader) WaitForParent(ctx context.Context) error {
	var held <-chan time.Time
	if f.parentHold > 0 {
		held = time.After(f.parentHold)
	}
	select {
	case <-held:
		return nil
	case <-f.parentC:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeUpgrader) Upgrade() error {
	f.mu.Lock()
	f.upgrades++
	hello, next := f.files[helloFile], f.next
	delete(f.files, helloFile)
	f.mu.Unlock()
	if hello == nil {
		return errors.New("fake: no hello file")
	}
	c, err := net.FileConn(hello)
	hello.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := next(c); err != nil {
		return err
	}
	f.exitOnce.Do(func() { close(f.exitC) })
	return nil
}

func (f *fakeUpgrader) Ready() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ready = true
	return nil
}

func (f *fakeUpgrader) Stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.exitOnce.Do(func() { close(f.exitC) })
}

func (f *fakeUpgrader) Exit() <-chan struct{} { return f.exitC }

func (f *fakeUpgrader) release() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released++
	return nil
}

func (f *fakeUpgrader) Listener(network, addr string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listeners[network+":"+addr], nil
}

func (f *fakeUpgrader) ListenWithCallback(network, addr string, cb func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	return cb(network, addr)
}

func (f *fakeUpgrader) File(name string) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inherited[name], nil
}

func (f *fakeUpgrader) AddFile(name string, file *os.File) error {
	dup, err := dupFile(file)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.files[name]; old != nil {
		old.Close()
	}
	f.files[name] = dup
	return nil
}

func (f *fakeUpgrader) count() (upgrades, released int, stopped bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.upgrades, f.released, f.stopped
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// readHelloFrom is the next process reading its hello.
func readHelloFrom(t *testing.T, c net.Conn) helloMsg {
	t.Helper()
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Errorf("next process: reading hello: %v", err)
		return helloMsg{}
	}
	var m helloMsg
	if err := json.Unmarshal(line, &m); err != nil {
		t.Errorf("next process: hello %q: %v", line, err)
	}
	return m
}

func say(c net.Conn, m reportMsg) {
	b, _ := json.Marshal(m)
	_, _ = c.Write(append(b, '\n'))
}

// readyChild is a next process that becomes ready as pid.
func readyChild(t *testing.T, pid int) func(net.Conn) error {
	return func(c net.Conn) error {
		m := readHelloFrom(t, c)
		say(c, reportMsg{PID: pid, Generation: m.Generation})
		return nil
	}
}

type fakeDrainer struct {
	mu                       sync.Mutex
	stopped, drained, closed int
}

func (d *fakeDrainer) StopAccepting() { d.mu.Lock(); d.stopped++; d.mu.Unlock() }
func (d *fakeDrainer) Drain(ctx context.Context) error {
	d.mu.Lock()
	d.drained++
	d.mu.Unlock()
	return nil
}
func (d *fakeDrainer) CloseIdle() { d.mu.Lock(); d.closed++; d.mu.Unlock() }

func newTestHandoff(t *testing.T, fake *fakeUpgrader, opts Options) *Handoff {
	t.Helper()
	h, err := newHandoff(opts, func(Options) (upgrader, error) { return fake, nil })
	if err != nil {
		t.Fatalf("newHandoff: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// waitUntil polls cond every millisecond for up to 5 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestUpgradeSucceeds(t *testing.T) {
	fake := newFake()
	fake.next = readyChild(t, 4242)
	pidFile := filepath.Join(t.TempDir(), "baton.pid")
	var outcomes []error
	var outMu sync.Mutex
	h := newTestHandoff(t, fake, Options{PIDFile: pidFile, OnUpgrade: func(_ UpgradeResult, err error) {
		outMu.Lock()
		outcomes = append(outcomes, err)
		outMu.Unlock()
	}})
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	res, err := h.Upgrade(context.Background())
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if res.PID != 4242 || res.Generation != 2 {
		t.Errorf("result names pid %d generation %d, want 4242 and 2", res.PID, res.Generation)
	}
	waitUntil(t, "Exit to close after a successful upgrade", func() bool { return closed(h.Exit()) })
	if !h.Draining() || h.Stopping() {
		t.Errorf("Draining %v Stopping %v, want true false", h.Draining(), h.Stopping())
	}
	if _, err := h.Upgrade(context.Background()); !errors.Is(err, ErrReplaced) {
		t.Errorf("a second upgrade: got %v, want ErrReplaced", err)
	}
	d := &fakeDrainer{}
	if err := h.Shutdown(d); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, released, _ := fake.count(); released != 1 {
		t.Errorf("successor released %d times, want 1", released)
	}
	if d.stopped != 1 || d.drained != 1 || d.closed != 0 {
		t.Errorf("drainer: stopped %d drained %d idle closed %d, want 1 1 0 (a successor serves: no CloseIdle)", d.stopped, d.drained, d.closed)
	}
	if got, err := readPIDFile(pidFile); err != nil || got != os.Getpid() {
		t.Errorf("PID file after handing over: %d, %v; an old process leaves it to the new one", got, err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	if len(outcomes) != 1 || outcomes[0] != nil {
		t.Errorf("OnUpgrade outcomes %v, want one success", outcomes)
	}
}

func TestUpgradeFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		next func(t *testing.T, pidFile string) func(net.Conn) error
		want string
	}{
		{"config error", func(t *testing.T, pidFile string) func(net.Conn) error {
			return func(c net.Conn) error {
				readHelloFrom(t, c)
				say(c, reportMsg{Error: "baton.toml: proxy.listen: no address"})
				return errors.New("child exited: exit status 1")
			}
		}, "upgrade failed: new process: baton.toml: proxy.listen: no address"},
		{"crash after writing the PID file", func(t *testing.T, pidFile string) func(net.Conn) error {
			return func(c net.Conn) error {
				readHelloFrom(t, c)
				if err := writePIDFile(pidFile, 999999); err != nil {
					t.Error(err)
				}
				return errors.New("child exited: signal: segmentation fault")
			}
		}, "upgrade failed: child exited: signal: segmentation fault"},
		{"timeout", func(t *testing.T, pidFile string) func(net.Conn) error {
			return func(c net.Conn) error { return errors.New("new child timed out") }
		}, "upgrade failed: new child timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			pidFile := filepath.Join(t.TempDir(), "baton.pid")
			fake.next = tc.next(t, pidFile)
			h := newTestHandoff(t, fake, Options{PIDFile: pidFile})
			if err := h.Ready(); err != nil {
				t.Fatal(err)
			}
			_, err := h.Upgrade(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Upgrade: got %v, want %q", err, tc.want)
			}
			if got := h.LastUpgradeError(); got != err.Error() {
				t.Errorf("LastUpgradeError %q, want %q", got, err.Error())
			}
			if closed(h.Exit()) || h.Draining() {
				t.Fatal("a failed upgrade closed Exit or started a drain: the old process must serve on")
			}
			if got, err := readPIDFile(pidFile); err != nil || got != os.Getpid() {
				t.Errorf("PID file after the failed upgrade names %d (%v), want this process %d", got, err, os.Getpid())
			}
			// The next upgrade works.
			fake.next = readyChild(t, 4343)
			res, err := h.Upgrade(context.Background())
			if err != nil || res.PID != 4343 {
				t.Fatalf("upgrade after a failed one: %+v, %v", res, err)
			}
		})
	}
}

func TestUpgradeInProgressAndCoalesced(t *testing.T) {
	fake := newFake()
	release := make(chan struct{})
	fake.next = func(c net.Conn) error {
		m := readHelloFrom(t, c)
		<-release
		say(c, reportMsg{PID: 5151, Generation: m.Generation})
		return nil
	}
	h := newTestHandoff(t, fake, Options{})
	type result struct {
		res UpgradeResult
		err error
	}
	first := make(chan result, 1)
	go func() {
		res, err := h.Upgrade(context.Background())
		first <- result{res, err}
	}()
	waitUntil(t, "the upgrade to start", h.Upgrading)
	if _, err := h.Upgrade(context.Background()); !errors.Is(err, ErrUpgradeInProgress) {
		t.Errorf("a concurrent ctl upgrade: got %v, want ErrUpgradeInProgress", err)
	}
	h.sigC <- syscall.SIGHUP
	h.sigC <- syscall.SIGHUP
	// The run loop takes a signal and handles it before it selects again,
	// so an empty channel means both were folded in.
	waitUntil(t, "the SIGHUPs to be taken", func() bool { return len(h.sigC) == 0 })
	close(release)
	r := <-first
	if r.err != nil {
		t.Fatalf("Upgrade: %v", r.err)
	}
	if r.res.Coalesced != 2 {
		t.Errorf("coalesced %d SIGHUPs, want 2", r.res.Coalesced)
	}
	if upgrades, _, _ := fake.count(); upgrades != 1 {
		t.Errorf("%d processes started, want 1", upgrades)
	}
}

func TestStopRefusesUpgrades(t *testing.T) {
	fake := newFake()
	fake.next = readyChild(t, 1)
	pidFile := filepath.Join(t.TempDir(), "baton.pid")
	h := newTestHandoff(t, fake, Options{PIDFile: pidFile})
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	h.sigC <- syscall.SIGTERM
	waitUntil(t, "SIGTERM to close Exit", func() bool { return closed(h.Exit()) })
	if !h.Stopping() {
		t.Error("Stopping is false after SIGTERM")
	}
	if _, err := h.Upgrade(context.Background()); !errors.Is(err, ErrStopping) {
		t.Errorf("upgrade while stopping: got %v, want ErrStopping", err)
	}
	h.sigC <- syscall.SIGHUP
	d := &fakeDrainer{}
	if err := h.Shutdown(d); err != nil {
		t.Fatal(err)
	}
	upgrades, released, stopped := fake.count()
	if upgrades != 0 || released != 0 || !stopped {
		t.Errorf("upgrades %d released %d stopped %v, want 0 0 true", upgrades, released, stopped)
	}
	if d.closed != 1 {
		t.Errorf("idle connections closed %d times, want 1 at a final stop", d.closed)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PID file after a final stop: %v, want removed", err)
	}
}

// childHandoff is a Handoff whose previous generation is the test: it
// returns the test's end of the hello socket.
func childHandoff(t *testing.T, fake *fakeUpgrader, gen, parentPID int, opts Options) (*Handoff, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine := os.NewFile(uintptr(fds[0]), "parent")
	parent, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { parent.Close() })
	b, _ := json.Marshal(helloMsg{Generation: gen, ParentPID: parentPID, Started: time.Now()})
	if _, err := parent.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	fake.hasParent = true
	fake.inherited[helloFile] = os.NewFile(uintptr(fds[1]), "child")
	return newTestHandoff(t, fake, opts), parent
}

func TestNextGenerationReports(t *testing.T) {
	fake := newFake()
	pidFile := filepath.Join(t.TempDir(), "baton.pid")
	h, parent := childHandoff(t, fake, 7, 99, Options{PIDFile: pidFile})
	if h.Generation() != 7 || !h.HasParent() {
		t.Fatalf("generation %d has parent %v, want 7 true", h.Generation(), h.HasParent())
	}
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	_ = parent.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(parent).ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading the report: %v", err)
	}
	var m reportMsg
	if err := json.Unmarshal(line, &m); err != nil || m.PID != os.Getpid() || m.Generation != 7 {
		t.Errorf("report %q (%v), want pid %d generation 7", line, err, os.Getpid())
	}
	if got, err := readPIDFile(pidFile); err != nil || got != os.Getpid() {
		t.Errorf("PID file names %d (%v), want %d", got, err, os.Getpid())
	}
}

func TestAbandonBeforeReady(t *testing.T) {
	dir := t.TempDir()
	inheritedPath, createdPath := filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "new.sock")
	inherited, err := net.Listen("unix", inheritedPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inherited.Close() })
	fake := newFake()
	fake.listeners["unix:"+inheritedPath] = inherited
	pidFile := filepath.Join(dir, "baton.pid")
	if err := writePIDFile(pidFile, 12345); err != nil {
		t.Fatal(err)
	}
	h, parent := childHandoff(t, fake, 3, 12345, Options{PIDFile: pidFile})
	if _, err := h.Listen("unix", inheritedPath); err != nil {
		t.Fatal(err)
	}
	ln, err := h.Listen("unix", createdPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h.Fail(errors.New("baton.toml: backend[0].url: bad"))
	h.Stop()
	waitUntil(t, "Stop to close Exit", func() bool { return closed(h.Exit()) })
	if _, err := os.Stat(createdPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket it created: %v, want removed", err)
	}
	if _, err := os.Stat(inheritedPath); err != nil {
		t.Errorf("the inherited socket file was removed (%v): the serving process still uses it", err)
	}
	if got, _ := readPIDFile(pidFile); got != 12345 {
		t.Errorf("PID file names %d, want the serving process 12345", got)
	}
	if _, _, stopped := fake.count(); stopped {
		t.Error("tableflip's Stop was called: it unlinks inherited unix sockets")
	}
	if err := h.Ready(); !errors.Is(err, ErrStopping) {
		t.Errorf("Ready after Stop: %v, want ErrStopping", err)
	}
	_ = parent.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(parent).ReadBytes('\n')
	if !strings.Contains(string(line), "backend[0].url: bad") {
		t.Errorf("the previous generation was told %q, want the reason", line)
	}
}

func TestUpgradeWaitsForPreviousGeneration(t *testing.T) {
	const hold = 50 * time.Millisecond
	fake := newFake()
	fake.parentHold = hold
	h, _ := childHandoff(t, fake, 2, 77, Options{})
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	fake.next = readyChild(t, 6161)
	res, err := h.Upgrade(context.Background())
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if res.Waited < hold || res.Took < res.Waited {
		t.Errorf("waited %s took %s, want waited >= %s and took >= waited", res.Waited, res.Took, hold)
	}
	if res.Generation != 3 {
		t.Errorf("generation %d, want 3", res.Generation)
	}
}
