package backends

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// fakeGens is a set of generations a test says are alive.
type fakeGens map[genID]bool

func (f fakeGens) alive(g genID) bool { return f[g] }

func TestStateSlotLayoutFits(t *testing.T) {
	if n := unsafe.Sizeof(stateSlot{}); n > slotSize {
		t.Fatalf("stateSlot is %d bytes, the table's slots %d", n, slotSize)
	}
	// The fields older binaries know keep their offsets.
	if off := unsafe.Offsetof(stateSlot{}.reason); off != 160 {
		t.Errorf("reason at offset %d, want 160 (layout is a contract between versions)", off)
	}
}

// TestReclaim: a dead generation's count leaves the global count and its
// entry is freed; live generations, this process and counts only in the
// global (an older binary's) are left alone.
func TestReclaim(t *testing.T) {
	self, live, dead1, dead2 := makeGenID(10, 1), makeGenID(11, 2), makeGenID(12, 3), makeGenID(11, 9) // dead2: pid 11 reused
	alive := fakeGens{live: true}.alive                                                                // self "dead" too: never reclaimed
	for _, tc := range []struct {
		name       string
		entries    map[genID]int64
		oldBinary  int64 // counted only globally
		wantGlobal int64
		wantFreed  []genID
	}{
		{"nothing dead", map[genID]int64{self: 1, live: 2}, 0, 3, nil},
		{"one dead", map[genID]int64{self: 1, live: 2, dead1: 2}, 0, 3, []genID{dead1}},
		{"reused pid is dead", map[genID]int64{live: 2, dead2: 5}, 0, 2, []genID{dead2}},
		{"dead with nothing in flight", map[genID]int64{dead1: 0}, 0, 0, []genID{dead1}},
		{"older binary's count stays", map[genID]int64{dead1: 2, dead2: 1}, 4, 4, []genID{dead1, dead2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTable(t).slotAt(0)
			var sum int64
			at := map[genID]*genEntry{}
			for g, n := range tc.entries {
				e := s.claimGen(g, alive)
				if e == nil {
					t.Fatal("no free entry")
				}
				atomic.StoreInt64(&e.count, n)
				at[g] = e
				sum += n
			}
			atomic.StoreInt64(&s.inflight, sum+tc.oldBinary)
			got := s.reclaim(self, alive)
			if g := atomic.LoadInt64(&s.inflight); g != tc.wantGlobal {
				t.Errorf("global after reclaim: %d, want %d", g, tc.wantGlobal)
			}
			if len(got) != len(tc.wantFreed) {
				t.Errorf("reclaimed %+v, want %d entries", got, len(tc.wantFreed))
			}
			for _, g := range tc.wantFreed {
				if id := atomic.LoadUint64(&at[g].id); id != 0 || atomic.LoadInt64(&at[g].count) != 0 {
					t.Errorf("entry of dead %x: id %x count %d, want freed", g, id, at[g].count)
				}
			}
			for g, e := range at {
				if g == self || g == live {
					if genID(atomic.LoadUint64(&e.id)) != g || atomic.LoadInt64(&e.count) != tc.entries[g] {
						t.Errorf("entry of %x was touched", g)
					}
				}
			}
		})
	}
}

// TestClaimGenFull: with every entry held by a live generation a new one
// counts globally only; once one of them dies its entry is reused, its
// count reclaimed first.
func TestClaimGenFull(t *testing.T) {
	s := newTable(t).slotAt(0)
	gens := fakeGens{}
	var first *genEntry
	for i := 0; i < maxGens; i++ {
		g := makeGenID(100+i, 1)
		gens[g] = true
		e := s.claimGen(g, gens.alive)
		if e == nil {
			t.Fatalf("entry %d: none free", i)
		}
		if i == 0 {
			first = e
		}
	}
	newcomer := makeGenID(200, 1)
	if e := s.claimGen(newcomer, gens.alive); e != nil {
		t.Fatalf("claimed an entry of %d held by live generations", maxGens)
	}
	atomic.StoreInt64(&first.count, 3)
	atomic.StoreInt64(&s.inflight, 3)
	delete(gens, makeGenID(100, 1))
	e := s.claimGen(newcomer, gens.alive)
	if e != first || genID(atomic.LoadUint64(&e.id)) != newcomer || atomic.LoadInt64(&e.count) != 0 {
		t.Errorf("after a death: entry %p (want %p), id %x, count %d", e, first, e.id, e.count)
	}
	if g := atomic.LoadInt64(&s.inflight); g != 0 {
		t.Errorf("global %d, want 0: the dead generation's count was not reclaimed", g)
	}
}

// TestReclaimConcurrent: many reclaimers (processes, here goroutines on
// two mappings) subtract a dead generation's count exactly once, while a
// live generation keeps counting.
func TestReclaimConcurrent(t *testing.T) {
	tb := newTable(t)
	s1, s2 := tb.slotAt(0), reopen(t, tb).slotAt(0)
	dead, live := makeGenID(1, 1), makeGenID(2, 2)
	alive := fakeGens{live: true}.alive
	d := s1.claimGen(dead, alive)
	l := s2.claimGen(live, alive)
	atomic.StoreInt64(&d.count, 50)
	atomic.StoreInt64(&s1.inflight, 50)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for _, s := range []*stateSlot{s1, s2} {
				s.reclaim(live, alive)
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				atomic.AddInt64(&s2.inflight, 1)
				atomic.AddInt64(&l.count, 1)
				atomic.AddInt64(&l.count, -1)
				atomic.AddInt64(&s2.inflight, -1)
			}
		}()
	}
	wg.Wait()
	if g := atomic.LoadInt64(&s1.inflight); g != 0 {
		t.Errorf("global %d after concurrent reclaims, want 0", g)
	}
}

func TestGenAlive(t *testing.T) {
	self, err := genOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		g    genID
		want bool
	}{
		{"this process", self, true},
		{"this pid, another start time (a reused pid)", makeGenID(os.Getpid(), uint64(self)&(1<<42-1)+1), false},
		{"no such pid", makeGenID(1<<22-1, 1), false},
	} {
		if got := genAlive(tc.g); got != tc.want {
			t.Errorf("%s: genAlive = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestOwnerAlive: a restart owner is alive only if it is the process that
// claimed the restart, not another one that got its pid.
func TestOwnerAlive(t *testing.T) {
	s := &Set{pid: os.Getpid()}
	me, err := genOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	other := makeGenID(os.Getpid(), uint64(me)&(1<<42-1)+1)
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		name     string
		ownerGen genID
		alive    fakeGens
		since    int64
		want     bool
	}{
		{"identity, alive", me, fakeGens{me: true}, now, true},
		{"identity of a dead process, pid reused", other, fakeGens{me: true}, now, false},
		{"no identity (older baton), started before the phase", 0, nil, now, true},
		{"no identity, started after the phase: reused pid", 0, nil, time.Unix(1, 0).UnixNano(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.alive = tc.alive.alive
			slot := newTable(t).slotAt(0)
			atomic.StoreUint64(&slot.ownerGen, uint64(tc.ownerGen))
			atomic.StoreInt64(&slot.since, tc.since)
			if got := s.ownerAlive(slot, int64(os.Getpid())); got != tc.want {
				t.Errorf("ownerAlive = %v, want %v", got, tc.want)
			}
		})
	}
}
