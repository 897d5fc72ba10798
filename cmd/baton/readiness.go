package main

import (
	"strings"
	"sync"
	"time"

	"github.com/batonproxy/baton/backends"
)

// Readiness states: what the status page's badge says, and /readyz.
const (
	stReady      = "ready"       // every backend takes requests
	stDegraded   = "degraded"    // some backends are out, at least one takes requests
	stHolding    = "holding"     // none takes requests now, one is restarting: requests wait for it
	stNotServing = "not-serving" // none takes requests, and none is on its way back
	stStopping   = "stopping"    // a final stop has begun
)

// readiness sums up whether baton can serve: the state and a sentence.
// /readyz answers 503 exactly for stNotServing and stStopping: while a
// backend restarts, baton holds the requests and answers them when it is
// back, so a balancer in front must keep sending (pulling baton at every
// restart of its only backend would fail the requests baton holds).
func readiness(stopping bool, bs []backends.Status) (state, detail string) {
	if stopping {
		return stStopping, "stopping: finishing the requests in flight"
	}
	var in, out, coming []string
	for _, b := range bs {
		switch {
		case b.State == "up":
			in = append(in, b.Name)
		case !b.Drained && (b.State == "draining" || b.State == "restarting" || b.State == "starting"):
			coming = append(coming, b.Name)
			out = append(out, b.Name+" "+b.State)
		default:
			out = append(out, b.Name+" "+b.State)
		}
	}
	switch {
	case len(out) == 0:
		return stReady, "every backend takes requests"
	case len(in) > 0:
		return stDegraded, strings.Join(out, ", ") + "; " + strings.Join(in, ", ") + " take" + plural(len(in)) + " the requests"
	case len(coming) > 0:
		return stHolding, "no backend takes requests now (" + strings.Join(out, ", ") + "): they are held until " + strings.Join(coming, " or ") + " is back"
	default:
		return stNotServing, "no backend can take requests (" + strings.Join(out, ", ") + ")"
	}
}

func plural(n int) string {
	if n == 1 {
		return "s"
	}
	return ""
}

// servesState reports whether /readyz says 200 in state st.
func servesState(st string) bool { return st != stNotServing && st != stStopping }

// rateSample is the request counters at one moment.
type rateSample struct {
	t              time.Time
	requests, errs uint64
}

// rateWindow is how far back the status page's rates look.
const rateWindow = 10 * time.Second

// rates keeps a sample of the shared request counters every second (the
// serving process's sampler, see runRates), so that the status page can
// show requests and errors per second. The counters are every
// generation's, so the rates go on across an upgrade; a new process has
// its first rate a second after it starts. It is safe for concurrent use.
type rates struct {
	mu   sync.Mutex
	buf  [16]rateSample
	n    int // samples in buf
	next int
}

func (r *rates) add(s rateSample) {
	r.mu.Lock()
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	r.n = min(r.n+1, len(r.buf))
	r.mu.Unlock()
}

// pageRates is the rates shown on the status page.
type pageRates struct {
	WindowS       float64 `json:"window_s"` // what the rates are over
	RequestsPerS  float64 `json:"requests_per_s"`
	ErrorsPerS    float64 `json:"errors_per_s"` // 5xx answers
	RequestsTotal uint64  `json:"requests_total"`
	ErrorsTotal   uint64  `json:"errors_total"`
}

// over computes the rates from the newest sample at least rateWindow
// before now, or the oldest one; nil if the samples span under half a
// second.
func (r *rates) over(now rateSample) *pageRates {
	r.mu.Lock()
	defer r.mu.Unlock()
	var base *rateSample
	for k := 1; k <= r.n; k++ { // newest to oldest
		s := &r.buf[(r.next-k+len(r.buf))%len(r.buf)]
		base = s
		if now.t.Sub(s.t) >= rateWindow {
			break
		}
	}
	if base == nil || now.t.Sub(base.t) < 500*time.Millisecond || now.requests < base.requests || now.errs < base.errs {
		return nil
	}
	d := now.t.Sub(base.t).Seconds()
	return &pageRates{
		WindowS:       d,
		RequestsPerS:  float64(now.requests-base.requests) / d,
		ErrorsPerS:    float64(now.errs-base.errs) / d,
		RequestsTotal: now.requests, ErrorsTotal: now.errs,
	}
}
