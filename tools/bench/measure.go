package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// connCounts are the wrk connection counts measured.
var connCounts = []int{50, 200}

// cell is one table of the report: a file at a connection count.
type cell struct {
	file  string
	conns int
}

// sample is one wrk run of one setup in one cell.
type sample struct {
	res     wrkResult
	peakRSS int64 // bytes; 0 for direct
	cpu     *cpuUse
	err     error
}

// cpuUse is the CPU time the proxy's processes used during a wrk run, in
// clock ticks; only measured in cpuCell.
type cpuUse struct {
	user, sys uint64
}

// matrix holds every run: samples[cell][setup] has one entry per round.
type matrix struct {
	cells   []cell
	setups  []string
	samples map[cell]map[string][]sample
	clkTck  int  // clock ticks per second of the CPU times
	tckOK   bool // clkTck came from getconf CLK_TCK
}

func (m *matrix) add(c cell, setup string, s sample) {
	if m.samples[c] == nil {
		m.samples[c] = map[string][]sample{}
	}
	m.samples[c][setup] = append(m.samples[c][setup], s)
}

func (m *matrix) failed() bool {
	for _, bySetup := range m.samples {
		for _, ss := range bySetup {
			for _, s := range ss {
				if s.err != nil {
					return true
				}
			}
		}
	}
	return false
}

// measureMatrix runs every setup on every cell, rounds times, the setups
// taking turns within each cell so drift affects them alike. Only a
// cancelled ctx makes it fail; a failed wrk run is recorded and reported.
func (b *bench) measureMatrix(ctx context.Context) (*matrix, error) {
	m := &matrix{samples: map[cell]map[string][]sample{}, clkTck: b.clkTck, tckOK: b.tckOK}
	for _, f := range files {
		for _, c := range connCounts {
			m.cells = append(m.cells, cell{f.name, c})
		}
	}
	for _, s := range b.setups {
		m.setups = append(m.setups, s.name)
	}
	if err := b.warmUp(ctx); err != nil {
		return nil, err
	}
	total := 0
	for _, c := range m.cells {
		for _, s := range b.setups {
			if s.runsIn(c) {
				total += b.opts.rounds
			}
		}
	}
	n := 0
	for r := 1; r <= b.opts.rounds; r++ {
		for _, c := range m.cells {
			for _, s := range b.setups {
				if !s.runsIn(c) {
					continue
				}
				n++
				smp := b.measureOne(ctx, s, c)
				if ctx.Err() != nil {
					return nil, fmt.Errorf("bench: measure: %w", ctx.Err())
				}
				m.add(c, s.name, smp)
				b.logSample(n, total, r, c, s, smp)
			}
		}
	}
	return m, nil
}

// warmUp gives every setup a short run first, so that none of them pays for
// cold connection pools or page cache in the first measured run.
func (b *bench) warmUp(ctx context.Context) error {
	for _, s := range b.setups {
		if _, err := runWrk(ctx, b.tools.wrk, "http://"+s.addr+"/small.txt", 50, time.Second); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("bench: warm-up: %w", ctx.Err())
			}
			return fmt.Errorf("bench: warm-up %s: %w", s.name, err)
		}
	}
	return nil
}

func (b *bench) logSample(n, total, round int, c cell, s *setup, smp sample) {
	if smp.err != nil {
		b.progress("[%d/%d] round %d %s c=%d %-32s FAILED: %v", n, total, round, c.file, c.conns, s.name, smp.err)
		return
	}
	rss := "-"
	if s.proc != nil {
		rss = fmt.Sprintf("%.1f MB", mb(smp.peakRSS))
	}
	cpu := ""
	if smp.cpu != nil {
		u, sy := cpuPerRequest(smp, b.clkTck)
		cpu = fmt.Sprintf("  cpu %.2f+%.2f us/req", u, sy)
	}
	b.progress("[%d/%d] round %d %s c=%d %-32s %9.0f req/s  p50 %6.2f ms  p99 %7.2f ms  rss %s%s  errors %s",
		n, total, round, c.file, c.conns, s.name, smp.res.rps, smp.res.p50, smp.res.p99, rss, cpu, smp.res.errs)
}

// cpuPerRequest converts a sample's CPU time, in clock ticks of 1/clkTck s,
// to microseconds per request.
func cpuPerRequest(smp sample, clkTck int) (user, sys float64) {
	if smp.cpu == nil || smp.res.requests == 0 || clkTck <= 0 {
		return 0, 0
	}
	per := 1e6 / float64(clkTck) / float64(smp.res.requests)
	return float64(smp.cpu.user) * per, float64(smp.cpu.sys) * per
}

// measureOne runs wrk once against s while sampling the proxy's RSS; in
// cpuCell it also reads the CPU time of the proxy's processes before and
// after.
func (b *bench) measureOne(ctx context.Context, s *setup, c cell) sample {
	var smp sample
	stopRSS := func() int64 { return 0 }
	countCPU := s.proc != nil && c == cpuCell
	var user0, sys0 uint64
	if s.proc != nil {
		stopRSS = sampleRSS(s.proc.pgid(), 200*time.Millisecond)
		if countCPU {
			user0, sys0 = groupCPU(s.proc.pgid())
		}
	}
	smp.res, smp.err = runWrk(ctx, b.tools.wrk, "http://"+s.addr+"/"+c.file, c.conns, b.opts.duration)
	if countCPU {
		// Before stopping the RSS sampler, so its last reading is not
		// waited for; a process that exited meanwhile would take its
		// ticks along (none should: nothing is upgraded here).
		if user1, sys1 := groupCPU(s.proc.pgid()); user1 >= user0 && sys1 >= sys0 {
			smp.cpu = &cpuUse{user: user1 - user0, sys: sys1 - sys0}
		}
	}
	smp.peakRSS = stopRSS()
	if s.proc != nil && s.proc.exited() && smp.err == nil {
		smp.err = fmt.Errorf("bench: %s exited during the run: %v", s.name, s.proc.waitErr)
	}
	return smp
}

// sampleRSS samples the RSS of process group pg every interval until the
// returned function is called, which returns the peak.
func sampleRSS(pg int, interval time.Duration) (stop func() int64) {
	var (
		mu   sync.Mutex
		peak int64
		wg   sync.WaitGroup
	)
	record := func() {
		v := groupRSS(pg)
		mu.Lock()
		peak = max(peak, v)
		mu.Unlock()
	}
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		record()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				record()
			}
		}
	}()
	return func() int64 {
		close(done)
		wg.Wait()
		record()
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// summary is the median over rounds of one setup in one cell.
type summary struct {
	rps, p50, p99 float64
	peakRSS       int64
	userUS, sysUS float64   // CPU microseconds per request
	cpuUS         float64   // median of user+system per run
	cpuRuns       int       // runs with a CPU reading
	errs          wrkErrors // summed over rounds
	runs, failed  int
	firstErr      error
}

func summarize(ss []sample, clkTck int) summary {
	var sum summary
	var rps, p50, p99, rss, user, sys, total []float64
	for _, s := range ss {
		sum.runs++
		if s.err != nil {
			sum.failed++
			if sum.firstErr == nil {
				sum.firstErr = s.err
			}
			continue
		}
		rps = append(rps, s.res.rps)
		p50 = append(p50, s.res.p50)
		p99 = append(p99, s.res.p99)
		rss = append(rss, float64(s.peakRSS))
		sum.errs = sum.errs.add(s.res.errs)
		if s.cpu != nil && s.res.requests > 0 {
			u, sy := cpuPerRequest(s, clkTck)
			user, sys, total = append(user, u), append(sys, sy), append(total, u+sy)
		}
	}
	sum.rps, sum.p50, sum.p99 = median(rps), median(p50), median(p99)
	sum.peakRSS = int64(median(rss))
	sum.userUS, sum.sysUS, sum.cpuUS, sum.cpuRuns = median(user), median(sys), median(total), len(user)
	return sum
}

// median of xs; 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
