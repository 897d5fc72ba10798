package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// batonBin is the baton binary built once for the end-to-end tests (with
// -race when the tests run with it). tableflip re-executes os.Args[0], so
// it must be a real file, not `go run`.
var batonBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "baton-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	batonBin = filepath.Join(dir, "baton")
	args := []string{"build", "-o", batonBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building baton: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitFor polls cond every 5 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// batonProc is a baton started by a test, with all its later generations.
type batonProc struct {
	t       testing.TB
	dir     string
	bin     string
	cfgPath string
	logPath string
	pidFile string
	socket  string
	wrap    []string // runs the binary through this command (e.g. a shell)
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

// testEngine is the data plane the batons of a test run (proxy.engine);
// "" leaves the default. BATON_TEST_ENGINE sets it for the whole run;
// forEngines for one test.
var testEngine = os.Getenv("BATON_TEST_ENGINE")

// forEngines runs f once per data plane as subtests (only the one
// BATON_TEST_ENGINE names, if set).
func forEngines(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	engines := []string{"stdlib", "epoll"}
	if e := os.Getenv("BATON_TEST_ENGINE"); e != "" {
		engines = []string{e}
	}
	for _, e := range engines {
		t.Run(e, func(t *testing.T) {
			old := testEngine
			testEngine = e
			defer func() { testEngine = old }()
			f(t)
		})
	}
}

// backendTOML is a [[backend]] section.
func backendTOML(name, url string, extra ...string) string {
	s := fmt.Sprintf("[[backend]]\nname = %q\nurl = %q\nhealth_interval = \"200ms\"\n", name, url)
	for _, e := range extra {
		s += e + "\n"
	}
	return s
}

// batonConfig is a whole configuration: listen on a free loopback port,
// pid file and control socket in dir, then the given sections.
func batonConfig(dir, proxyExtra string, backends ...string) string {
	if testEngine != "" {
		proxyExtra = fmt.Sprintf("engine = %q\n", testEngine) + proxyExtra
	}
	return fmt.Sprintf(`[proxy]
listen = ["127.0.0.1:0"]
drain_timeout = "10s"
hold_timeout = "10s"
%s

[control]
pid_file = %q
socket = %q

%s`, proxyExtra, filepath.Join(dir, "run", "baton.pid"), filepath.Join(dir, "run", "baton.sock"), strings.Join(backends, "\n"))
}

// newBaton prepares a directory and a configuration, without starting.
func newBaton(t testing.TB, cfg func(dir string) string) *batonProc {
	t.Helper()
	dir := t.TempDir()
	b := &batonProc{
		t: t, dir: dir, bin: batonBin,
		cfgPath: filepath.Join(dir, "baton.toml"),
		logPath: filepath.Join(dir, "baton.log"),
		pidFile: filepath.Join(dir, "run", "baton.pid"),
		socket:  filepath.Join(dir, "run", "baton.sock"),
	}
	b.writeConfig(cfg(dir))
	return b
}

// startBaton starts baton and waits until it serves.
func startBaton(t testing.TB, cfg func(dir string) string) *batonProc {
	t.Helper()
	b := newBaton(t, cfg)
	b.start()
	return b
}

func (b *batonProc) writeConfig(text string) {
	b.t.Helper()
	if err := os.WriteFile(b.cfgPath, []byte(text), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *batonProc) start() {
	t := b.t
	t.Helper()
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{b.bin, "run", "--config", b.cfgPath}
	if len(b.wrap) > 0 {
		args = append(append([]string{}, b.wrap...), args...)
	}
	b.cmd = exec.Command(args[0], args[1:]...)
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	b.cmd.Env = append(os.Environ(), "GORACE=halt_on_error=0 exitcode=66")
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	b.exited = make(chan struct{})
	go func() {
		b.exitErr = b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(b.cleanup)
	waitFor(t, 20*time.Second, "baton to serve", func() bool {
		select {
		case <-b.exited:
			t.Fatalf("baton exited at start: %v\n%s", b.exitErr, b.log())
		default:
		}
		st, err := b.tryStatus()
		return err == nil && st.PID == b.cmd.Process.Pid
	})
	if st := b.status(); testEngine != "" && st.Engine != testEngine {
		t.Fatalf("status engine: got %q, want %q", st.Engine, testEngine)
	}
}

// processes lists every baton process running this test's configuration.
func (b *batonProc) processes() []int { return backendtest.Processes(b.cfgPath) }

func (b *batonProc) cleanup() {
	for _, p := range backendtest.Terminate(b.cfgPath, 20*time.Second) {
		b.t.Errorf("baton pid %d did not stop within 20s of SIGTERM; killed it", p)
	}
	log := b.log()
	if strings.Contains(log, "DATA RACE") {
		b.t.Errorf("the race detector found a race in baton:\n%s", log)
	}
	if strings.Contains(log, "panic:") {
		b.t.Errorf("baton panicked:\n%s", log)
	}
	if b.t.Failed() {
		b.t.Logf("baton log:\n%s", tail(log, 12000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func (b *batonProc) log() string {
	out, _ := os.ReadFile(b.logPath)
	return string(out)
}

func (b *batonProc) pid() int {
	s, err := os.ReadFile(b.pidFile)
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(s)))
	return p
}

func (b *batonProc) tryStatus() (control.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := control.Do(ctx, b.socket, control.Request{Cmd: control.CmdStatus})
	if err != nil {
		return control.Status{}, err
	}
	if resp.Status == nil {
		return control.Status{}, fmt.Errorf("no status: %s", resp.Error)
	}
	return *resp.Status, nil
}

// waitStatus polls the control socket until cond holds for the status it
// answers, or d passes.
func (b *batonProc) waitStatus(d time.Duration, what string, cond func(control.Status) bool) {
	b.t.Helper()
	waitFor(b.t, d, what, func() bool {
		st, err := b.tryStatus()
		return err == nil && cond(st)
	})
}

func (b *batonProc) status() control.Status {
	b.t.Helper()
	st, err := b.tryStatus()
	if err != nil {
		b.t.Fatalf("status: %v", err)
	}
	return st
}

// addr is the address baton serves on (it listens on port 0).
func (b *batonProc) addr() string {
	b.t.Helper()
	st := b.status()
	if len(st.Listeners) == 0 {
		b.t.Fatal("status lists no listeners")
	}
	return st.Listeners[0]
}

// ctl runs `baton ctl --socket S args...`.
func (b *batonProc) ctl(args ...string) (stdout, stderr string, code int) {
	b.t.Helper()
	return runBaton(b.t, append([]string{"ctl", "--socket", b.socket}, args...)...)
}

// runBaton runs the baton binary to completion.
func runBaton(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, batonBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("baton %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return o.String(), e.String(), code
}

func (b *batonProc) signal(sig syscall.Signal) {
	b.t.Helper()
	p := b.pid()
	if p == 0 {
		b.t.Fatal("no pid in the pid file")
	}
	if err := syscall.Kill(p, sig); err != nil {
		b.t.Fatalf("kill -%d %d: %v", sig, p, err)
	}
}

// waitNewPID waits until the pid file names a process other than old that
// answers on the control socket, and returns it.
func (b *batonProc) waitNewPID(old int) int {
	b.t.Helper()
	var pid int
	waitFor(b.t, 30*time.Second, fmt.Sprintf("a new baton to replace pid %d", old), func() bool {
		pid = b.pid()
		if pid == 0 || pid == old {
			return false
		}
		st, err := b.tryStatus()
		return err == nil && st.PID == pid && !st.Draining
	})
	return pid
}

// copyFile copies src to dst with mode.
func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// needTool skips t when a real client is missing, or fails it under
// CI=true, where every tool must be installed (make deps-test).
func needTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (Debian package %s; CI=true: this is a failure)", name, pkg)
		}
		t.Skipf("%s not found (Debian package %s)", name, pkg)
	}
}
