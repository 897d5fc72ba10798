package soak

import (
	"net/http"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// collector accumulates results in constant memory per second of the run.
// A result belongs to the second its request started in. Results arrive
// out of that order (a slow request ends late), so the histograms of the
// last `window` seconds stay open; a second older than that is summarized
// into its Second row, merged into the near-events histogram if an event
// was within a second of it, and its histogram is reused. A result that
// ends later than the window (only if it outlives the request timeout)
// still counts everywhere but in that second's percentiles.
type collector struct {
	start  time.Time
	window int     // seconds kept open
	ev     *events // for the near-events figures, read when a second closes

	mu     sync.Mutex
	all    hist
	near   hist
	open   map[int]*hist // by second, the seconds not yet closed
	free   []*hist
	secs   []Second // one per second so far
	closed int      // seconds below this are closed
	byKnd  map[string]int
	fails  []Failure
	nOK    int
	nFail  int
}

func newCollector(start time.Time, timeout time.Duration, ev *events) *collector {
	return &collector{
		start: start, ev: ev, window: int(timeout/time.Second) + 2,
		open: map[int]*hist{}, byKnd: map[string]int{},
	}
}

func (c *collector) add(res *vegeta.Result) {
	kind := Classify(res.Code, res.Error)
	at := res.Timestamp.Sub(c.start)
	lat := res.Latency.Nanoseconds()
	sec := max(int(at/time.Second), 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.secs) <= sec {
		c.secs = append(c.secs, Second{T: len(c.secs)})
	}
	c.all.add(lat)
	s := &c.secs[sec]
	if kind == "" {
		c.nOK++
		s.OK++
	} else {
		c.nFail++
		s.Failed++
		c.byKnd[kind]++
		if len(c.fails) < maxFailures {
			msg := res.Error
			if msg == "" {
				msg = http.StatusText(int(res.Code))
			}
			c.fails = append(c.fails, Failure{At: at.Seconds(), Kind: kind, Error: msg, URL: res.URL})
		}
	}
	if sec < c.closed {
		s.Max = max(s.Max, float64(lat)/float64(time.Millisecond))
		return
	}
	h := c.open[sec]
	if h == nil {
		if n := len(c.free); n > 0 {
			h, c.free = c.free[n-1], c.free[:n-1]
		} else {
			h = new(hist)
		}
		c.open[sec] = h
	}
	h.add(lat)
	c.closeLocked(sec - c.window)
}

// closeLocked closes every open second up to and including last.
func (c *collector) closeLocked(last int) {
	if last < c.closed {
		return
	}
	var spans []span
	if c.ev != nil {
		spans = c.ev.spans()
	}
	for s := c.closed; s <= last; s++ {
		h := c.open[s]
		if h == nil {
			continue
		}
		l := h.latencies()
		c.secs[s].P50, c.secs[s].P99, c.secs[s].Max = l.P50, l.P99, l.Max
		from := c.start.Add(time.Duration(s) * time.Second)
		for _, sp := range spans {
			if sp.overlaps(from, from.Add(time.Second)) {
				c.near.merge(h)
				break
			}
		}
		delete(c.open, s)
		h.reset()
		c.free = append(c.free, h)
	}
	c.closed = last + 1
}

// snapshot is for the progress line: counts so far and the p99 of the
// last full second.
func (c *collector) snapshot() (ok, failed int, p99 float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	last := int(time.Since(c.start)/time.Second) - 1
	if h := c.open[last]; h != nil {
		p99 = h.latencies().P99
	}
	return c.nOK, c.nFail, p99
}

// finish closes every second and fills r's figures; r.Duration and
// r.Events must be set.
func (c *collector) finish(r *Report) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.secs) <= int(r.Duration/time.Second) {
		c.secs = append(c.secs, Second{T: len(c.secs)})
	}
	c.closeLocked(len(c.secs) - 1)
	r.Requests, r.OK, r.Failed = int(c.all.n), c.nOK, c.nFail
	r.ByKind = c.byKnd
	r.Failures = c.fails
	if r.Duration > 0 {
		r.Achieved = float64(r.Requests) / r.Duration.Seconds()
	}
	r.Latency = c.all.latencies()
	r.NearEvents = c.near.latencies()
	r.Seconds = c.secs
}
