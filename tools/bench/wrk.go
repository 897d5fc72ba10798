package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what the bench takes from wrk's output.
type wrkResult struct {
	requests int64
	seconds  float64 // as wrk measured it
	rps      float64
	p50, p99 float64 // milliseconds
	errs     wrkErrors
}

// wrkErrors are wrk's socket errors and non-2xx/3xx responses.
type wrkErrors struct {
	connect, read, write, timeout, non2xx int64
}

func (e wrkErrors) total() int64 { return e.connect + e.read + e.write + e.timeout + e.non2xx }

func (e wrkErrors) add(o wrkErrors) wrkErrors {
	return wrkErrors{e.connect + o.connect, e.read + o.read, e.write + o.write, e.timeout + o.timeout, e.non2xx + o.non2xx}
}

// String lists the nonzero counts, or "none".
func (e wrkErrors) String() string {
	var parts []string
	for _, c := range []struct {
		name string
		n    int64
	}{{"connect", e.connect}, {"read", e.read}, {"write", e.write}, {"timeout", e.timeout}, {"non-2xx", e.non2xx}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c.name, c.n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// wrkRun is a running wrk.
type wrkRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// startWrk starts wrk -t1 against url; it stops at d, at stop, or with SIGINT
// when ctx ends. wrk prints its results on SIGINT too.
func startWrk(ctx context.Context, wrk, url string, conns int, d time.Duration) (*wrkRun, error) {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	cmd := exec.CommandContext(ctx, wrk, "-t1", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(secs)+"s",
		"--timeout", "5s", "--latency", url)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	r := &wrkRun{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &r.out, &r.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start wrk: %w", err)
	}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	return r, nil
}

// stop asks wrk to finish now and print what it has.
func (r *wrkRun) stop() {
	select {
	case <-r.done:
	default:
		_ = r.cmd.Process.Signal(os.Interrupt)
	}
}

// wait waits for wrk to exit and parses its output.
func (r *wrkRun) wait() (wrkResult, error) {
	<-r.done
	out := r.out.String()
	if r.err != nil {
		return wrkResult{}, fmt.Errorf("bench: wrk: %w: %s", r.err, strings.TrimSpace(out))
	}
	res, err := parseWrk(out)
	if err != nil {
		return wrkResult{}, fmt.Errorf("bench: wrk output: %w", err)
	}
	return res, nil
}

// runWrk runs wrk for d and returns its result.
func runWrk(ctx context.Context, wrk, url string, conns int, d time.Duration) (wrkResult, error) {
	r, err := startWrk(ctx, wrk, url, conns, d)
	if err != nil {
		return wrkResult{}, err
	}
	return r.wait()
}

var (
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)`)
	reLatency  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	reSocket   = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads wrk 4's report, run with --latency.
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec line in %q", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reRequests.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(m[1], 10, 64)
		ms, err := toMillis(m[2], m[3])
		if err != nil {
			return r, err
		}
		r.seconds = ms / 1000
	}
	var seen int
	for _, m := range reLatency.FindAllStringSubmatch(out, -1) {
		ms, err := toMillis(m[2], m[3])
		if err != nil {
			return r, err
		}
		if m[1] == "50" {
			r.p50 = ms
		} else {
			r.p99 = ms
		}
		seen++
	}
	if seen != 2 {
		return r, fmt.Errorf("no 50%%/99%% latency lines (run with --latency) in %q", out)
	}
	if m := reSocket.FindStringSubmatch(out); m != nil {
		r.errs.connect, _ = strconv.ParseInt(m[1], 10, 64)
		r.errs.read, _ = strconv.ParseInt(m[2], 10, 64)
		r.errs.write, _ = strconv.ParseInt(m[3], 10, 64)
		r.errs.timeout, _ = strconv.ParseInt(m[4], 10, 64)
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		r.errs.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// toMillis converts a wrk time ("201.00", "us") to milliseconds.
func toMillis(num, unit string) (float64, error) {
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("time %s%s: %w", num, unit, err)
	}
	scale := map[string]float64{"us": 1e-3, "ms": 1, "s": 1e3, "m": 60e3, "h": 3600e3}[unit]
	return v * scale, nil
}
