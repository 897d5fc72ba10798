package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The system-call part of the bench: for each proxy, strace -c -f attaches
// to every process of its process group (every thread of each, -f) while
// one short wrk run goes through it; its summary's total number of calls,
// divided by the requests wrk completed, is the proxy's system calls per
// request. strace stops every traced thread at every system call, so the
// proxy runs many times slower meanwhile: the req/s of these runs are not
// benchmark figures.

const (
	syscallConns = 50 // wrk connections of the traced runs
	syscallFile  = "small.txt"
	// straceAttachTimeout bounds the wait for strace to have attached to
	// every thread; straceStopTimeout the wait for it to detach and exit
	// after SIGINT.
	straceAttachTimeout = 10 * time.Second
	straceStopTimeout   = 15 * time.Second
	topSyscalls         = 6 // system calls listed by name per proxy
)

// syscallSetups are the setups whose system calls are counted, in the order
// they are measured; HAProxy is the yardstick.
var syscallSetups = []string{setupBaton, setupStdlib, setupHAProxy, setupNginx}

// syscallCount is one row of strace's summary.
type syscallCount struct {
	name          string
	calls, errors int64
}

// straceSummary is strace -c's table.
type straceSummary struct {
	total, errors int64          // the "total" row
	calls         []syscallCount // by calls, most first
}

// syscallRun is one proxy's traced wrk run.
type syscallRun struct {
	setup   string
	threads int // threads strace attached to at the start
	wrk     wrkResult
	sum     straceSummary
	err     error
}

// perRequest divides n by the requests wrk completed.
func (r syscallRun) perRequest(n int64) float64 {
	if r.wrk.requests == 0 {
		return 0
	}
	return float64(n) / float64(r.wrk.requests)
}

// syscallResults are the traced runs; skipped says why there are none.
type syscallResults struct {
	duration time.Duration
	strace   string // strace's version
	runs     []syscallRun
	skipped  string
}

func (r syscallResults) failed() bool {
	for _, x := range r.runs {
		if x.err != nil {
			return true
		}
	}
	return false
}

// measureSyscalls counts the system calls of each setup in syscallSetups
// during a wrk run of -syscall-duration. A setup that fails is recorded
// and the others are still measured; every strace is stopped before the
// next starts.
func (b *bench) measureSyscalls(ctx context.Context) syscallResults {
	r := syscallResults{duration: b.opts.syscallDuration}
	strace, err := exec.LookPath("strace")
	if err != nil {
		r.runs = append(r.runs, syscallRun{setup: "strace", err: fmt.Errorf("bench: syscalls: strace not found (apt-get install strace): %w", err)})
		return r
	}
	if err := ptraceAllowed(); err != nil {
		r.runs = append(r.runs, syscallRun{setup: "strace", err: err})
		return r
	}
	r.strace = toolVersion(ctx, reStraceVersion, strace, "-V")
	for _, name := range syscallSetups {
		if ctx.Err() != nil {
			break
		}
		s := b.setupByName(name)
		if s == nil || s.proc == nil {
			continue
		}
		run := b.countSyscalls(ctx, strace, s)
		r.runs = append(r.runs, run)
		if run.err != nil {
			b.progress("syscalls %-16s FAILED: %v", name, run.err)
			continue
		}
		b.progress("syscalls %-16s %6.2f/req (%d calls, %d requests at %.0f req/s under strace, %d threads)",
			name, run.perRequest(run.sum.total), run.sum.total, run.wrk.requests, run.wrk.rps, run.threads)
	}
	return r
}

var reStraceVersion = regexp.MustCompile(`strace -- version (\S+)`)

// countSyscalls traces every thread of s's processes during one wrk run
// and checks afterwards that strace let go of all of them and s serves.
func (b *bench) countSyscalls(ctx context.Context, strace string, s *setup) syscallRun {
	run := syscallRun{setup: s.name}
	pg := s.proc.pgid()
	members := groupMembers(pg)
	if len(members) == 0 {
		run.err = fmt.Errorf("bench: syscalls %s: no live process in group %d", s.name, pg)
		return run
	}
	out := b.path("strace-" + slug(s.name) + ".txt")
	args := []string{"-c", "-f", "-o", out}
	for _, m := range members {
		args = append(args, "-p", strconv.Itoa(m.pid))
	}
	cmd := exec.Command(strace, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		run.err = fmt.Errorf("bench: syscalls %s: start strace: %w", s.name, err)
		return run
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		return stopStrace(cmd, done)
	}
	defer stop() // on every early return

	tracer := cmd.Process.Pid
	err := waitUntil(ctx, straceAttachTimeout, func() bool {
		if exited() {
			return true
		}
		traced, total := groupTraced(pg, tracer)
		run.threads = total
		return total > 0 && traced == total
	})
	if exited() {
		run.err = fmt.Errorf("bench: syscalls %s: strace exited before attaching (%v): %s%s",
			s.name, waitErr, strings.TrimSpace(stderr.String()), ptraceNote())
		return run
	}
	if err != nil {
		run.err = fmt.Errorf("bench: syscalls %s: strace attaching: %w", s.name, err)
		return run
	}

	url := "http://" + s.addr + "/" + syscallFile
	run.wrk, run.err = runWrk(ctx, b.tools.wrk, url, syscallConns, b.opts.syscallDuration)
	stopErr := stop()
	if run.err != nil {
		run.err = fmt.Errorf("bench: syscalls %s: %w", s.name, run.err)
	} else if stopErr != nil {
		run.err = fmt.Errorf("bench: syscalls %s: %w", s.name, stopErr)
	}
	// Whatever happened: no thread may stay traced, and the proxy must
	// serve again before the bench goes on.
	if err := waitUntil(ctx, 5*time.Second, func() bool { traced, _ := groupTraced(pg, 0); return traced == 0 }); err != nil {
		traced, total := groupTraced(pg, 0)
		run.err = errors.Join(run.err, fmt.Errorf("bench: syscalls %s: %d of %d threads still traced after strace exited: %w", s.name, traced, total, err))
	}
	if err := waitServing(ctx, s.proc, url, 10*time.Second); err != nil {
		run.err = errors.Join(run.err, fmt.Errorf("bench: syscalls %s: not serving after strace: %w", s.name, err))
	}
	if run.err != nil {
		return run
	}
	text, err := os.ReadFile(out)
	if err != nil {
		run.err = fmt.Errorf("bench: syscalls %s: strace summary: %w", s.name, err)
		return run
	}
	if run.sum, err = parseStraceSummary(string(text)); err != nil {
		run.err = fmt.Errorf("bench: syscalls %s: %w (strace: %v, %s)", s.name, err, waitErr, strings.TrimSpace(stderr.String()))
		return run
	}
	if run.wrk.requests == 0 {
		run.err = fmt.Errorf("bench: syscalls %s: wrk completed no request under strace", s.name)
	}
	return run
}

// stopStrace sends strace SIGINT, on which it detaches from every thread
// and writes its summary, and waits for it to exit; if it does not within
// straceStopTimeout it is killed (the kernel then detaches its tracees).
func stopStrace(cmd *exec.Cmd, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop strace: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(straceStopTimeout):
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return fmt.Errorf("strace had not exited %s after SIGINT; killed", straceStopTimeout)
}

// groupTraced counts the threads of the live processes of group pg, and
// among them those traced by tracer (tracer 0: by anyone).
func groupTraced(pg, tracer int) (traced, total int) {
	for _, m := range groupMembers(pg) {
		dir := "/proc/" + strconv.Itoa(m.pid) + "/task"
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // exited meanwhile
		}
		for _, e := range ents {
			t, ok := tracerPID(filepath.Join(dir, e.Name(), "status"))
			if !ok {
				continue
			}
			total++
			if (tracer == 0 && t != 0) || (tracer != 0 && t == tracer) {
				traced++
			}
		}
	}
	return traced, total
}

// tracerPID reads TracerPid from a /proc status file.
func tracerPID(status string) (int, bool) {
	b, err := os.ReadFile(status)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

const ptraceScopeFile = "/proc/sys/kernel/yama/ptrace_scope"

// ptraceScope is kernel.yama.ptrace_scope, or -1 without Yama.
func ptraceScope() int {
	b, err := os.ReadFile(ptraceScopeFile)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// ptraceAllowed fails when Yama forbids strace -p here: scope 3 forbids
// attaching altogether; scopes 1 and 2 need CAP_SYS_PTRACE (root), since
// strace is not an ancestor of the proxies (the bench starts both).
func ptraceAllowed() error {
	switch sc := ptraceScope(); {
	case sc >= 3:
		return fmt.Errorf("bench: syscalls: kernel.yama.ptrace_scope is %d: no process may attach to another (it can only be lowered by a reboot)", sc)
	case sc >= 1 && os.Geteuid() != 0:
		return fmt.Errorf("bench: syscalls: kernel.yama.ptrace_scope is %d: strace -p needs root (or sysctl kernel.yama.ptrace_scope=0)", sc)
	}
	return nil
}

// ptraceNote adds ptrace_scope to an attach error, if Yama is there.
func ptraceNote() string {
	if sc := ptraceScope(); sc >= 0 {
		return fmt.Sprintf(" (kernel.yama.ptrace_scope = %d)", sc)
	}
	return ""
}

// parseStraceSummary reads strace -c's table:
//
//	% time     seconds  usecs/call     calls    errors syscall
//	------ ----------- ----------- --------- --------- ----------------
//	 45.00    0.001000          10       100        20 read
//	...
//	100.00    0.002000          10       200        20 total
//
// The errors column is blank for calls that never failed.
func parseStraceSummary(text string) (straceSummary, error) {
	var s straceSummary
	haveTotal := false
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || len(f) > 6 {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue // header, separator
		}
		calls, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return s, fmt.Errorf("strace summary: calls in %q: %w", line, err)
		}
		var errs int64
		if len(f) == 6 {
			if errs, err = strconv.ParseInt(f[4], 10, 64); err != nil {
				return s, fmt.Errorf("strace summary: errors in %q: %w", line, err)
			}
		}
		name := f[len(f)-1]
		if name == "total" {
			s.total, s.errors, haveTotal = calls, errs, true
			continue
		}
		s.calls = append(s.calls, syscallCount{name: name, calls: calls, errors: errs})
	}
	if !haveTotal {
		return s, fmt.Errorf("strace summary: no total row in %q", text)
	}
	slices.SortStableFunc(s.calls, func(a, b syscallCount) int {
		return cmp.Or(cmp.Compare(b.calls, a.calls), strings.Compare(a.name, b.name))
	})
	return s, nil
}

// slug makes a setup name usable in a file name.
func slug(name string) string {
	return strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, name), "-")
}

// renderSyscalls writes the system-call table.
func renderSyscalls(w *strings.Builder, r syscallResults) {
	fmt.Fprintf(w, "## System calls per request (strace -c)\n\n")
	if r.skipped != "" {
		fmt.Fprintf(w, "Not measured: %s.\n\n", r.skipped)
		return
	}
	fmt.Fprintf(w, "`strace -c -f -p PID...` (strace %s) attached to every process of the proxy (baton: every process "+
		"of its process group, every generation; HAProxy and nginx: master and worker) and, with -f, to all their "+
		"threads, for one `wrk -t1 -c%d -d%s` run on %s per proxy, separate from the runs above; strace is stopped "+
		"with SIGINT right after wrk exits, and the bench checks that no thread is still traced and the proxy serves "+
		"again before going on. Total calls in strace's summary divided by the requests wrk completed; the counts "+
		"also hold what the proxy did meanwhile besides serving (connection set-up of wrk's %d connections, health "+
		"checks, timers), a small share at these request counts. **strace stops the proxy at every system call, so "+
		"the req/s here are far below the benchmark figures above and are not comparable to them**; calls per "+
		"request are what counts. \"baton\" is the matrix's default-engine row (no `engine` key in its configuration).\n\n",
		r.strace, syscallConns, r.duration, syscallFile, syscallConns)
	fmt.Fprintf(w, "| setup | requests (under strace) | req/s (under strace) | threads | syscalls/req | failed syscalls/req | syscalls/req × HAProxy | top syscalls per request |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---|\n")
	var ha *syscallRun
	for i := range r.runs {
		if r.runs[i].setup == setupHAProxy && r.runs[i].err == nil {
			ha = &r.runs[i]
		}
	}
	for _, x := range r.runs {
		if x.err != nil {
			fmt.Fprintf(w, "| %s | - | - | - | - | - | - | FAILED: %s |\n", x.setup, oneLine(x.err))
			continue
		}
		rel := "-"
		if ha != nil {
			rel = ratio(x.perRequest(x.sum.total), ha.perRequest(ha.sum.total))
		}
		var top []string
		for _, c := range x.sum.calls[:min(topSyscalls, len(x.sum.calls))] {
			t := fmt.Sprintf("%s %.2f", c.name, x.perRequest(c.calls))
			if x.perRequest(c.errors) >= 0.005 {
				t += fmt.Sprintf(" (%.2f failed)", x.perRequest(c.errors))
			}
			top = append(top, t)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %d | %.2f | %.2f | %s | %s |\n", x.setup, x.wrk.requests, x.wrk.rps,
			x.threads, x.perRequest(x.sum.total), x.perRequest(x.sum.errors), rel, strings.Join(top, ", "))
	}
	fmt.Fprintf(w, "\nFailed calls are calls that returned an error; on these non-blocking sockets mostly EAGAIN: a read "+
		"that found nothing yet, or (baton's stdlib plane) the MSG_PEEK probe of a pooled backend connection before "+
		"reusing it, which fails with EAGAIN when the connection is fine. The Go rows include the runtime's own calls "+
		"(futex, nanosleep, epoll_pwait of the netpoller, getpid+tgkill of preemption), which grow when threads "+
		"idle between requests, and under strace they idle more, so those rows vary more between runs than "+
		"HAProxy's and nginx's; compare rows of one run.\n\n")
}
