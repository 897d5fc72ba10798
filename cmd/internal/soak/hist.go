package soak

import (
	"math/bits"
	"time"
)

// hist is a log-linear latency histogram in the manner of HDR histograms:
// values below 256 ns are counted exactly, larger ones in 128 buckets per
// power of two, so a percentile read from it is within 0.8% of the true
// value. Its size is fixed (histLen
// counters) whatever the number of values, which is what keeps a long soak's
// memory flat. The zero value is empty and ready; it is not safe for
// concurrent use.
type hist struct {
	counts [histLen]uint32
	n      uint64
	max    int64
}

const (
	subBits = 8
	subN    = 1 << subBits
	// Values up to 2^41 ns (36 minutes) get their own bucket; longer ones
	// share the last.
	histLen = subN + (41-subBits)*subN/2
)

// bucket maps a value in ns to its counter: exact below subN, then subN/2
// buckets per power of two (the top bit is implied).
func bucket(v int64) int {
	if v < subN {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - subBits // >= 1; v>>e has subBits bits
	i := subN + (e-1)*subN/2 + int(uint64(v)>>e) - subN/2
	return min(i, histLen-1)
}

// bucketTop is the largest value that falls in bucket i.
func bucketTop(i int) int64 {
	if i < subN {
		return int64(i)
	}
	e := (i-subN)/(subN/2) + 1
	off := (i - subN) % (subN / 2)
	return (int64(subN/2+off+1) << e) - 1
}

func (h *hist) add(ns int64) {
	h.counts[bucket(ns)]++
	h.n++
	h.max = max(h.max, ns)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

func (h *hist) reset() { *h = hist{} }

// quantile is the nearest-rank q-quantile in ns: the top of the bucket that
// holds it, never above the largest value seen.
func (h *hist) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.999999)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			if i == histLen-1 {
				return h.max
			}
			return min(bucketTop(i), h.max)
		}
	}
	return h.max
}

// latencies summarizes h in milliseconds.
func (h *hist) latencies() Latencies {
	ms := func(ns int64) float64 { return float64(ns) / float64(time.Millisecond) }
	return Latencies{Count: int(h.n), P50: ms(h.quantile(0.50)), P90: ms(h.quantile(0.90)), P99: ms(h.quantile(0.99)), Max: ms(h.max)}
}
