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
	level, msg string
	example    string // the first such line, without its time
	count      int
}

var (
	reLevel = regexp.MustCompile(`\blevel=(\w+)`)
	reMsg   = regexp.MustCompile(`\bmsg=("(?:[^"\\]|\\.)*"|\S+)`)
	reTime  = regexp.MustCompile(`^time=\S+ `)
)

// batonLogSummary counts the warnings and errors every baton generation
// logged (they share one log file), by message.
func (b *bench) batonLogSummary() []logLine {
	f, err := os.Open(b.batonLog)
	if err != nil {
		return []logLine{{level: "ERROR", msg: fmt.Sprintf("bench: read baton log: %v", err), count: 1}}
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
			out = append(out, logLine{level: level, msg: msg, example: reTime.ReplaceAllString(line, "")})
			i = len(out) - 1
		}
		out[i].count++
	}
	return out
}

// renderReport writes the Markdown report.
func renderReport(mi machineInfo, opts options, m *matrix, u upgradeResults, logs []logLine, took time.Duration) string {
	var w strings.Builder
	fmt.Fprintf(&w, "# baton benchmarks\n\n")
	fmt.Fprintf(&w, "Machine: %d CPUs (nproc), %s; %s; %s; %s; nginx %s; HAProxy %s; wrk %s; baton %s.\n\n",
		mi.nproc, mi.cpu, mi.kernel, mi.date, mi.goVer, mi.nginx, mi.haproxy, mi.wrk, mi.baton)
	fmt.Fprintf(&w, "Method: one nginx backend (1 worker) serving static files on loopback; each proxy on its own "+
		"loopback port in front of it: baton (defaults, log level warn), HAProxy (nbthread 1, http-reuse always), "+
		"nginx (1 worker, upstream keepalive 256). `wrk -t1 -d%s --timeout 5s --latency`, %d round(s), setups taking "+
		"turns within each round; figures are medians over rounds, errors are summed over rounds. Peak RSS is "+
		"sampled every 200 ms during the runs (baton: every process of every generation; HAProxy and nginx: master "+
		"and workers). wrk, the backend and the proxy share %d CPUs, and other work may have run meanwhile, so "+
		"treat differences of a few percent as noise.\n\n",
		opts.duration, opts.rounds, mi.nproc)
	for _, c := range m.cells {
		renderCell(&w, m, c)
	}
	renderUpgrades(&w, u)
	renderLogs(&w, logs)
	fmt.Fprintf(&w, "Total run time: %s.\n", took.Round(time.Second))
	return w.String()
}

func renderCell(w *strings.Builder, m *matrix, c cell) {
	fmt.Fprintf(w, "## %s (%d bytes), %d connections\n\n", c.file, fileSize(c.file), c.conns)
	fmt.Fprintf(w, "| setup | req/s | p50 ms | p99 ms | peak RSS MB | wrk errors |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---|\n")
	sums := map[string]summary{}
	for _, name := range m.setups {
		s := summarize(m.samples[c][name])
		sums[name] = s
		if s.failed == s.runs {
			fmt.Fprintf(w, "| %s | - | - | - | - | FAILED: %s |\n", name, oneLine(s.firstErr))
			continue
		}
		rss := "-"
		if name != setupDirect {
			rss = fmt.Sprintf("%.1f", mb(s.peakRSS))
		}
		errs := s.errs.String()
		if s.failed > 0 {
			errs += fmt.Sprintf("; %d of %d runs FAILED: %s", s.failed, s.runs, oneLine(s.firstErr))
		}
		fmt.Fprintf(w, "| %s | %.0f | %.2f | %.2f | %s | %s |\n", name, s.rps, s.p50, s.p99, rss, errs)
	}
	var ratios []string
	bt := sums[setupBaton]
	for _, other := range []string{setupHAProxy, setupNginx, setupDirect} {
		o := sums[other]
		ratios = append(ratios, fmt.Sprintf("baton/%s req/s %s, p99 %s", other, ratio(bt.rps, o.rps), ratio(bt.p99, o.p99)))
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
	fmt.Fprintf(w, "## baton upgrades: request to new process ready\n\n")
	fmt.Fprintf(w, "`baton ctl upgrade --json`, %d times in a row (0.5 s apart), `took_ns` (includes `waited_ns`, "+
		"the wait for the previous generation to let go).\n\n", upgradesPerSeries)
	fmt.Fprintf(w, "| conditions | upgrades | median ms | min ms | max ms | median waited ms | wrk errors |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---|\n")
	for _, s := range u.ctl {
		var took, waited []float64
		for _, x := range s.upgrades {
			took = append(took, ms(x.Took))
			waited = append(waited, ms(x.Waited))
		}
		errs := "-"
		if s.wrk != nil {
			errs = fmt.Sprintf("%s (of %d requests)", s.wrk.errs, s.wrk.requests)
		}
		if s.err != nil {
			errs += "; FAILED: " + oneLine(s.err)
		}
		fmt.Fprintf(w, "| %s | %d | %.1f | %.1f | %.1f | %.1f | %s |\n", s.label, len(s.upgrades),
			median(took), minOr0(took), maxOr0(took), median(waited), errs)
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
	fmt.Fprintf(w, "## baton's log (warnings and errors, all generations)\n\n")
	if len(logs) == 0 {
		fmt.Fprintf(w, "None.\n\n")
		return
	}
	for _, l := range logs {
		fmt.Fprintf(w, "- %s x%d: %s  \n  e.g. `%s`\n", l.level, l.count, l.msg, strings.ReplaceAll(l.example, "`", "'"))
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
