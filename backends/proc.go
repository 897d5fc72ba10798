package backends

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func sigName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return s.String()
}

// pollInterval is how often baton looks at PID files and processes it does
// not own (it cannot wait(2) for them).
const pollInterval = 5 * time.Millisecond

// CheckPIDFile reads c's PID file and checks that it names a live process
// that is c's server, the one a restart would signal (see verifyProcess:
// not a baton, the expected executable, listening on c's address). The
// error is ErrNotRunning when no server runs.
func CheckPIDFile(c Config) (int, error) {
	pid, err := readPID(c.PIDFile)
	if err != nil {
		return pid, err
	}
	if err := verifyProcess(c, pid, nil); err != nil {
		return pid, err
	}
	return pid, nil
}

// ErrNotRunning is in the error of CheckPIDFile (errors.Is) when the PID
// file is missing or empty or names no live process: the server is down
// right now, which is not a mistake in the configuration (`baton check`
// warns). A PID file that names a live process that is not the server is
// a different error.
var ErrNotRunning = errors.New("server not running")

// notRunning is an error that says why the server is not running, and is
// ErrNotRunning.
type notRunning struct{ error }

func (e notRunning) Is(target error) bool { return target == ErrNotRunning }
func (e notRunning) Unwrap() error        { return e.error }

// readPID reads a PID file and checks that it names a live process.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, notRunning{fmt.Errorf("pid file %s does not exist (is the server running?)", path)}
	}
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		// A server writing it, or one that died while it did.
		return 0, notRunning{fmt.Errorf("pid file %s is empty", path)}
	}
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: %q is not a PID", path, s)
	}
	if !alive(pid) {
		return pid, notRunning{fmt.Errorf("pid file %s names pid %d, which is not running", path, pid)}
	}
	return pid, nil
}

// alive reports whether pid is a running process (not a zombie).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesised command name, which may contain spaces.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}

// children lists pid's child processes.
func children(pid int) (map[int]bool, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out[c] = true
			}
		}
	}
	return out, nil
}

// poll calls cond every pollInterval until it returns true or ctx ends.
func poll(ctx context.Context, cond func() bool) error {
	if cond() {
		return nil
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if cond() {
				return nil
			}
		}
	}
}

// command is a process baton started for a backend.
type command struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the process has been reaped
	err     error         // valid after exited
}

// startCommand starts argv in its own session, so it outlives this baton
// process and its signals. Output goes to logPath (truncated), which stays
// there for the operator to read.
func startCommand(argv []string, logPath string) (*command, error) {
	if len(argv) == 0 {
		return nil, errors.New("empty command")
	}
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("output file: %w", err)
	}
	defer out.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	c := &command{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	// The reaper ends when the process does. For a daemonizing command that
	// is at once; for a server run in the foreground it is when the server
	// exits, or never in this process, which is fine: it holds no state.
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// failure describes a finished command that did not succeed, with the tail
// of its output.
func (c *command) failure() error {
	if c.err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w%s", strings.Join(c.cmd.Args, " "), c.err, outputTail(c.logPath))
}

// kill ends the command's whole session (restart commands only: a start
// command may have become the server).
func (c *command) kill() {
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
}

func outputTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	b = bytes.TrimSpace(b)
	if len(b) > 300 {
		b = append([]byte("..."), b[len(b)-300:]...)
	}
	return ": " + strings.Join(strings.Fields(string(b)), " ")
}
