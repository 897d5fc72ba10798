package backends

import (
	"sync/atomic"
	"testing"
	"time"
)

// FuzzStateTable feeds random slot bytes (the header kept valid, so the
// slots are what is checked) to OpenStateTable, as a previous generation
// could leave them. Whatever the bytes, nothing panics, the table comes
// out in order (checkSane: valid claims, names, words, owners, counts,
// times and results, and a second check repairs nothing), and the next
// generation's Set starts over it and reports sane states. The seeds are
// real tables: the slots of stateFixture as NewStateTable and the code
// that writes slots leave them, and the same with a corrupt word each.
func FuzzStateTable(f *testing.F) {
	settle := settleDelay
	settleDelay = 0
	f.Cleanup(func() { settleDelay = settle })
	fx := newFixture(f)
	real := func() []byte {
		return append([]byte(nil), fx.tb.mem[headerSize:headerSize+4*slotSize]...)
	}
	f.Add(real())
	f.Add([]byte{})
	for _, corrupt := range []func(){
		func() { atomic.StoreUint64(&fx.web1.nameLen, ^uint64(0)) },
		func() { atomic.StoreUint64(&fx.web2.word, 0xff) },
		func() { atomic.StoreInt64(&fx.web1.inflight, -7) },
		func() { atomic.StoreUint64(&fx.web3.gens[0].id, 3) },
		func() { atomic.StoreUint64(&fx.web1.lastLen, 1<<62) },
		func() { storeText(fx.web3.name[:], &fx.web3.nameLen, "web2") },
		func() { atomic.StoreUint64(&fx.web2.claim, 0) },
	} {
		corrupt()
		f.Add(real())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxSlots*slotSize {
			data = data[:maxSlots*slotSize]
		}
		file := rawStateTable(t, stateSize, func(mem []byte) {
			putHeader(stateMagic, stateVersion)(mem)
			copy(mem[headerSize:], data)
		})
		tb, err := openStateTable(file, testNow, fixtureAlive, fixturePID)
		if err != nil {
			t.Fatalf("OpenStateTable refused a table with a valid header: %v", err)
		}
		// Closed after the Set (cleanups run last first): its epoch
		// watcher reads the table until Close.
		t.Cleanup(func() { tb.Close() })
		for _, r := range tb.Repairs() {
			if r.Table != stateName || r.Entry == "" || r.Problem == "" || r.Action == "" {
				t.Errorf("repair %+v: not fully described", r)
			}
		}
		checkSane(t, tb)
		set := newSetOver(t, tb, "web1", "web2", "web3")
		for _, st := range set.Status() {
			if !slicesContains([]string{"up", "down", "drained", "draining", "restarting", "starting"}, st.State) || st.InFlight < 0 {
				t.Errorf("status %s: state %q, in flight %d", st.Name, st.State, st.InFlight)
			}
			if st.LastRestart != nil && (st.LastRestart.Duration < 0 || st.LastRestart.At.After(testNow.Add(timeAhead))) {
				t.Errorf("status %s: last restart %+v", st.Name, st.LastRestart)
			}
			if st.PhaseSince != nil && st.PhaseSince.Before(time.Unix(0, oldestTime)) {
				t.Errorf("status %s: phase since %s", st.Name, st.PhaseSince)
			}
		}
	})
}
