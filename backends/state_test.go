package backends

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newTable(t *testing.T) *StateTable {
	t.Helper()
	tb, err := NewStateTable()
	if err != nil {
		t.Fatalf("NewStateTable: %v", err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tb
}

// reopen maps t's memfd a second time, as the next generation does with
// the file it inherited.
func reopen(t *testing.T, tb *StateTable) *StateTable {
	t.Helper()
	fd, err := unix.Dup(int(tb.File().Fd()))
	if err != nil {
		t.Fatalf("dup: %v", err)
	}
	t2, err := OpenStateTable(os.NewFile(uintptr(fd), "baton-backends-dup"))
	if err != nil {
		t.Fatalf("OpenStateTable: %v", err)
	}
	t.Cleanup(func() {
		if err := t2.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return t2
}

func mustSlot(t *testing.T, tb *StateTable, name string) *stateSlot {
	t.Helper()
	s, err := tb.slot(name)
	if err != nil {
		t.Fatalf("slot(%q): %v", name, err)
	}
	return s
}

func TestNewStateTable(t *testing.T) {
	tb := newTable(t)
	fi, err := tb.File().Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Size(), int64(stateSize); got != want {
		t.Errorf("memfd size: got %d, want %d", got, want)
	}
	if got, want := atomic.LoadUint64(&tb.hdr.magic), uint64(stateMagic); got != want {
		t.Errorf("magic: got %#x, want %#x", got, want)
	}
	if got, want := atomic.LoadUint64(&tb.hdr.version), uint64(stateVersion); got != want {
		t.Errorf("version: got %d, want %d", got, want)
	}
}

func TestStateSlot(t *testing.T) {
	tb := newTable(t)
	a := mustSlot(t, tb, "a")
	if got := mustSlot(t, tb, "a"); got != a {
		t.Errorf("slot(%q) again: got a different slot", "a")
	}
	b := mustSlot(t, tb, "b")
	if b == a {
		t.Errorf("slot(%q): got the slot of %q", "b", "a")
	}
	if got := a.loadName(); got != "a" {
		t.Errorf("name: got %q, want %q", got, "a")
	}
	if w := b.load(); w != 0 || !w.routable() || w.label() != "up" {
		t.Errorf("new slot: got word %#x (%s), want 0 (up, routable)", uint64(w), w.label())
	}

	long := strings.Repeat("n", maxNameLen)
	s := mustSlot(t, tb, long)
	if got := s.loadName(); got != long {
		t.Errorf("name of %d bytes: got %q, want %q", maxNameLen, got, long)
	}
	if got := mustSlot(t, tb, long); got != s {
		t.Errorf("slot(%d-byte name) again: got a different slot", maxNameLen)
	}
	// A name that shares a prefix with a stored one is another name.
	if got := mustSlot(t, tb, long[:maxNameLen-1]); got == s {
		t.Errorf("slot(%d-byte prefix): got the slot of the %d-byte name", maxNameLen-1, maxNameLen)
	}

	for _, bad := range []string{"", strings.Repeat("x", maxNameLen+1), strings.Repeat("y", 200)} {
		if s, err := tb.slot(bad); err == nil {
			t.Errorf("slot(%d-byte name): got slot %p, want an error", len(bad), s)
		}
	}
}

func TestStateSlotFull(t *testing.T) {
	tb := newTable(t)
	seen := map[*stateSlot]bool{}
	for i := 0; i < maxSlots; i++ {
		s := mustSlot(t, tb, fmt.Sprintf("backend-%d", i))
		if seen[s] {
			t.Fatalf("slot %d: shared with an earlier name", i)
		}
		seen[s] = true
	}
	if _, err := tb.slot("one-too-many"); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("slot beyond %d names: got %v, want a table full error", maxSlots, err)
	}
	// Known names are still found.
	if _, err := tb.slot("backend-7"); err != nil {
		t.Errorf("slot(known name) in a full table: %v", err)
	}
}

func TestStateWord(t *testing.T) {
	tb := newTable(t)
	s := mustSlot(t, tb, "a")

	was, now := s.update(func(w stateWord) stateWord { return w.withPhase(PhaseDraining) })
	if was != 0 {
		t.Errorf("update: old word: got %#x, want 0", uint64(was))
	}
	if now.phase() != PhaseDraining || now.routable() || now.label() != "draining" {
		t.Errorf("update: new word: got phase %s, routable %v, label %q, want draining, false, draining",
			now.phase(), now.routable(), now.label())
	}
	if got := s.load(); got != now {
		t.Errorf("load: got %#x, want %#x", uint64(got), uint64(now))
	}

	// No change: no swap, same word back.
	was2, now2 := s.update(func(w stateWord) stateWord { return w })
	if was2 != now || now2 != now {
		t.Errorf("no-op update: got %#x -> %#x, want %#x -> %#x", uint64(was2), uint64(now2), uint64(now), uint64(now))
	}

	down := now.withPhase(PhaseNone).with(bitDown, true)
	if s.cas(0, down) {
		t.Error("cas from a stale word: got true, want false")
	}
	if got := s.load(); got != now {
		t.Errorf("after failed cas: got %#x, want %#x", uint64(got), uint64(now))
	}
	if !s.cas(now, down) {
		t.Error("cas from the current word: got false, want true")
	}
	if w := s.load(); !w.down() || w.drained() || w.routable() || w.label() != "down" {
		t.Errorf("after cas: got down %v, drained %v, routable %v, label %q, want true, false, false, down",
			w.down(), w.drained(), w.routable(), w.label())
	}

	_, w := s.update(func(w stateWord) stateWord { return w.with(bitDown, false).with(bitDrained, true) })
	if w.label() != "drained" || w.down() || w.routable() {
		t.Errorf("drained: got label %q, down %v, routable %v", w.label(), w.down(), w.routable())
	}
	_, w = s.update(func(w stateWord) stateWord { return w.with(bitDrained, false) })
	if w != 0 || !w.routable() {
		t.Errorf("all clear: got %#x, routable %v, want 0, true", uint64(w), w.routable())
	}

	// Concurrent updates through update all land.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				s.update(func(w stateWord) stateWord { return w + 1<<16 })
			}
		}()
	}
	wg.Wait()
	if got, want := uint64(s.load())>>16, uint64(8*1000); got != want {
		t.Errorf("concurrent updates: got %d, want %d", got, want)
	}
}

func TestStateResult(t *testing.T) {
	tb := newTable(t)
	s := mustSlot(t, tb, "a")
	if r, have := s.result(); have {
		t.Errorf("result of a new slot: got %+v, want none", r)
	}

	before := time.Now()
	s.setResult(true, 1500*time.Millisecond, "restarted")
	r, have := s.result()
	if !have {
		t.Fatal("result: got none, want the one set")
	}
	if !r.ok || r.dur != 1500*time.Millisecond || r.reason != "restarted" {
		t.Errorf("result: got ok %v, dur %s, reason %q, want true, 1.5s, %q", r.ok, r.dur, r.reason, "restarted")
	}
	if r.at.Before(before.Add(-time.Second)) || r.at.After(time.Now().Add(time.Second)) {
		t.Errorf("result time: got %s, want about %s", r.at, before)
	}

	tests := []struct {
		name   string
		reason string
		want   string
	}{
		{"empty", "", ""},
		{"exactly the maximum", strings.Repeat("r", maxReasonLen), strings.Repeat("r", maxReasonLen)},
		{"one byte too long", strings.Repeat("s", maxReasonLen+1), strings.Repeat("s", maxReasonLen-3) + "..."},
		{"much too long", strings.Repeat("0123456789", 40), strings.Repeat("0123456789", 40)[:maxReasonLen-3] + "..."},
		{"short after long", "timeout", "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.setResult(false, time.Second, tt.reason)
			r, have := s.result()
			if !have {
				t.Fatal("result: got none")
			}
			if r.ok {
				t.Error("ok: got true, want false")
			}
			if r.reason != tt.want {
				t.Errorf("reason: got %q (%d bytes), want %q (%d bytes)", r.reason, len(r.reason), tt.want, len(tt.want))
			}
			if len(r.reason) > maxReasonLen {
				t.Errorf("reason length: got %d, want at most %d", len(r.reason), maxReasonLen)
			}
		})
	}
	if got := atomic.LoadUint64(&s.lastSeq); got&1 != 0 {
		t.Errorf("seqlock after writes: got %d, want even", got)
	}
}

func TestStateShared(t *testing.T) {
	t1 := newTable(t)
	a1 := mustSlot(t, t1, "a")
	b1 := mustSlot(t, t1, "b")
	a1.update(func(w stateWord) stateWord { return w.withPhase(PhaseRestarting) })
	atomic.StoreInt64(&a1.owner, 4242)
	atomic.AddInt64(&a1.inflight, 3)
	atomic.AddUint64(&a1.epoch, 1)
	a1.setResult(false, 2*time.Second, "apache2 exited with status 1")

	t2 := reopen(t, t1)
	a2 := mustSlot(t, t2, "a")
	if a2 == a1 {
		t.Fatal("second mapping returned the first mapping's slot")
	}
	if w := a2.load(); w.phase() != PhaseRestarting {
		t.Errorf("phase through the second mapping: got %s, want %s", w.phase(), PhaseRestarting)
	}
	if got := atomic.LoadInt64(&a2.owner); got != 4242 {
		t.Errorf("owner: got %d, want 4242", got)
	}
	if got := atomic.LoadInt64(&a2.inflight); got != 3 {
		t.Errorf("inflight: got %d, want 3", got)
	}
	if got := atomic.LoadUint64(&a2.epoch); got != 1 {
		t.Errorf("epoch: got %d, want 1", got)
	}
	r, have := a2.result()
	if !have || r.ok || r.dur != 2*time.Second || r.reason != "apache2 exited with status 1" {
		t.Errorf("result through the second mapping: got %+v (have %v)", r, have)
	}
	// The second mapping finds "b" where the first put it, not a new slot.
	b2 := mustSlot(t, t2, "b")
	if got := b2.loadName(); got != "b" {
		t.Errorf("name: got %q, want %q", got, "b")
	}
	b2.update(func(w stateWord) stateWord { return w.with(bitDrained, true) })
	if !b1.load().drained() {
		t.Error("drained through the second mapping: not seen through the first")
	}

	// A name claimed through the second mapping is found through the first.
	c2 := mustSlot(t, t2, "c")
	c2.update(func(w stateWord) stateWord { return w.with(bitDown, true) })
	c1 := mustSlot(t, t1, "c")
	if !c1.load().down() {
		t.Error("slot claimed through the second mapping: state not seen through the first")
	}
	if got, want := slotIndex(t1, c1), slotIndex(t2, c2); got != want {
		t.Errorf("slot index of %q: got %d through the first mapping, %d through the second", "c", got, want)
	}
}

func slotIndex(tb *StateTable, s *stateSlot) int {
	for i := 0; i < maxSlots; i++ {
		if tb.slotAt(i) == s {
			return i
		}
	}
	return -1
}

func TestStateInflightConcurrent(t *testing.T) {
	t1 := newTable(t)
	t2 := reopen(t, t1)
	slots := []*stateSlot{mustSlot(t, t1, "a"), mustSlot(t, t2, "a")}

	const workers, rounds = 8, 5000
	var wg sync.WaitGroup
	var negative atomic.Bool
	start := make(chan struct{})
	for i := 0; i < workers; i++ {
		s := slots[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for j := 0; j < rounds; j++ {
				atomic.AddInt64(&s.inflight, 1)
				if atomic.AddInt64(&s.inflight, -1) < 0 {
					negative.Store(true)
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if negative.Load() {
		t.Error("inflight went negative")
	}
	for i, s := range slots {
		if got := atomic.LoadInt64(&s.inflight); got != 0 {
			t.Errorf("inflight through mapping %d: got %d, want 0", i+1, got)
		}
	}
}

// TestCorruptNameLength: Issue 21. A slot's name length word at 2^64-1
// made slot() panic (loadText sliced by a negative int) in every later
// generation at its start. The next generation now finds the slot by the
// name its bytes hold.
func TestCorruptNameLength(t *testing.T) {
	for _, n := range []uint64{^uint64(0), 1 << 63, maxNameLen + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tb := newTable(t)
			s := mustSlot(t, tb, "web1")
			atomic.AddInt64(&s.inflight, 2)
			atomic.StoreUint64(&s.nameLen, n)
			t2 := reopen(t, tb)
			s2 := mustSlot(t, t2, "web1")
			if got, want := slotIndex(t2, s2), slotIndex(tb, s); got != want {
				t.Errorf("web1 in slot %d, want its own slot %d", got, want)
			}
			if got := atomic.LoadInt64(&s2.inflight); got != 2 {
				t.Errorf("in flight %d, want 2", got)
			}
		})
	}
}
