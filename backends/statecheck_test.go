package backends

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/internal/shmem"
)

// The generation that wrote the fixture tables: alive in these tests.
var (
	olderGen = makeGenID(4000, 77)
	testNow  = time.Now()
)

func fixtureAlive(g genID) bool { return g == olderGen }
func fixturePID(pid int) bool   { return pid == olderGen.pid() }

// stateFixture is a table as a running older generation leaves it: web1
// up with 2 requests in flight and a last restart, web2 drained, web3 in
// a restart owned by the older generation.
type stateFixture struct {
	tb               *StateTable
	web1, web2, web3 *stateSlot
	entry            *genEntry // olderGen's in web1
}

func newFixture(t testing.TB) *stateFixture {
	t.Helper()
	tb, err := NewStateTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	f := &stateFixture{tb: tb}
	var errs []error
	slot := func(n string) *stateSlot {
		s, err := tb.slot(n)
		errs = append(errs, err)
		return s
	}
	f.web1, f.web2, f.web3 = slot("web1"), slot("web2"), slot("web3")
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	f.entry = f.web1.claimGen(olderGen, fixtureAlive)
	atomic.StoreInt64(&f.entry.count, 2)
	atomic.StoreInt64(&f.web1.inflight, 2)
	f.web1.setResult(true, 1500*time.Millisecond, "SIGUSR1 to pid 12")
	atomic.StoreInt64(&f.web1.routableSince, testNow.Add(-time.Minute).UnixNano())
	f.web2.update(func(w stateWord) stateWord { return w.with(bitDrained, true) })
	f.web3.update(func(w stateWord) stateWord { return w.withPhase(PhaseRestarting) })
	atomic.StoreInt64(&f.web3.since, testNow.Add(-time.Second).UnixNano())
	atomic.StoreUint64(&f.web3.ownerGen, uint64(olderGen))
	atomic.StoreInt64(&f.web3.owner, int64(olderGen.pid()))
	f.web3.claimGen(olderGen, fixtureAlive)
	return f
}

// next opens the table as the next generation does, with a duplicate
// descriptor of its memfd.
func (f *stateFixture) next(t testing.TB) *StateTable {
	t.Helper()
	fd, err := unix.Dup(int(f.tb.File().Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := openStateTable(os.NewFile(uintptr(fd), "dup"), testNow, fixtureAlive, fixturePID)
	if err != nil {
		t.Fatalf("OpenStateTable: %v", err)
	}
	t.Cleanup(func() { t2.Close() })
	return t2
}

// checkSane asserts what every slot of tb holds once checked: the rules of
// statecheck.go, as a reader of the table relies on them.
func checkSane(t testing.TB, tb *StateTable) {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < maxSlots; i++ {
		s := tb.slotAt(i)
		switch cl := atomic.LoadUint64(&s.claim); cl {
		case claimFree:
			if !s.blank() {
				t.Errorf("slot %d: free but not blank", i)
			}
			continue
		case claimRetired:
			continue
		case claimed:
		default:
			t.Errorf("slot %d: claim %d", i, cl)
			continue
		}
		n := atomic.LoadUint64(&s.nameLen)
		name := s.loadName()
		if !validName(name) || n != uint64(len(name)) {
			t.Errorf("slot %d: name %q, length %d", i, name, n)
		}
		if j, dup := seen[name]; dup {
			t.Errorf("slot %d: name %q also in slot %d", i, name, j)
		}
		seen[name] = i
		w := s.load()
		if !w.valid() {
			t.Errorf("slot %d: word %#x", i, uint64(w))
		}
		if o := atomic.LoadInt64(&s.owner); o < 0 || o > maxPID || w.phase() != PhaseNone && o == 0 {
			t.Errorf("slot %d: owner %d in phase %s", i, o, w.phase())
		}
		if g := genID(atomic.LoadUint64(&s.ownerGen)); g != 0 && !g.plausible() {
			t.Errorf("slot %d: owner id %#x", i, uint64(g))
		}
		var sum int64
		for k := range s.gens {
			id, c := atomic.LoadUint64(&s.gens[k].id), atomic.LoadInt64(&s.gens[k].count)
			if id != 0 && id != genReclaiming && !genID(id).plausible() || c < -maxEntry || c > maxEntry || id == 0 && c != 0 {
				t.Errorf("slot %d: entry %d id %#x count %d", i, k, id, c)
			}
			sum += max(c, 0)
		}
		if g := atomic.LoadInt64(&s.inflight); g < 0 || g > maxInflight || g < sum {
			t.Errorf("slot %d: in flight %d, entries %d", i, g, sum)
		}
		if v := atomic.LoadInt64(&s.since); w.phase() != PhaseNone && v == 0 {
			t.Errorf("slot %d: phase %s since 0", i, w.phase())
		}
		for _, v := range []int64{atomic.LoadInt64(&s.since), atomic.LoadInt64(&s.routableSince)} {
			if v != 0 && (v < oldestTime || v > testNow.Add(timeAhead).UnixNano()) {
				t.Errorf("slot %d: time %d", i, v)
			}
		}
		if r, have := s.result(); have && (r.dur < 0 || len(r.reason) > maxReasonLen) {
			t.Errorf("slot %d: result %+v", i, r)
		}
		if seq := atomic.LoadUint64(&s.lastSeq); seq&1 != 0 {
			t.Errorf("slot %d: result sequence %d odd", i, seq)
		}
		if n := atomic.LoadUint64(&s.lastLen); n > maxReasonLen {
			t.Errorf("slot %d: result length %d", i, n)
		}
	}
	// Checked once, the table is in order: a second check repairs nothing.
	if again := tb.check(testNow, fixtureAlive, fixturePID); len(again) > 0 {
		t.Errorf("a second check repaired again: %v", again)
	}
}

func hasRepair(rs []shmem.Repair, entry, field string) bool {
	for _, r := range rs {
		if strings.HasPrefix(r.Entry, entry) && r.Field == field {
			return true
		}
	}
	return false
}

// TestStateCheckRepairs corrupts one field of a table an older generation
// left, as a bug or a stray write would, and opens it as the next
// generation does. Issue 21: with the name length of a slot at 2^64-1 (or
// anything from 2^63), loadText panicked in every later generation. Each
// case checks the repair reported, what the backend's state becomes, and
// that the table is in order afterwards.
func TestStateCheckRepairs(t *testing.T) {
	settle := settleDelay
	settleDelay = time.Millisecond
	t.Cleanup(func() { settleDelay = settle })
	type want struct {
		entry, field string // the repair reported; "" for none
	}
	tests := []struct {
		name    string
		corrupt func(f *stateFixture)
		want    want
		check   func(t *testing.T, f *stateFixture, t2 *StateTable)
	}{
		{"in order", func(f *stateFixture) {}, want{}, func(t *testing.T, f *stateFixture, t2 *StateTable) {
			if t2.startDown {
				t.Error("startDown set for a table in order")
			}
		}},
		{"name length all ones (issue 21)", func(f *stateFixture) { atomic.StoreUint64(&f.web1.nameLen, ^uint64(0)) },
			want{"slot 0 (web1)", "name length"}, sameSlot("web1", 0, func(t *testing.T, s *stateSlot) {
				if g := atomic.LoadInt64(&s.inflight); g != 2 {
					t.Errorf("in flight %d, want 2 (the slot kept)", g)
				}
			})},
		{"name length 2^63", func(f *stateFixture) { atomic.StoreUint64(&f.web1.nameLen, 1<<63) },
			want{"slot 0 (web1)", "name length"}, sameSlot("web1", 0, nil)},
		{"name length short", func(f *stateFixture) { atomic.StoreUint64(&f.web1.nameLen, 3) },
			want{"slot 0 (web1)", "name length"}, sameSlot("web1", 0, nil)},
		{"name bytes garbage", func(f *stateFixture) { atomic.StoreUint64(&f.web1.name[0], 0xfffefdfcfbfaf9f8) },
			want{"slot 0", "name"}, newSlotDown("web1", 0)},
		{"two slots named alike", func(f *stateFixture) { storeText(f.web2.name[:], &f.web2.nameLen, "web1") },
			want{"slot 1 (web1)", "name"}, func(t *testing.T, f *stateFixture, t2 *StateTable) {
				newSlotDown("web1", 0)(t, f, t2)
				newSlotDown("web2", 1)(t, f, t2)
			}},
		{"claim word garbage", func(f *stateFixture) { atomic.StoreUint64(&f.web2.claim, 77) },
			want{"slot 1 (web2)", "claim"}, sameSlot("web2", 1, func(t *testing.T, s *stateSlot) {
				if !s.load().drained() {
					t.Error("drained lost")
				}
			})},
		{"claim word cleared on a slot in use", func(f *stateFixture) { atomic.StoreUint64(&f.web2.claim, claimFree) },
			want{"slot 1 (web2)", "claim"}, sameSlot("web2", 1, nil)},
		{"claim stuck being written", func(f *stateFixture) { atomic.StoreUint64(&f.web2.claim, claimWriting) },
			want{"slot 1 (web2)", "claim"}, sameSlot("web2", 1, nil)},
		{"free slot holding state", func(f *stateFixture) { atomic.StoreInt64(&f.tb.slotAt(9).inflight, 5) },
			want{"slot 9", "name"}, func(t *testing.T, f *stateFixture, t2 *StateTable) {
				if cl := atomic.LoadUint64(&t2.slotAt(9).claim); cl != claimRetired {
					t.Errorf("slot 9 claim %d, want retired", cl)
				}
			}},
		{"unknown phase", func(f *stateFixture) { atomic.StoreUint64(&f.web2.word, 0x7f|bitDrained) },
			want{"slot 1 (web2)", "state"}, wordIs("web2", stateWord(bitDown))},
		{"unknown flag", func(f *stateFixture) { atomic.StoreUint64(&f.web1.word, 1<<40) },
			want{"slot 0 (web1)", "state"}, wordIs("web1", stateWord(bitDown))},
		{"unknown phase, restart owner runs", func(f *stateFixture) { atomic.StoreUint64(&f.web3.word, 0xee) },
			want{"slot 2 (web3)", "state"}, wordIs("web3", stateWord(PhaseRestarting)|bitDown)},
		{"unknown phase, restart owner gone", func(f *stateFixture) {
			atomic.StoreUint64(&f.web3.word, 0xee)
			atomic.StoreUint64(&f.web3.ownerGen, uint64(makeGenID(4001, 1)))
			atomic.StoreInt64(&f.web3.owner, 4001)
		}, want{"slot 2 (web3)", "state"}, wordIs("web3", stateWord(bitDown))},
		{"phase with no owner", func(f *stateFixture) {
			f.web2.update(func(w stateWord) stateWord { return w.withPhase(PhaseDraining) })
		}, want{"slot 1 (web2)", "state"}, wordIs("web2", stateWord(bitDown|bitDrained))},
		{"owner no pid", func(f *stateFixture) { atomic.StoreInt64(&f.web3.owner, -1) },
			want{"slot 2 (web3)", "restart owner"}, func(t *testing.T, f *stateFixture, t2 *StateTable) {
				if o := atomic.LoadInt64(&f.web3.owner); o != int64(olderGen.pid()) {
					t.Errorf("owner %d, want %d from ownerGen", o, olderGen.pid())
				}
				wordIs("web3", stateWord(PhaseRestarting))(t, f, t2)
			}},
		{"owner id no pid", func(f *stateFixture) { atomic.StoreUint64(&f.web3.ownerGen, 12345) },
			want{"slot 2 (web3)", "restart owner id"}, wordIs("web3", stateWord(PhaseRestarting))},
		{"owner and owner id both bad, restarting", func(f *stateFixture) {
			atomic.StoreUint64(&f.web3.ownerGen, 12345)
			atomic.StoreInt64(&f.web3.owner, 1<<40)
		}, want{"slot 2 (web3)", "state"}, wordIs("web3", stateWord(bitDown))},
		{"in flight negative", func(f *stateFixture) { atomic.StoreInt64(&f.web1.inflight, -1<<40) },
			want{"slot 0 (web1)", "in-flight count"}, inflightIs("web1", 2)},
		{"in flight huge", func(f *stateFixture) { atomic.StoreInt64(&f.web1.inflight, 1<<40) },
			want{"slot 0 (web1)", "in-flight count"}, inflightIs("web1", 2)},
		{"in flight below the entries", func(f *stateFixture) { atomic.StoreInt64(&f.web1.inflight, 1) },
			want{"slot 0 (web1)", "in-flight count"}, inflightIs("web1", 2)},
		{"entry id names no pid", func(f *stateFixture) {
			e := &f.web1.gens[5]
			atomic.StoreUint64(&e.id, 5)
			atomic.StoreInt64(&e.count, 3)
			atomic.AddInt64(&f.web1.inflight, 3)
		}, want{"slot 0 (web1)", "generation entry 5"}, inflightIs("web1", 2)},
		{"entry id names no pid, count beyond the total", func(f *stateFixture) {
			atomic.StoreUint64(&f.web1.gens[5].id, 5)
			atomic.StoreInt64(&f.web1.gens[5].count, 1000)
		}, want{"slot 0 (web1)", "generation entry 5"}, inflightIs("web1", 2)},
		{"entry count huge", func(f *stateFixture) { atomic.StoreInt64(&f.entry.count, 1<<50) },
			want{"slot 0 (web1)", "generation entry 0"}, func(t *testing.T, f *stateFixture, t2 *StateTable) {
				if c := atomic.LoadInt64(&f.entry.count); c != 0 {
					t.Errorf("entry count %d, want 0", c)
				}
				inflightIs("web1", 2)(t, f, t2)
			}},
		{"free entry counting", func(f *stateFixture) { atomic.StoreInt64(&f.web1.gens[7].count, 9) },
			want{"slot 0 (web1)", "generation entry 7"}, inflightIs("web1", 2)},
		{"phase start in the future", func(f *stateFixture) { atomic.StoreInt64(&f.web3.since, 1<<62) },
			want{"slot 2 (web3)", "phase start"}, nil},
		{"routable since negative", func(f *stateFixture) { atomic.StoreInt64(&f.web1.routableSince, -5) },
			want{"slot 0 (web1)", "routable since"}, nil},
		{"result length all ones", func(f *stateFixture) { atomic.StoreUint64(&f.web1.lastLen, ^uint64(0)) },
			want{"slot 0 (web1)", "last restart error length"}, resultIs("web1", "SIGUSR1 to pid 12")},
		{"result ok garbage", func(f *stateFixture) { atomic.StoreUint64(&f.web1.lastOK, 5) },
			want{"slot 0 (web1)", "last restart result"}, resultIs("web1", "")},
		{"result duration negative", func(f *stateFixture) { atomic.StoreInt64(&f.web1.lastDur, -1) },
			want{"slot 0 (web1)", "last restart result"}, resultIs("web1", "")},
		{"result sequence stuck odd", func(f *stateFixture) { atomic.AddUint64(&f.web1.lastSeq, 1) },
			want{"slot 0 (web1)", "last restart result"}, resultIs("web1", "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tt.corrupt(f)
			t2 := f.next(t)
			rs := t2.Repairs()
			if tt.want.entry == "" {
				if len(rs) > 0 {
					t.Errorf("repairs: got %v, want none", rs)
				}
			} else if !hasRepair(rs, tt.want.entry, tt.want.field) {
				t.Errorf("repairs: got %v, want one of %s, field %s", rs, tt.want.entry, tt.want.field)
			}
			for _, r := range rs {
				if r.Table != stateName || r.Problem == "" || r.Action == "" {
					t.Errorf("repair %+v: want table %s, a problem and an action", r, stateName)
				}
			}
			if tt.check != nil {
				tt.check(t, f, t2)
			}
			checkSane(t, t2)
			// The next generation's Set starts over the repaired table.
			set := newSetOver(t, t2, "web1", "web2", "web3")
			for _, st := range set.Status() {
				if !slicesContains([]string{"up", "down", "drained", "draining", "restarting", "starting"}, st.State) || st.InFlight < 0 {
					t.Errorf("status %s: state %q, in flight %d", st.Name, st.State, st.InFlight)
				}
			}
		})
	}
}

func slicesContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// sameSlot: name is still found in slot i, the one the older generation
// writes, and then more checks.
func sameSlot(name string, i int, more func(t *testing.T, s *stateSlot)) func(t *testing.T, f *stateFixture, t2 *StateTable) {
	return func(t *testing.T, f *stateFixture, t2 *StateTable) {
		t.Helper()
		s, err := t2.slot(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := slotIndex(t2, s); got != i {
			t.Errorf("%s found in slot %d, want %d", name, got, i)
		}
		if more != nil {
			more(t, s)
		}
	}
}

// newSlotDown: name's old slot i was retired; it gets a new one, which
// starts down (readmitted by a health check).
func newSlotDown(name string, i int) func(t *testing.T, f *stateFixture, t2 *StateTable) {
	return func(t *testing.T, f *stateFixture, t2 *StateTable) {
		t.Helper()
		if cl := atomic.LoadUint64(&t2.slotAt(i).claim); cl != claimRetired {
			t.Errorf("slot %d claim %d, want retired", i, cl)
		}
		s, err := t2.slot(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := slotIndex(t2, s); got == i {
			t.Errorf("%s found in its retired slot %d", name, i)
		}
		if w := s.load(); w != bitDown {
			t.Errorf("%s in its new slot: word %#x, want down", name, uint64(w))
		}
	}
}

func wordIs(name string, want stateWord) func(t *testing.T, f *stateFixture, t2 *StateTable) {
	return func(t *testing.T, f *stateFixture, t2 *StateTable) {
		t.Helper()
		s, err := t2.slot(name)
		if err != nil {
			t.Fatal(err)
		}
		if w := s.load(); w != want {
			t.Errorf("%s: word %#x (%s, down %v, drained %v), want %#x", name, uint64(w), w.phase(), w.down(), w.drained(), uint64(want))
		}
	}
}

func inflightIs(name string, want int64) func(t *testing.T, f *stateFixture, t2 *StateTable) {
	return func(t *testing.T, f *stateFixture, t2 *StateTable) {
		t.Helper()
		s, err := t2.slot(name)
		if err != nil {
			t.Fatal(err)
		}
		if g := atomic.LoadInt64(&s.inflight); g != want {
			t.Errorf("%s: in flight %d, want %d", name, g, want)
		}
	}
}

// resultIs: the last restart result reads reason, or none for "".
func resultIs(name, reason string) func(t *testing.T, f *stateFixture, t2 *StateTable) {
	return func(t *testing.T, f *stateFixture, t2 *StateTable) {
		t.Helper()
		s, err := t2.slot(name)
		if err != nil {
			t.Fatal(err)
		}
		r, have := s.result()
		switch {
		case reason == "" && have:
			t.Errorf("%s: result %+v, want none", name, r)
		case reason != "" && (!have || r.reason != reason):
			t.Errorf("%s: result %+v (have %v), want reason %q", name, r, have, reason)
		}
	}
}

// newSetOver builds a Set of the named backends over tb, as the next
// generation does (never started: no health checks).
func newSetOver(t testing.TB, tb *StateTable, names ...string) *Set {
	t.Helper()
	var cfgs []Config
	for i, n := range names {
		cfgs = append(cfgs, Config{Name: n, URL: fmt.Sprintf("http://127.0.0.1:%d", 1+i)}.Normalize())
	}
	s, err := New(cfgs, tb, Options{RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// rawStateTable makes a memfd named as the state table of size bytes,
// filled by fill.
func rawStateTable(t testing.TB, size int, fill func(mem []byte)) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(stateName, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), stateName)
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	if fill != nil && size > 0 {
		mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		fill(mem)
		unix.Munmap(mem)
	}
	return f
}

func putHeader(magic, version uint64) func([]byte) {
	return func(mem []byte) {
		h := (*stateHeader)(unsafe.Pointer(&mem[0]))
		h.magic, h.version = magic, version
	}
}

// TestOpenStateTableRejects: a descriptor that is not the state table's
// memfd, or a memfd of another size or layout, is refused with an error
// that says why; a table from a newer baton (same magic, higher version:
// fields only appended) is taken.
func TestOpenStateTableRejects(t *testing.T) {
	regular, err := os.Create(t.TempDir() + "/state")
	if err != nil {
		t.Fatal(err)
	}
	if err := regular.Truncate(stateSize); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		f    *os.File
		want string // "" : accepted
	}{
		{"a regular file", regular, "is the file " + regular.Name() + ", not the memfd baton-backends"},
		{"empty", rawStateTable(t, 0, nil), "has size 0, want 65600"},
		{"truncated", rawStateTable(t, stateSize-1, nil), "has size 65599, want 65600"},
		{"grown", rawStateTable(t, stateSize+4096, nil), "has size 69696, want 65600"},
		{"no header", rawStateTable(t, stateSize, nil), "magic 0x0, version 0: not a state table of this layout"},
		{"another layout", rawStateTable(t, stateSize, putHeader(0x1234, 1)), "magic 0x1234, version 1: not a state table"},
		{"version 0", rawStateTable(t, stateSize, putHeader(stateMagic, 0)), "version 0: not a state table"},
		{"a newer baton's", rawStateTable(t, stateSize, putHeader(stateMagic, stateVersion+1)), ""},
		{"an older baton's (no seals)", rawStateTable(t, stateSize, putHeader(stateMagic, 1)), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(func() { _ = tt.f.Close() })
			tb, err := OpenStateTable(tt.f)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("OpenStateTable: %v", err)
				}
				if rs := tb.Repairs(); len(rs) > 0 {
					t.Errorf("repairs of an empty table: %v", rs)
				}
				tb.Close()
				return
			}
			if err == nil {
				tb.Close()
				t.Fatalf("OpenStateTable: got a table, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestReplaceStateTable: with the table refused, every backend starts
// down (its first passing health check readmits it), not up.
func TestReplaceStateTable(t *testing.T) {
	tb, err := ReplaceStateTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	set := newSetOver(t, tb, "web1")
	b, _ := set.Lookup("web1")
	if w := b.slot.load(); w != bitDown {
		t.Errorf("word %#x, want down", uint64(w))
	}
	b.noteHealthy()
	if w := b.slot.load(); !w.routable() {
		t.Errorf("after a passing health check: word %#x, want routable", uint64(w))
	}
}

// TestStateCheckConcurrentWriters: the older generation goes on counting
// requests and changing states while the next one checks the table. A
// table in order is never "repaired" (no false alarm from reading a field
// in the middle of an update), and a corrupt field is repaired while the
// writers run, their counts staying exact.
func TestStateCheckConcurrentWriters(t *testing.T) {
	f := newFixture(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Requests: global up first and down last, as acquire and release do.
	const writers = 4
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				atomic.AddInt64(&f.web1.inflight, 1)
				atomic.AddInt64(&f.entry.count, 1)
				atomic.AddInt64(&f.entry.count, -1)
				atomic.AddInt64(&f.web1.inflight, -1)
			}
		}()
	}
	// An operator draining and undraining web2, health flapping web1.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for on := true; ; on = !on {
			select {
			case <-stop:
				return
			default:
			}
			f.web2.update(func(w stateWord) stateWord { return w.with(bitDrained, on) })
			f.web1.update(func(w stateWord) stateWord { return w.with(bitDown, on) })
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	rounds := 0
	for ; rounds < 50 && time.Now().Before(deadline); rounds++ {
		t2 := f.next(t)
		if rs := t2.Repairs(); len(rs) > 0 {
			t.Fatalf("round %d: a table in order under writers was repaired: %v", rounds, rs)
		}
		t2.Close()
	}
	// Now a corrupt count, repaired while the writers go on.
	atomic.StoreInt64(&f.web1.inflight, -1<<40)
	t2 := f.next(t)
	if !hasRepair(t2.Repairs(), "slot 0 (web1)", "in-flight count") {
		t.Errorf("repairs: %v, want the in-flight count of web1", t2.Repairs())
	}
	close(stop)
	wg.Wait()
	// A count rebuilt under writers can miss the requests caught between
	// their two adds at that instant (one per writer at most): low, never
	// high, so the next check finds it if it drops below the entries.
	if g, e := atomic.LoadInt64(&f.web1.inflight), atomic.LoadInt64(&f.entry.count); g < 2-writers || g > 2 || e != 2 {
		t.Errorf("after the writers: in flight %d, entry %d; want %d to 2, and 2", g, e, 2-writers)
	}
	t.Logf("%d checks under writers", rounds)
}
