package metrics

import (
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/batonproxy/baton/internal/shmem"
)

// Checking the table a previous generation passed on (Issue 21: a corrupt
// name length made every later generation panic at its start). Repairs
// are made in place by compare-and-swap: older generations keep adding
// into the same slots.
//
//   - A slot's claim must be free, being written, claimed or retired, its
//     name a backend name or NoBackend, zero-padded. A wrong length is
//     rebuilt from the bytes; a slot with no readable name, and every slot
//     of a name found twice, is retired (its counters are lost: the
//     backend gets a new slot, which Prometheus sees as a counter reset).
//     A free slot that is not all zeros is claimed again if it has a name,
//     retired if not.
//   - A histogram whose count does not match its buckets (still so after a
//     moment: observations add to both) is reset to zero, a reset again.
//     Counters are not checked: every value is one a counter can hold.
//   - A generation entry must have a known state and, unless free, a pid
//     Linux can give, a generation number (0: unknown) and times baton could
//     have written. An entry with a bad pid is freed; one with a bad state
//     whose process runs is marked draining (every generation but the one
//     starting is serving or about to drain); a bad generation number
//     becomes 0 and a bad time now.

const (
	maxPID    = 1<<22 - 1
	maxGenNum = 1 << 31
	timeAhead = 24 * time.Hour
)

var oldestTime = time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// settleDelay is how long the check waits before it reads again what a
// writer may be in the middle of.
var settleDelay = 2 * time.Millisecond

// settleTries is how many readings settleDelay apart must all disagree
// before a check takes a disagreement for corruption.
const settleTries = 5

type tableCheck struct {
	t   *Table
	now int64
	out []shmem.Repair
}

func (t *Table) check(now time.Time) []shmem.Repair {
	c := &tableCheck{t: t, now: now.UnixNano()}
	c.hist("global", "upgrade duration", &t.g.upgradeTook)
	c.hist("global", "request duration", &t.g.total)
	c.hist("global", "hold duration", &t.g.hold)
	for i := range t.g.gens {
		c.gen(i)
	}
	names := map[string][]int{}
	for i := 0; i < maxSlots; i++ {
		if name, ok := c.claim(i); ok {
			names[name] = append(names[name], i)
		}
	}
	keys := make([]string, 0, len(names))
	for n := range names {
		keys = append(keys, n)
	}
	sort.Strings(keys)
	var keep []int
	for _, n := range keys {
		if idx := names[n]; len(idx) == 1 {
			keep = append(keep, idx[0])
		} else {
			for _, i := range idx {
				c.retire(i, claimed, n, fmt.Sprintf("%q is the name of slots %v", n, idx))
			}
		}
	}
	slices.Sort(keep)
	for _, i := range keep {
		s := t.slotAt(i)
		e := c.entry(i, s.loadName())
		c.hist(e, "upstream duration", &s.upstream)
		for k := range s.steps {
			c.hist(e, stepNames[k]+" step duration", &s.steps[k])
		}
	}
	return c.out
}

func (c *tableCheck) add(entry, field, problem, action string) {
	c.out = append(c.out, shmem.Repair{Table: tableName, Entry: entry, Field: field, Problem: problem, Action: action})
}

func (c *tableCheck) entry(i int, name string) string {
	if name == "" {
		return fmt.Sprintf("slot %d", i)
	}
	return fmt.Sprintf("slot %d (%s)", i, name)
}

// validSlotName is what Register stores: a backend name (1-64 of
// [A-Za-z0-9._-], as config checks) or NoBackend.
func validSlotName(s string) bool {
	if s == NoBackend {
		return true
	}
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for _, r := range []byte(s) {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func (c *tableCheck) claim(i int) (string, bool) {
	s := c.t.slotAt(i)
	for try := 0; try < 3; try++ {
		cl := atomic.LoadUint64(&s.claim)
		if cl == claimRetired || cl == claimFree && s.blank() {
			return "", false
		}
		n := atomic.LoadUint64(&s.nameLen)
		name, fixed, ok := shmem.Name(s.name[:], n, validSlotName)
		if !ok {
			what := fmt.Sprintf("unreadable (length %d, bytes %s)", n, shmem.Printable(s.name[:], maxNameLen))
			if cl == claimFree {
				what = "empty on a free slot that holds counts"
			}
			if c.retire(i, cl, "", what) {
				return "", false
			}
			continue
		}
		if fixed {
			if !atomic.CompareAndSwapUint64(&s.nameLen, n, uint64(len(name))) {
				continue
			}
			c.add(c.entry(i, name), "name length", fmt.Sprintf("%d, but the name reads %q", n, name), "length rebuilt from the name")
		}
		if cl != claimed {
			if !atomic.CompareAndSwapUint64(&s.claim, cl, claimed) {
				continue
			}
			c.add(c.entry(i, name), "claim", fmt.Sprintf("%d on a slot named %q", cl, name), "marked claimed")
		}
		return name, true
	}
	c.add(c.entry(i, ""), "claim", "changing while checked", "left as it is")
	return "", false
}

func (c *tableCheck) retire(i int, cl uint64, name, problem string) bool {
	if !atomic.CompareAndSwapUint64(&c.t.slotAt(i).claim, cl, claimRetired) {
		return false
	}
	c.add(c.entry(i, name), "name", problem, "slot retired; its backend's counters start again from zero in a new slot")
	return true
}

// blank reports whether every field of s is zero.
func (s *slot) blank() bool {
	return shmem.Zero(unsafe.Slice((*uint64)(unsafe.Pointer(s)), unsafe.Sizeof(*s)/8))
}

// histSum is the sum of h's buckets and whether those past the last bound
// are zero, as observe leaves them.
func histSum(h *hist) (sum uint64, tidy bool) {
	tidy = true
	for i := range h.buckets {
		n := atomic.LoadUint64(&h.buckets[i])
		if i > len(Bounds) && n != 0 {
			tidy = false
		}
		sum += n
	}
	return sum, tidy
}

// hist resets h if its count and its buckets disagree. observe adds to a
// bucket before the count, so under load one reading often disagrees; a
// corrupt histogram disagrees every time, settleTries readings apart.
func (c *tableCheck) hist(entry, field string, h *hist) {
	var sum, count uint64
	var tidy bool
	for try := 0; try < settleTries; try++ {
		if try > 0 {
			time.Sleep(settleDelay)
		}
		sum, tidy = histSum(h)
		count = atomic.LoadUint64(&h.count)
		if tidy && sum == count {
			return
		}
	}
	for i := range h.buckets {
		atomic.StoreUint64(&h.buckets[i], 0)
	}
	atomic.StoreUint64(&h.sum, 0)
	atomic.StoreUint64(&h.count, 0)
	problem := fmt.Sprintf("count %d, its buckets hold %d", count, sum)
	if !tidy {
		problem = "counts in buckets past the last bound"
	}
	c.add(entry, field+" histogram", problem, "reset to zero")
}

func (c *tableCheck) gen(i int) {
	g := &c.t.g.gens[i]
	entry := fmt.Sprintf("generation entry %d", i)
	st := atomic.LoadUint64(&g.state)
	if st == genFree {
		return
	}
	pid := atomic.LoadInt64(&g.pid)
	if pid < 1 || pid > maxPID {
		if atomic.CompareAndSwapUint64(&g.state, st, genFree) {
			atomic.StoreInt64(&g.pid, 0)
			c.add(entry, "pid", fmt.Sprintf("%d is no pid", pid), "entry freed")
		}
		return
	}
	if st >= uint64(len(genStateNames)) {
		if !alive(pid) {
			if atomic.CompareAndSwapUint64(&g.state, st, genFree) {
				atomic.StoreInt64(&g.pid, 0)
				c.add(entry, "state", fmt.Sprintf("%d is no state, and pid %d is gone", st, pid), "entry freed")
			}
			return
		}
		if atomic.CompareAndSwapUint64(&g.state, st, genDraining) {
			c.add(entry, "state", fmt.Sprintf("%d is no state (pid %d)", st, pid), "marked draining")
		}
	}
	if n := atomic.LoadInt64(&g.gen); (n < 0 || n > maxGenNum) && atomic.CompareAndSwapInt64(&g.gen, n, 0) {
		c.add(entry, "generation", fmt.Sprintf("%d (pid %d)", n, pid), "set to 0 (unknown)")
	}
	for _, f := range []struct {
		name string
		p    *int64
	}{{"start time", &g.started}, {"state time", &g.since}} {
		if v := atomic.LoadInt64(f.p); (v < oldestTime || v > c.now+int64(timeAhead)) && atomic.CompareAndSwapInt64(f.p, v, c.now) {
			c.add(entry, f.name, fmt.Sprintf("%d is no time baton wrote (pid %d)", v, pid), "set to now")
		}
	}
}
