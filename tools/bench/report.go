package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

// machineInfo describes where the numbers were taken.
type machineInfo struct {
	nproc                      int
	cpu, kernel, date, goVer   string
	nginx, haproxy, wrk, baton string
}

func collectMachineInfo(ctx context.Context, tl tools, baton string) machineInfo {
	return machineInfo{
		nproc:   runtime.NumCPU(),
		cpu:     cpuModel(),
		kernel:  kernelRelease(),
		date:    time.Now().UTC().Format("2006-01-02 15:04 MST"),
		goVer:   runtime.Version(),
		nginx:   toolVersion(ctx, regexp.MustCompile(`nginx/(\S+)`), tl.nginx, "-v"),
		haproxy: toolVersion(ctx, regexp.MustCompile(`HAProxy version (\S+)`), tl.haproxy, "-v"),
		wrk:     toolVersion(ctx, regexp.MustCompile(`^wrk (\S+)`), tl.wrk, "-v"),
		baton:   toolVersion(ctx, regexp.MustCompile(`^baton (.+)`), baton, "version"),
	}
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return "Linux " + strings.TrimSpace(string(b))
}

// toolVersion runs a program's version flag; some print it on stderr or
// exit 1, so only the output counts.
func toolVersion(ctx context.Context, re *regexp.Regexp, argv ...string) string {
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if m := re.FindStringSubmatch(strings.TrimSpace(string(out))); m != nil {
		return m[1]
	}
	return "unknown"
}

// logLine is a distinct baton log message and how often it appeared.
type logLine struct {
	source     string // the baton instance
	level, msg string
	example    string // the first such line, without its time
	count      int
}

var (
	reLevel = regexp.MustCompile(`\blevel=(\w+)`)
	reMsg   = regexp.MustCompile(`\bmsg=("(?:[^"\\]|\\.)*"|\S+)`)
	reTime  = regexp.MustCompile(`^time=\S+ `)
)

// batonLogSummary counts the warnings and errors every baton generation of
// every baton instance logged (an instance's generations share one log
// file), by instance and message.
func (b *bench) batonLogSummary() []logLine {
	var out []logLine
	for _, l := range b.batonLogs {
		out = append(out, summarizeLog(l)...)
	}
	return out
}

func summarizeLog(l namedLog) []logLine {
	f, err := os.Open(l.path)
	if err != nil {
		return []logLine{{source: l.name, level: "ERROR", msg: fmt.Sprintf("bench: read baton log: %v", err), count: 1}}
	}
	defer f.Close()
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		level, msg := "OTHER", line
		if m := reLevel.FindStringSubmatch(line); m != nil {
			level = m[1]
		}
		if m := reMsg.FindStringSubmatch(line); m != nil {
			msg = strings.Trim(m[1], `"`)
		}
		if level == "INFO" || level == "DEBUG" {
			continue
		}
		i := slices.IndexFunc(out, func(l logLine) bool { return l.level == level && l.msg == msg })
		if i < 0 {
			out = append(out, logLine{source: l.name, level: level, msg: msg, example: reTime.ReplaceAllString(line, "")})
			i = len(out) - 1
		}
		out[i].count++
	}
	return out
}

// renderReport writes the Markdown report.
func renderReport(mi machineInfo, opts options, m *matrix, sc syscallResults, idle idleResults, u upgradeResults, logs []logLine, took time.Duration) string {
	var w strings.Builder
	fmt.Fprintf(&w, "# baton benchmarks\n\n")
	fmt.Fprintf(&w, "Machine: %d CPUs (nproc), %s; %s; %s; %s; nginx %s; HAProxy %s; wrk %s; baton %s.\n\n",
		mi.nproc, mi.cpu, mi.kernel, mi.date, mi.goVer, mi.nginx, mi.haproxy, mi.wrk, mi.baton)
	fmt.Fprintf(&w, "Method: one nginx backend (1 worker) serving static files on loopback; each proxy on its own "+
		"loopback port in front of it: baton (defaults, log level warn: the epoll plane with one event loop per two "+
		"CPUs, Go's default GOMAXPROCS for the rest), baton (1 thread) (the same with GOMAXPROCS=1 in its environment), "+
		"baton (stdlib) (`engine = \"stdlib\"`, the net/http plane), HAProxy (nbthread 1, http-reuse always), "+
		"nginx (1 worker, upstream keepalive 256). `wrk -t1 -d%s --timeout 5s --latency`, %d round(s), setups taking "+
		"turns within each round; figures are medians over rounds, errors are summed over rounds. Peak RSS is "+
		"sampled every 200 ms during the runs (baton: every process of every generation; HAProxy and nginx: master "+
		"and workers). wrk, the backend and the proxy share %d CPUs, and other work may have run meanwhile, so "+
		"treat differences of a few percent as noise.\n\n",
		opts.duration, opts.rounds, mi.nproc)
	fmt.Fprintf(&w, "Reference rows, not products: **go-minimal (reference)** is a deliberately minimal Go HTTP/1.1 "+
		"reverse proxy that the bench builds from its own source (`tools/bench/internal/minproxy`), to show the ceiling "+
		"of a Go proxy on the standard runtime (a goroutine per connection, the netpoller) without net/http: "+
		"per client connection a goroutine with reused bufio buffers, request line and headers parsed by hand into "+
		"byte slices (no maps, no allocation per request), GET without a body only, forwarded with X-Forwarded-For "+
		"over keep-alive backend connections from a mutex-protected LIFO pool, response headers parsed by hand, "+
		"Content-Length required, no timeouts, no limits, no error handling beyond closing connections (and one "+
		"retry of a request whose pooled backend connection had been closed by the backend). It runs with Go's "+
		"default GOMAXPROCS; **go-minimal (reference, 1 thread)** is the same program with GOMAXPROCS=1, measured "+
		"only on small.txt at 50 connections to keep the run time down (%d wrk runs of %s fewer).\n\n",
		3*opts.rounds, opts.duration)
	fmt.Fprintf(&w, "CPU per request (small.txt, 50 connections only): utime and stime from /proc/PID/stat, summed "+
		"over the proxy's processes (baton: all of them; HAProxy and nginx: master and workers; go-minimal: its one "+
		"process), read right before and after each wrk run and divided by the requests wrk completed; medians "+
		"over rounds (CPU is the median of user+system per run). The kernel counts in clock ticks of 1/%d s%s "+
		"(10 ms at 100 Hz), so a run of a few hundred thousand requests resolves about 0.03-0.1 µs/request. The "+
		"backend's and wrk's CPU are not included; the proxy's share of softirq work for loopback traffic falls "+
		"wherever the kernel happens to run it.\n\n", m.clkTck, tckNote(m.tckOK))
	for _, c := range m.cells {
		renderCell(&w, m, c)
	}
	renderSyscalls(&w, sc)
	if idle.conns > 0 {
		renderIdle(&w, idle)
	}
	renderUpgrades(&w, u)
	renderLogs(&w, logs)
	fmt.Fprintf(&w, "Total run time: %s.\n", took.Round(time.Second))
	return w.String()
}

func tckNote(ok bool) string {
	if ok {
		return " (`getconf CLK_TCK`)"
	}
	return " (assumed: `getconf CLK_TCK` failed)"
}

func renderCell(w *strings.Builder, m *matrix, c cell) {
	withCPU := c == cpuCell
	fmt.Fprintf(w, "## %s (%d bytes), %d connections\n\n", c.file, fileSize(c.file), c.conns)
	if withCPU {
		fmt.Fprintf(w, "| setup | req/s | p50 ms | p99 ms | peak RSS MB | user µs/req | sys µs/req | CPU µs/req | wrk errors |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	} else {
		fmt.Fprintf(w, "| setup | req/s | p50 ms | p99 ms | peak RSS MB | wrk errors |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|---|\n")
	}
	sums := map[string]summary{}
	for _, name := range m.setups {
		ss := m.samples[c][name]
		if len(ss) == 0 {
			continue // not measured in this cell
		}
		s := summarize(ss, m.clkTck)
		sums[name] = s
		cpuDash := ""
		if withCPU {
			cpuDash = " - | - | - |"
		}
		if s.failed == s.runs {
			fmt.Fprintf(w, "| %s | - | - | - | - |%s FAILED: %s |\n", name, cpuDash, oneLine(s.firstErr))
			continue
		}
		rss := "-"
		if name != setupDirect {
			rss = fmt.Sprintf("%.1f", mb(s.peakRSS))
		}
		cpu := ""
		if withCPU {
			cpu = cpuDash
			if s.cpuRuns > 0 {
				cpu = fmt.Sprintf(" %.2f | %.2f | %.2f |", s.userUS, s.sysUS, s.cpuUS)
			}
		}
		errs := s.errs.String()
		if s.failed > 0 {
			errs += fmt.Sprintf("; %d of %d runs FAILED: %s", s.failed, s.runs, oneLine(s.firstErr))
		}
		fmt.Fprintf(w, "| %s | %.0f | %.2f | %.2f | %s |%s %s |\n", name, s.rps, s.p50, s.p99, rss, cpu, errs)
	}
	var ratios []string
	for _, r := range [][2]string{
		{setupBaton, setupHAProxy}, {setupBaton, setupNginx}, {setupBaton, setupDirect},
		{setupBaton1, setupHAProxy}, {setupBaton, setupStdlib},
		{setupStdlib, setupHAProxy}, {setupStdlib, setupMinimal}, {setupBaton, setupMinimal},
		{setupBatonObs, setupBaton}, {setupBatonLim, setupBaton},
	} {
		a, okA := sums[r[0]]
		o, okO := sums[r[1]]
		if !okA || !okO {
			continue
		}
		ratios = append(ratios, fmt.Sprintf("%s / %s req/s %s, p99 %s", r[0], r[1], ratio(a.rps, o.rps), ratio(a.p99, o.p99)))
	}
	fmt.Fprintf(w, "\nRatios: %s.\n\n", strings.Join(ratios, "; "))
}

func fileSize(name string) int {
	for _, f := range files {
		if f.name == name {
			return f.size
		}
	}
	return 0
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func oneLine(err error) string {
	if err == nil {
		return ""
	}
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.ReplaceAll(s, "|", "\\|")
}

func renderUpgrades(w *strings.Builder, u upgradeResults) {
	fmt.Fprintf(w, "## Upgrades: trigger to new process ready\n\n")
	fmt.Fprintf(w, "Each series makes %d upgrades in a row. **ctl**: `baton ctl upgrade --json`, 0.5 s apart; the "+
		"time is baton's own `took_ns`, which includes `waited_ns`, the wait for the previous generation to let go. "+
		"**SIGHUP, external**: measured the same way for baton and for the reference program: the time from "+
		"kill(SIGHUP) to the process the PID file names until the file names another process, the bench reading "+
		"it every 0.2 ms (nanosleep between reads, so about 0.3 ms resolution); before each signal it pauses 0.5 s "+
		"and waits until the processes upgraded from earlier have exited, so no upgrade waits for a predecessor "+
		"(that wait is not counted). %s is a reference, not a product: a minimal github.com/cloudflare/tableflip "+
		"v1.2.3 program (`tools/bench/internal/tfref`, after the library's net/http example) serving a fixed "+
		"100-byte body itself, which upgrades on SIGHUP, calls Ready once it listens (tableflip then writes the PID "+
		"file) and lets the old process shut its http.Server down. \"Under load\" is the same `wrk -t1 -c50` on "+
		"small.txt for all rows, started 1 s before the first upgrade; for baton it goes through baton to the nginx "+
		"backend, for the tableflip program it is answered by the program itself, so the req/s differ.\n\n",
		upgradesPerSeries, progTableflip)
	fmt.Fprintf(w, "| program | trigger, timed by | conditions | upgrades | median ms | min ms | max ms | median waited ms | wrk errors |\n")
	fmt.Fprintf(w, "|---|---|---|---:|---:|---:|---:|---:|---|\n")
	loadNote := func(wr *wrkResult, err error) string {
		errs := "-"
		if wr != nil {
			errs = fmt.Sprintf("%s (of %d requests, %.0f req/s)", wr.errs, wr.requests, wr.rps)
		}
		if err != nil {
			errs += "; FAILED: " + oneLine(err)
		}
		return errs
	}
	for _, s := range u.ctl {
		var took, waited []float64
		for _, x := range s.upgrades {
			took = append(took, ms(x.Took))
			waited = append(waited, ms(x.Waited))
		}
		fmt.Fprintf(w, "| %s | ctl, `took_ns` | %s | %d | %.1f | %.1f | %.1f | %.1f | %s |\n", setupBaton, s.label,
			len(s.upgrades), median(took), minOr0(took), maxOr0(took), median(waited), loadNote(s.wrk, s.err))
	}
	for _, s := range u.sighup {
		var took []float64
		for _, d := range s.took {
			took = append(took, ms(d))
		}
		fmt.Fprintf(w, "| %s | SIGHUP, external (PID file) | %s | %d | %.1f | %.1f | %.1f | - | %s |\n", s.program,
			s.label, len(s.took), median(took), minOr0(took), maxOr0(took), loadNote(s.wrk, s.err))
	}
	fmt.Fprintf(w, "\n## Failures during %d reloads under load\n\n", upgradesPerSeries)
	fmt.Fprintf(w, "One `wrk -t1 -c50 --timeout 5s` run on small.txt per setup, with %d reloads spaced evenly, "+
		"each waiting for the new process to serve; socket errors and non-2xx/3xx responses as wrk counts them.\n\n",
		upgradesPerSeries)
	fmt.Fprintf(w, "| setup | reload | reloads | median reload ms | requests | req/s | connect | read | write | timeout | non-2xx | result |\n")
	fmt.Fprintf(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range u.reloads {
		var took []float64
		for _, d := range r.took {
			took = append(took, ms(d))
		}
		result := "ok"
		if r.err != nil {
			result = "FAILED: " + oneLine(r.err)
		}
		e := r.wrk.errs
		fmt.Fprintf(w, "| %s | %s | %d | %.1f | %d | %.0f | %d | %d | %d | %d | %d | %s |\n", r.setup, r.method,
			len(r.took), median(took), r.wrk.requests, r.wrk.rps, e.connect, e.read, e.write, e.timeout, e.non2xx, result)
	}
	fmt.Fprintln(w)
}

func renderLogs(w *strings.Builder, logs []logLine) {
	fmt.Fprintf(w, "## baton's log (warnings and errors, all generations of both instances)\n\n")
	if len(logs) == 0 {
		fmt.Fprintf(w, "None.\n\n")
		return
	}
	for _, l := range logs {
		fmt.Fprintf(w, "- %s: %s x%d: %s  \n  e.g. `%s`\n", l.source, l.level, l.count, l.msg,
			strings.ReplaceAll(l.example, "`", "'"))
	}
	fmt.Fprintln(w)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func minOr0(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Min(xs)
}

func maxOr0(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs)
}
