package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a server the bench started, in a process group of its own: the
// process group holds everything the server forks (nginx and HAProxy
// workers, every baton generation), so the group is what is measured and
// stopped.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the started process has exited
	waitErr error         // its exit status, valid once done is closed
}

// startProc starts argv in a new process group with stdout and stderr
// appended to logPath.
func startProc(name, logPath string, argv ...string) (*proc, error) {
	return startProcEnv(name, logPath, nil, argv...)
}

// startProcEnv is startProc with extra environment variables ("K=V"), which
// override the bench's own.
func startProcEnv(name, logPath string, env []string, argv ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bench: start %s: log file: %w", name, err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pgid is the process group of p and all it forked.
func (p *proc) pgid() int { return p.cmd.Process.Pid }

// exited reports whether the started process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail is the end of p's log, for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	const max = 1500
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}

// stop ends p's process group: SIGTERM, then SIGKILL for what is left
// after grace. It reports what had to be killed.
func (p *proc) stop(grace time.Duration) error {
	pg := p.pgid()
	_ = syscall.Kill(-pg, syscall.SIGTERM)
	var err error
	if !waitGroupGone(pg, grace) {
		err = fmt.Errorf("bench: %s had not exited %s after SIGTERM; killed %d process(es)", p.name, grace, len(groupMembers(pg)))
		_ = syscall.Kill(-pg, syscall.SIGKILL)
		waitGroupGone(pg, 2*time.Second)
	}
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
	reapOrphans()
	return err
}

// waitGroupGone waits up to d for every live process of group pg to exit.
func waitGroupGone(pg int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		reapOrphans()
		if len(groupMembers(pg)) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procInfo is what the bench needs from /proc/PID/stat.
type procInfo struct {
	pid, ppid, pgid int
	state           byte   // 'Z' for a zombie
	utime, stime    uint64 // CPU time in user and system mode, in clock ticks
}

// listProcs reads every process's /proc/PID/stat; processes that vanish
// meanwhile are skipped.
func listProcs() []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pi, err := readStat(pid); err == nil {
			out = append(out, pi)
		}
	}
	return out
}

// readStat parses /proc/PID/stat: "pid (comm) state ppid pgrp ...", where
// comm may contain spaces and parentheses; utime and stime are fields 14
// and 15.
func readStat(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("bench: /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 || len(f[0]) != 1 {
		return procInfo{}, fmt.Errorf("bench: /proc/%d/stat: too short", pid)
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgid, err2 := strconv.Atoi(f[2])
	utime, err3 := strconv.ParseUint(f[11], 10, 64)
	stime, err4 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return procInfo{}, fmt.Errorf("bench: /proc/%d/stat: %w", pid, err)
	}
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, state: f[0][0], utime: utime, stime: stime}, nil
}

// groupMembers lists the live (not zombie) processes of group pg.
func groupMembers(pg int) []procInfo {
	var out []procInfo
	for _, p := range listProcs() {
		if p.pgid == pg && p.state != 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// childrenOf lists the live children of pid.
func childrenOf(pid int) []procInfo {
	var out []procInfo
	for _, p := range listProcs() {
		if p.ppid == pid && p.state != 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// cmdline is a process's command line with NULs as spaces.
func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
}

// rssBytes is a process's VmRSS, 0 if it is gone.
func rssBytes(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "12345 kB"
		if len(fields) == 0 {
			return 0
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}

// groupRSS sums VmRSS over the live processes of group pg.
func groupRSS(pg int) int64 {
	var sum int64
	for _, p := range groupMembers(pg) {
		sum += rssBytes(p.pid)
	}
	return sum
}

// groupCPU sums utime and stime, in clock ticks, over the live processes of
// group pg.
func groupCPU(pg int) (user, sys uint64) {
	for _, p := range groupMembers(pg) {
		user += p.utime
		sys += p.stime
	}
	return user, sys
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	p, err := readStat(pid)
	return err == nil && p.state != 'Z'
}

// clockTicks is the unit of utime and stime: `getconf CLK_TCK`, or 100 (the
// value on Linux) if that fails.
func clockTicks() (ticks int, ok bool) {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || n <= 0 {
		return 100, false
	}
	return n, true
}

// becomeSubreaper makes processes orphaned below the bench (baton's older
// generations, whose parent generation exited) its children rather than
// init's, so reapOrphans can collect them instead of leaving zombies.
func becomeSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("bench: prctl(PR_SET_CHILD_SUBREAPER): %w", errno)
	}
	return nil
}

// reapOrphans collects zombie children the bench did not start itself:
// processes re-parented to it by becomeSubreaper. Those are in a server's
// process group without leading it; what the bench started through os/exec
// either leads its group (servers) or is in the bench's own group (wrk,
// baton ctl), and is left to exec.Cmd.Wait.
func reapOrphans() {
	self, own := os.Getpid(), syscall.Getpgrp()
	for _, p := range listProcs() {
		if p.ppid != self || p.state != 'Z' || p.pid == p.pgid || p.pgid == own {
			continue
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(p.pid, &ws, syscall.WNOHANG, nil)
	}
}
