package backends

import (
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/batonproxy/baton/internal/shmem"
)

// Checking the state table a previous generation passed on (Issue 21: one
// corrupt length word made every later generation panic at its start, so
// no upgrade could succeed until baton was restarted from scratch).
//
// OpenStateTable checks every slot before this process uses any, and
// repairs in place what it finds corrupt. In place, because the older
// generations still running hold pointers into these slots and keep
// writing them; a slot is never moved or freed under them. Each repair is a
// compare-and-swap from the corrupt value read to the rebuilt one: if a
// writer changed the field in between, the check runs again on what it
// wrote. The rules, field by field:
//
//   - claim must be free, being written, claimed or retired; name must be
//     a valid backend name, zero-padded. A wrong name length is rebuilt
//     from the name's bytes. A slot whose name cannot be read, and every
//     slot of a name found twice, is retired: never looked up or claimed
//     again (an older generation may still write it). A free slot must be
//     all zeros; one that is not is claimed again if it has a name, retired
//     if not.
//   - A word with an unknown phase or flag says nothing that can be
//     trusted, drained included. If the slot names a restart owner that
//     still runs, the backend stays out of rotation (restarting) and that
//     owner readmits it as it finishes (or, if it dies, the serving
//     process adopts the restart). Otherwise the backend is marked down,
//     not restarting: its next passing health check readmits it. So a
//     backend whose state is lost is never readmitted in the middle of a
//     restart that is still running, and never kept out for good.
//   - A restart phase with no owner recorded, still so after a moment (the
//     owner is stored right after the phase), is a restart whose process
//     died before recording itself: adoptOrphan cannot take it (owner 0)
//     and it would keep the backend out for good; it is ended the same
//     way, down until a health check passes.
//   - owner must be a pid Linux can give, and ownerGen name one; a bad
//     owner is rebuilt from ownerGen, a bad ownerGen cleared.
//   - A generation entry whose id names no pid is a dead generation's:
//     freed, its count taken from the global one (takeCount bounds that).
//     A count beyond any number of requests (maxEntry) is zeroed.
//   - The global in-flight count must be between 0 and maxInflight and at
//     least the sum of the entries (the global count goes up first and
//     down last); else it is rebuilt as that sum. A count above the truth
//     by a plausible number cannot be told from real requests (of an older
//     binary that counts globally only); it costs a drain_timeout per
//     restart until the generations that made it are gone.
//   - since and routableSince must be times baton could have written
//     (after 2015, less than a day ahead; since not 0 in a restart phase);
//     a bad since becomes now, a bad routableSince 0 (no slow start). The
//     last restart result, shown by status only, is cleared if any of its
//     fields is out of range or its seqlock stays odd; a wrong length is
//     rebuilt from the text.
//
// The epoch is a counter compared for equality: every value is valid.

// Bounds on what a field of the state table may hold.
const (
	maxPID      = 1<<22 - 1             // PID_MAX_LIMIT on 64-bit Linux is 2^22
	maxInflight = 1 << 24               // far above any file descriptor limit
	maxEntry    = maxInflight / maxGens // one generation's share: the entries never add up past maxInflight
	timeAhead   = 24 * time.Hour
	maxDuration = 366 * 24 * time.Hour
)

// oldestTime is before any baton ran: a time before it was not written by one.
var oldestTime = time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

// settleDelay is how long the check waits before it reads again a field
// another process may be in the middle of updating.
var settleDelay = 2 * time.Millisecond

// settleTries is how many readings settleDelay apart must all disagree
// before the check takes a disagreement for corruption.
const settleTries = 5

// stateCheck is one run of the check over a table.
type stateCheck struct {
	t        *StateTable
	now      int64
	alive    func(genID) bool // genAlive
	pidAlive func(int) bool   // alive
	out      []shmem.Repair
	retired  bool
}

// check validates every slot of t and repairs what is corrupt; it
// returns what it repaired. Slots that lose their state make the
// backends claimed afterwards start down (startDown).
func (t *StateTable) check(now time.Time, alive func(genID) bool, pidAlive func(int) bool) []shmem.Repair {
	c := &stateCheck{t: t, now: now.UnixNano(), alive: alive, pidAlive: pidAlive}
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
		idx := names[n]
		if len(idx) == 1 {
			keep = append(keep, idx[0])
			continue
		}
		for _, i := range idx {
			c.retire(i, claimed, n, "name", fmt.Sprintf("%q is the name of slots %v: which one the older generations use cannot be told", n, idx))
		}
	}
	slices.Sort(keep)
	for _, i := range keep {
		c.fields(i, t.slotAt(i).loadName())
	}
	if c.retired {
		t.startDown = true
	}
	return c.out
}

func (c *stateCheck) add(i int, name, field, problem, action string) {
	e := fmt.Sprintf("slot %d", i)
	if name != "" {
		e += " (" + name + ")"
	}
	c.out = append(c.out, shmem.Repair{Table: stateName, Entry: e, Field: field, Problem: problem, Action: action})
}

// claim checks slot i's claim and name; it returns the name if the slot
// is claimed once checked.
func (c *stateCheck) claim(i int) (string, bool) {
	s := c.t.slotAt(i)
	for try := 0; try < 3; try++ {
		cl := atomic.LoadUint64(&s.claim)
		if cl == claimRetired || cl == claimFree && s.blank() {
			return "", false
		}
		n := atomic.LoadUint64(&s.nameLen)
		name, fixed, ok := shmem.Name(s.name[:], n, validName)
		if !ok {
			what := fmt.Sprintf("unreadable (length %d, bytes %s)", n, shmem.Printable(s.name[:], maxNameLen))
			if cl == claimFree {
				what = "empty on a free slot that holds state"
			}
			if c.retire(i, cl, "", "name", what) {
				return "", false
			}
			continue
		}
		if fixed {
			if !atomic.CompareAndSwapUint64(&s.nameLen, n, uint64(len(name))) {
				continue
			}
			c.add(i, name, "name length", fmt.Sprintf("%d, but the name reads %q", n, name), "length rebuilt from the name")
		}
		if cl != claimed {
			if !atomic.CompareAndSwapUint64(&s.claim, cl, claimed) {
				continue
			}
			c.add(i, name, "claim", fmt.Sprintf("%d on a slot named %q", cl, name), "marked claimed")
		}
		return name, true
	}
	c.add(i, "", "claim", "changing while checked", "left as it is")
	return "", false
}

// retire marks slot i retired if its claim is still cl.
func (c *stateCheck) retire(i int, cl uint64, name, field, problem string) bool {
	if !atomic.CompareAndSwapUint64(&c.t.slotAt(i).claim, cl, claimRetired) {
		return false
	}
	c.retired = true
	c.add(i, name, field, problem, "slot retired; a backend that has no slot now gets a new one and starts down until a health check passes")
	return true
}

// blank reports whether every field of s is zero, as in a slot never claimed.
func (s *stateSlot) blank() bool {
	words := unsafe.Slice((*uint64)(unsafe.Pointer(s)), unsafe.Sizeof(*s)/8)
	return shmem.Zero(words)
}

func (c *stateCheck) plausibleTime(ns int64) bool {
	return ns >= oldestTime && ns <= c.now+int64(timeAhead)
}

// fields checks everything in claimed slot i but the claim and the name.
func (c *stateCheck) fields(i int, name string) {
	s := c.t.slotAt(i)
	c.gens(i, name, s)
	c.inflight(i, name, s)
	c.owner(i, name, s)
	c.word(i, name, s)
	c.times(i, name, s)
	c.result(i, name, s)
}

func (c *stateCheck) gens(i int, name string, s *stateSlot) {
	for k := range s.gens {
		e := &s.gens[k]
		field := fmt.Sprintf("generation entry %d", k)
		id := atomic.LoadUint64(&e.id)
		switch {
		case id == genReclaiming:
			// Another process frees it now, or died doing so: its count
			// is already out of the entry, or stays counted (the safe side).
		case id == 0:
			if n := atomic.LoadInt64(&e.count); n != 0 && atomic.CompareAndSwapInt64(&e.count, n, 0) {
				c.add(i, name, field, fmt.Sprintf("free but counting %d", n), "count zeroed")
			}
		case !genID(id).plausible():
			if !atomic.CompareAndSwapUint64(&e.id, id, genReclaiming) {
				continue
			}
			n := s.takeCount(e)
			atomic.StoreUint64(&e.id, 0)
			c.add(i, name, field, fmt.Sprintf("id %#x names no process", id), fmt.Sprintf("entry freed, %d taken out of the in-flight count", n))
		default:
			if n := atomic.LoadInt64(&e.count); (n < -maxEntry || n > maxEntry) && atomic.CompareAndSwapInt64(&e.count, n, 0) {
				c.add(i, name, field, fmt.Sprintf("count %d of generation pid %d", n, genID(id).pid()), "count zeroed (its requests stay in the in-flight count until they end)")
			}
		}
	}
}

func (c *stateCheck) entrySum(s *stateSlot) int64 {
	var sum int64
	for k := range s.gens {
		sum += max(atomic.LoadInt64(&s.gens[k].count), 0)
	}
	return sum
}

func (c *stateCheck) inflight(i int, name string, s *stateSlot) {
	for try := 0; try < 100; try++ {
		g := atomic.LoadInt64(&s.inflight)
		sum := c.entrySum(s)
		if g >= 0 && g <= maxInflight && g >= sum {
			return
		}
		if g >= 0 && g <= maxInflight {
			// Below the entries: a request may have started or ended
			// between the reads. Corrupt only if every reading says so.
			for k := 1; k < settleTries && g < sum; k++ {
				time.Sleep(settleDelay)
				g, sum = atomic.LoadInt64(&s.inflight), c.entrySum(s)
			}
			if g >= sum {
				return
			}
		}
		if atomic.CompareAndSwapInt64(&s.inflight, g, sum) {
			c.add(i, name, "in-flight count", fmt.Sprintf("%d, the generations' entries count %d", g, sum), fmt.Sprintf("rebuilt as %d", sum))
			return
		}
	}
}

func (c *stateCheck) owner(i int, name string, s *stateSlot) {
	if og := atomic.LoadUint64(&s.ownerGen); og != 0 && !genID(og).plausible() && atomic.CompareAndSwapUint64(&s.ownerGen, og, 0) {
		c.add(i, name, "restart owner id", fmt.Sprintf("%#x names no process", og), "cleared")
	}
	if o := atomic.LoadInt64(&s.owner); o < 0 || o > maxPID {
		var now int64
		if og := genID(atomic.LoadUint64(&s.ownerGen)); og != 0 {
			now = int64(og.pid())
		}
		if atomic.CompareAndSwapInt64(&s.owner, o, now) {
			c.add(i, name, "restart owner", fmt.Sprintf("%d is no pid", o), fmt.Sprintf("set to %d, from the owner's id", now))
		}
	}
}

// ownerRuns reports whether the restart owner recorded in s runs.
func (c *stateCheck) ownerRuns(s *stateSlot) (int64, bool) {
	o := atomic.LoadInt64(&s.owner)
	if o <= 0 {
		return 0, false
	}
	if og := genID(atomic.LoadUint64(&s.ownerGen)); og != 0 && og.pid() == int(o) {
		return o, c.alive(og)
	}
	return o, c.pidAlive(int(o))
}

func (c *stateCheck) word(i int, name string, s *stateSlot) {
	for try := 0; try < 100; try++ {
		w := s.load()
		var problem string
		switch {
		case !w.valid():
			problem = fmt.Sprintf("%#x holds an unknown phase or flag (drained or not cannot be told)", uint64(w))
		case w.phase() != PhaseNone && atomic.LoadInt64(&s.owner) == 0:
			time.Sleep(settleDelay)
			if s.load() != w || atomic.LoadInt64(&s.owner) != 0 {
				continue
			}
			problem = fmt.Sprintf("phase %s with no restart owner recorded", w.phase())
		default:
			return
		}
		nw, action := stateWord(bitDown), "marked down, not restarting: readmitted by its next passing health check"
		if w.valid() {
			nw = w.withPhase(PhaseNone).with(bitDown, true) // its flags hold
		} else if o, runs := c.ownerRuns(s); runs {
			nw = stateWord(PhaseRestarting) | bitDown
			action = fmt.Sprintf("kept out of rotation as restarting: its owner, baton pid %d, runs and readmits it when the restart ends", o)
		}
		if s.cas(w, nw) {
			c.add(i, name, "state", problem, action)
			return
		}
	}
	c.add(i, name, "state", "changing while checked", "left as it is")
}

func (c *stateCheck) times(i int, name string, s *stateSlot) {
	// In a restart phase the phase start is shown and compared with the
	// owner's start time: 0 is no time then either.
	restarting := s.load().phase() != PhaseNone
	if v := atomic.LoadInt64(&s.since); (v != 0 || restarting) && !c.plausibleTime(v) && atomic.CompareAndSwapInt64(&s.since, v, c.now) {
		c.add(i, name, "phase start", fmt.Sprintf("%d is no time baton wrote", v), "set to now")
	}
	if v := atomic.LoadInt64(&s.routableSince); v != 0 && !c.plausibleTime(v) && atomic.CompareAndSwapInt64(&s.routableSince, v, 0) {
		c.add(i, name, "routable since", fmt.Sprintf("%d is no time baton wrote", v), "cleared (no slow start)")
	}
}

func (c *stateCheck) result(i int, name string, s *stateSlot) {
	seq := atomic.LoadUint64(&s.lastSeq)
	if seq&1 != 0 {
		time.Sleep(settleDelay)
		if atomic.LoadUint64(&s.lastSeq) != seq {
			return // a writer finished: what it wrote is checked by the next generation
		}
		c.clearResult(i, name, s, seq, fmt.Sprintf("sequence %d stays odd (a writer died in the middle)", seq))
		return
	}
	n := atomic.LoadUint64(&s.lastLen)
	ok, dur, at := atomic.LoadUint64(&s.lastOK), atomic.LoadInt64(&s.lastDur), atomic.LoadInt64(&s.lastAt)
	var problem string
	switch {
	case ok > 1:
		problem = fmt.Sprintf("ok is %d", ok)
	case dur < 0 || dur > int64(maxDuration):
		problem = fmt.Sprintf("duration %d", dur)
	case at != 0 && !c.plausibleTime(at):
		problem = fmt.Sprintf("time %d is no time baton wrote", at)
	case n > maxReasonLen:
		text, _, readable := shmem.Name(s.reason[:], n, func(string) bool { return true })
		if readable && atomic.LoadUint64(&s.lastSeq) == seq && atomic.CompareAndSwapUint64(&s.lastLen, n, uint64(len(text))) {
			c.add(i, name, "last restart error length", fmt.Sprintf("%d, more than the %d bytes it can be", n, maxReasonLen), fmt.Sprintf("rebuilt from the text (%d bytes)", len(text)))
			return
		}
		problem = fmt.Sprintf("error length %d", n)
	default:
		return
	}
	c.clearResult(i, name, s, seq, problem)
}

// clearResult forgets the last restart result, under its seqlock.
func (c *stateCheck) clearResult(i int, name string, s *stateSlot, seq uint64, problem string) {
	if !atomic.CompareAndSwapUint64(&s.lastSeq, seq, seq|1) {
		return // a writer is at it: it leaves a result of its own
	}
	atomic.StoreUint64(&s.lastLen, 0)
	shmem.StoreBytes(s.reason[:], nil)
	atomic.StoreUint64(&s.lastOK, 0)
	atomic.StoreInt64(&s.lastDur, 0)
	atomic.StoreInt64(&s.lastAt, 0)
	atomic.StoreUint64(&s.lastSeq, (seq|1)+1)
	c.add(i, name, "last restart result", problem, "cleared (status shows no last restart)")
}
