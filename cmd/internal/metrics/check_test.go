package metrics

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/internal/shmem"
	"github.com/batonproxy/baton/proxy"
)

// TestCorruptNameLength: Issue 21. A slot's name length at 2^64-1 made
// loadName panic (a negative slice bound) in every later generation as it
// registered its backends. Now the slot is found by the name its bytes
// hold, its counts kept.
func TestCorruptNameLength(t *testing.T) {
	old := newTable(t)
	old.Observe(&proxy.Exchange{Status: 200, Backend: "web1", Attempts: 1})
	atomic.StoreUint64(&old.slots["web1"].nameLen, ^uint64(0))
	next := reopen(t, old, "web1")
	if got, want := slotIndex(next, next.slots["web1"]), slotIndex(old, old.slots["web1"]); got != want {
		t.Errorf("web1 in slot %d, want its own slot %d", got, want)
	}
	has(t, scrape(t, next), `baton_requests_total{backend="web1",code="2xx"} 1`)
}

func slotIndex(tb *Table, s *slot) int {
	for i := 0; i < maxSlots; i++ {
		if tb.slotAt(i) == s {
			return i
		}
	}
	return -1
}

// opened maps a copy of tb's memfd as the next generation does, without
// registering, and returns it with its repairs.
func opened(t *testing.T, tb *Table) *Table {
	t.Helper()
	fd, err := unix.Dup(int(tb.File().Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := OpenTable(os.NewFile(uintptr(fd), "dup"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { t2.Close() })
	return t2
}

func hasRepair(rs []shmem.Repair, entry, field string) bool {
	for _, r := range rs {
		if strings.HasPrefix(r.Entry, entry) && r.Field == field {
			return true
		}
	}
	return false
}

// TestTableCheckRepairs corrupts one field of a table a running
// generation keeps, opens it as the next one does, and checks the repair,
// the counters after it, and that the table is in order.
func TestTableCheckRepairs(t *testing.T) {
	settle := settleDelay
	settleDelay = time.Millisecond
	t.Cleanup(func() { settleDelay = settle })
	tests := []struct {
		name         string
		corrupt      func(tb *Table)
		entry, field string // "" : no repair
		scrape       []string
	}{
		{"in order", func(tb *Table) {}, "", "", []string{`baton_requests_total{backend="web1",code="2xx"} 1`}},
		{"name length short", func(tb *Table) { atomic.StoreUint64(&tb.slots["web1"].nameLen, 2) },
			"slot 1 (web1)", "name length", []string{`baton_requests_total{backend="web1",code="2xx"} 1`}},
		{"name bytes garbage", func(tb *Table) { atomic.StoreUint64(&tb.slots["web1"].name[0], ^uint64(0)) },
			"slot 1", "name", []string{`baton_requests_total{backend="web1",code="2xx"} 0`}},
		{"two slots named alike", func(tb *Table) {
			s := tb.slots["web2"]
			shmem.StoreBytes(s.name[:], []byte("web1"))
			atomic.StoreUint64(&s.nameLen, 4)
		}, "slot 1 (web1)", "name", []string{`baton_requests_total{backend="web1",code="2xx"} 0`}},
		{"claim garbage", func(tb *Table) { atomic.StoreUint64(&tb.slots["web1"].claim, 9) },
			"slot 1 (web1)", "claim", []string{`baton_requests_total{backend="web1",code="2xx"} 1`}},
		{"free slot holding counts", func(tb *Table) { atomic.StoreUint64(&tb.slotAt(20).bytesIn, 5) },
			"slot 20", "name", nil},
		{"histogram count off", func(tb *Table) { atomic.AddUint64(&tb.slots["web1"].upstream.count, 1<<40) },
			"slot 1 (web1)", "upstream duration histogram", []string{`baton_upstream_duration_seconds_count{backend="web1"} 0`}},
		{"histogram bucket past the bounds", func(tb *Table) { atomic.StoreUint64(&tb.g.total.buckets[nBuckets-1], 3) },
			"global", "request duration histogram", []string{`baton_request_duration_seconds_count 0`}},
		{"generation pid garbage", func(tb *Table) { atomic.StoreInt64(&tb.g.gens[0].pid, -4) },
			"generation entry 0", "pid", nil},
		{"generation state garbage", func(tb *Table) { atomic.StoreUint64(&tb.g.gens[0].state, 1<<33) },
			"generation entry 0", "state", nil},
		{"generation number garbage", func(tb *Table) { atomic.StoreInt64(&tb.g.gens[0].gen, -1) },
			"generation entry 0", "generation", nil},
		{"generation start time garbage", func(tb *Table) { atomic.StoreInt64(&tb.g.gens[0].started, 1<<62) },
			"generation entry 0", "start time", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := newTable(t)
			old.Join(3, time.Now())
			old.Serving()
			old.Observe(&proxy.Exchange{Status: 200, Backend: "web1", Attempts: 1, Upstream: time.Millisecond, Total: time.Millisecond})
			tt.corrupt(old)
			next := opened(t, old)
			rs := next.Repairs()
			if tt.entry == "" && len(rs) > 0 {
				t.Errorf("repairs: got %v, want none", rs)
			}
			if tt.entry != "" && !hasRepair(rs, tt.entry, tt.field) {
				t.Errorf("repairs: got %v, want %s, field %s", rs, tt.entry, tt.field)
			}
			tableSane(t, next)
			if err := next.Register([]string{"web1", "web2"}); err != nil {
				t.Fatal(err)
			}
			has(t, scrape(t, next), tt.scrape...)
			for _, g := range next.Generations() {
				if g.PID < 1 || g.Generation < 0 || g.State == "" {
					t.Errorf("generation %+v", g)
				}
			}
		})
	}
}

// tableSane asserts what tb holds once checked, and that a second check
// repairs nothing.
func tableSane(t testing.TB, tb *Table) {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < maxSlots; i++ {
		s := tb.slotAt(i)
		switch cl := atomic.LoadUint64(&s.claim); cl {
		case claimFree:
			if !s.blank() {
				t.Errorf("slot %d: free, not blank", i)
			}
		case claimRetired:
		case claimed:
			name := s.loadName()
			if !validSlotName(name) || atomic.LoadUint64(&s.nameLen) != uint64(len(name)) {
				t.Errorf("slot %d: name %q", i, name)
			}
			if j, dup := seen[name]; dup {
				t.Errorf("slot %d: name %q also in slot %d", i, name, j)
			}
			seen[name] = i
		default:
			t.Errorf("slot %d: claim %d", i, cl)
		}
	}
	for i := range tb.g.gens {
		g := &tb.g.gens[i]
		if st := atomic.LoadUint64(&g.state); st >= uint64(len(genStateNames)) || st != genFree && (g.pid < 1 || g.pid > maxPID) {
			t.Errorf("generation entry %d: state %d pid %d", i, st, g.pid)
		}
	}
	if again := tb.check(time.Now()); len(again) > 0 {
		t.Errorf("a second check repaired again: %v", again)
	}
}

// TestOpenTableRejects: only the metrics memfd, at its size, with this
// layout's magic, is taken.
func TestOpenTableRejects(t *testing.T) {
	regular, err := os.CreateTemp(t.TempDir(), "m")
	if err != nil {
		t.Fatal(err)
	}
	regular.Truncate(tableSize)
	memfd := func(size int, magic uint64) *os.File {
		fd, err := unix.MemfdCreate(tableName, unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), tableName)
		f.Truncate(int64(size))
		if magic != 0 {
			var b [16]byte
			*(*uint64)(unsafe.Pointer(&b[0])) = magic
			*(*uint64)(unsafe.Pointer(&b[8])) = 1
			f.WriteAt(b[:], 0)
		}
		return f
	}
	for _, tt := range []struct {
		name string
		f    *os.File
		want string
	}{
		{"a regular file", regular, "is the file " + regular.Name() + ", not the memfd baton-metrics"},
		{"truncated", memfd(tableSize/2, tableMagic), fmt.Sprintf("has size %d, want %d", tableSize/2, tableSize)},
		{"zeroed", memfd(tableSize, 0), "magic 0x0, version 0: not a metrics table"},
		{"another layout", memfd(tableSize, 0x77), "magic 0x77, version 1: not a metrics table"},
		{"in order", memfd(tableSize, tableMagic), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(func() { tt.f.Close() })
			tb, err := OpenTable(tt.f)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				tb.Close()
				return
			}
			if err == nil {
				tb.Close()
				t.Fatalf("got a table, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// The parts of the table the fuzzer writes: the global section past the
// header, then the first slots, as far as their fields go.
var (
	fuzzGlobal = int(unsafe.Sizeof(global{})) - 16
	fuzzSlot   = int(unsafe.Sizeof(slot{}))
)

const fuzzSlots = 4

func fuzzBytes(tb *Table) []byte {
	b := append([]byte(nil), tb.mem[16:16+fuzzGlobal]...)
	for i := 0; i < fuzzSlots; i++ {
		off := globalSize + i*slotSize
		b = append(b, tb.mem[off:off+fuzzSlot]...)
	}
	return b
}

func fuzzFill(mem, data []byte) {
	data = data[copy(mem[16:16+fuzzGlobal], data):]
	for i := 0; i < fuzzSlots && len(data) > 0; i++ {
		off := globalSize + i*slotSize
		data = data[copy(mem[off:off+fuzzSlot], data):]
	}
}

// FuzzMetricsTable feeds random bytes for the global section and the
// first slots of a table with a valid header to OpenTable. Nothing
// panics, the table comes out in order, and the next generation
// registers, records and renders over it. Seeds: a real table after some
// traffic, and the same with a corrupt word.
func FuzzMetricsTable(f *testing.F) {
	settle := settleDelay
	settleDelay = 0
	f.Cleanup(func() { settleDelay = settle })
	tb, err := NewTable()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { tb.Close() })
	tb.Register([]string{"web1", "web2"})
	tb.Join(2, time.Now())
	tb.Serving()
	tb.Observe(&proxy.Exchange{Status: 200, Backend: "web1", Attempts: 2, Upstream: time.Millisecond, Total: 2 * time.Millisecond, BytesOut: 10})
	tb.Observe(&proxy.Exchange{Status: 503, Held: time.Second, Total: time.Second, Term: proxy.TermHoldTimeout})
	tb.RecordRestart("web2", true, []Step{{"drain", time.Millisecond}})
	f.Add(fuzzBytes(tb))
	atomic.StoreUint64(&tb.slots["web1"].nameLen, ^uint64(0))
	f.Add(fuzzBytes(tb))
	atomic.StoreUint64(&tb.g.gens[0].state, 99)
	f.Add(fuzzBytes(tb))
	f.Fuzz(func(t *testing.T, data []byte) {
		fd, err := unix.MemfdCreate(tableName, unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		file := os.NewFile(uintptr(fd), tableName)
		file.Truncate(tableSize)
		mem, err := unix.Mmap(fd, 0, tableSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		*(*uint64)(unsafe.Pointer(&mem[0])) = tableMagic
		*(*uint64)(unsafe.Pointer(&mem[8])) = tableVersion
		fuzzFill(mem, data)
		unix.Munmap(mem)
		next, err := OpenTable(file)
		if err != nil {
			t.Fatalf("OpenTable refused a valid header: %v", err)
		}
		defer next.Close()
		tableSane(t, next)
		if err := next.Register([]string{"web1", "web2", "web3"}); err != nil {
			t.Fatal(err)
		}
		next.Observe(&proxy.Exchange{Status: 200, Backend: "web3", Attempts: 1, Total: time.Millisecond})
		next.RecordRestart("web1", false, nil)
		var out bytes.Buffer
		if err := next.Write(&out, Live{Generation: 2}); err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if !strings.HasPrefix(line, "# ") && strings.Count(line, " ") < 1 {
				t.Errorf("exposition line %q", line)
			}
		}
		for _, g := range next.Generations() {
			if g.PID < 1 || g.PID > maxPID {
				t.Errorf("generation %+v", g)
			}
		}
	})
}
