package metrics

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/internal/shmem"
	"github.com/batonproxy/baton/proxy"
)

// Layout of the shared memory: a global section, then one slot per
// backend name. Each section is larger than what it holds now; later
// versions append fields into the rest (see the package doc).
const (
	tableMagic   = 0x31534352544d4231 // "1BMTRCS1"
	tableVersion = 1
	globalSize   = 16 << 10
	slotSize     = 4 << 10
	maxSlots     = 64
	maxNameLen   = 64
	tableSize    = globalSize + maxSlots*slotSize
	maxGens      = 32
	tableName    = "baton-metrics" // the memfd's name, checked by OpenTable
)

// Values of slot.claim.
const (
	claimFree    = 0
	claimWriting = 1
	claimed      = 2
	claimRetired = 3 // unreadable (see check.go): never looked up nor claimed again
)

// NoBackend is the backend label of requests no backend answered (held
// until hold_timeout, max_held): it cannot clash with a backend name.
const NoBackend = "(none)"

// Bounds are the upper bounds, in seconds, of every histogram's buckets
// (plus +Inf). Part of the layout: append only.
var Bounds = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

var boundsNanos = func() (b [len(Bounds)]int64) {
	for i, s := range Bounds {
		b[i] = int64(s * float64(time.Second))
	}
	return b
}()

const nBuckets = 24 // room for len(Bounds)+1 and later bounds

// hist is a fixed-bucket histogram of durations: non-cumulative bucket
// counts, the sum in nanoseconds and the count.
type hist struct {
	buckets [nBuckets]uint64
	sum     uint64
	count   uint64
}

func (h *hist) observe(d time.Duration) {
	i := 0
	for i < len(boundsNanos) && int64(d) > boundsNanos[i] {
		i++
	}
	atomic.AddUint64(&h.buckets[i], 1)
	if d > 0 {
		atomic.AddUint64(&h.sum, uint64(d))
	}
	atomic.AddUint64(&h.count, 1)
}

// Retry reasons.
const (
	RetryConnect = iota // no connection could be made
	RetryReset          // the connection failed before a response (replayable requests)
	nRetryReasons
)

var retryNames = [nRetryReasons]string{"connect", "reset"}

// Restart steps with a histogram each; others count as stepOther.
var stepNames = [...]string{"drain", "restart", "healthy", "other"}

// generation states in a genSlot.
const (
	genFree = iota
	genStarting
	genServing
	genDraining
)

var genStateNames = [...]string{"free", "starting", "serving", "draining"}

type genSlot struct {
	pid     int64
	gen     int64
	started int64 // unix nanos
	state   uint64
	since   int64 // unix nanos the state began
	_       [3]uint64
}

// global is the table's first section.
type global struct {
	magic   uint64
	version uint64

	reopenEpoch    uint64 // bumped by `ctl reopen-logs`
	upgradesOK     uint64
	upgradesFailed uint64
	upgradeTook    hist // request to new process ready
	logLines       uint64
	logDropped     uint64
	total          hist // every request, header to end of response
	hold           hist // held requests: time held
	retries        [8]uint64
	terms          [32]uint64 // requests by proxy.Termination
	gens           [maxGens]genSlot

	// Appended: TLS handshakes on both planes.
	tlsHandshakes [2]uint64  // full, resumed
	tlsFailures   [16]uint64 // by TLS failure reason
}

// slot is one backend's section.
type slot struct {
	claim    uint64 // 0 free, 1 being written, 2 claimed
	nameLen  uint64
	name     [maxNameLen / 8]uint64
	requests [6]uint64 // by status class: 0 (none sent), 1xx..5xx
	bytesIn  uint64
	bytesOut uint64
	upstream hist      // send to response header, last attempt
	restarts [2]uint64 // failed, ok
	steps    [len(stepNames)]hist
}

func init() {
	if unsafe.Sizeof(global{}) > globalSize || unsafe.Sizeof(slot{}) > slotSize {
		panic("metrics: table layout does not fit")
	}
	if len(Bounds)+1 > nBuckets || int(proxy.TermUpgraded) >= len(global{}.terms) || nTLSReasons > len(global{}.tlsFailures) {
		panic("metrics: too many buckets or terminations")
	}
}

// Table is the counters shared by all live baton generations. It is safe
// for concurrent use by any number of goroutines and processes. Use
// NewTable or OpenTable, then Register the backend names before recording.
type Table struct {
	r     *shmem.Region
	mem   []byte // r.Mem
	g     *global
	slots map[string]*slot // read-only after Register
	order []string
	none  *slot
	mine  *genSlot

	repairs []shmem.Repair // what OpenTable found corrupt
}

// NewTable creates an empty table in a new memfd.
func NewTable() (*Table, error) {
	r, err := shmem.Create(tableName, tableSize)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	t := mapTable(r)
	atomic.StoreUint64(&t.g.version, tableVersion)
	atomic.StoreUint64(&t.g.magic, tableMagic)
	return t, nil
}

// OpenTable maps a table passed by a previous generation. It takes
// ownership of f. f must be the memfd NewTable made (name, size, seals:
// see shmem.Check) with this layout's magic, or it is refused with an error
// saying what it is (the caller then starts a NewTable: counters begin
// again from zero). Then every entry is checked and what is corrupt is
// repaired in place (see Repairs).
func OpenTable(f *os.File) (*Table, error) {
	r, err := shmem.Open(f, tableName, tableSize)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	t := mapTable(r)
	if m, v := atomic.LoadUint64(&t.g.magic), atomic.LoadUint64(&t.g.version); m != tableMagic || v < 1 {
		t.Close()
		return nil, fmt.Errorf("metrics: magic %#x, version %d: not a metrics table of this layout (want magic %#x)", m, v, uint64(tableMagic))
	}
	t.repairs = t.check(time.Now())
	return t, nil
}

// Repairs lists what OpenTable found corrupt and what it did about each;
// nil for a table in order.
func (t *Table) Repairs() []shmem.Repair { return t.repairs }

func mapTable(r *shmem.Region) *Table {
	return &Table{r: r, mem: r.Mem, g: (*global)(unsafe.Pointer(&r.Mem[0])), slots: map[string]*slot{}}
}

// File is the memfd behind the table, to pass to the next generation.
func (t *Table) File() *os.File { return t.r.File }

// Close unmaps the table; nothing may be recorded after.
func (t *Table) Close() error { return t.r.Close() }

func (t *Table) slotAt(i int) *slot {
	return (*slot)(unsafe.Pointer(&t.mem[globalSize+i*slotSize]))
}

// Register finds or claims the slots of names (the configured backends)
// and of NoBackend. Call it once, before recording; a name registered by
// an earlier generation keeps its counts.
func (t *Table) Register(names []string) error {
	for _, n := range append([]string{NoBackend}, names...) {
		s, err := t.claim(n)
		if err != nil {
			return err
		}
		if _, dup := t.slots[n]; !dup {
			t.order = append(t.order, n)
		}
		t.slots[n] = s
	}
	t.none = t.slots[NoBackend]
	return nil
}

func (t *Table) claim(name string) (*slot, error) {
	if len(name) == 0 || len(name) > maxNameLen {
		return nil, fmt.Errorf("metrics: name %q must be 1 to %d bytes", name, maxNameLen)
	}
	for i := 0; i < maxSlots; i++ {
		s := t.slotAt(i)
		switch atomic.LoadUint64(&s.claim) {
		case claimed:
			if s.loadName() == name {
				return s, nil
			}
		case claimFree:
			if atomic.CompareAndSwapUint64(&s.claim, claimFree, claimWriting) {
				atomic.StoreUint64(&s.nameLen, uint64(shmem.StoreBytes(s.name[:], []byte(name))))
				atomic.StoreUint64(&s.claim, claimed)
				return s, nil
			}
		}
	}
	return nil, fmt.Errorf("metrics: table full (%d names)", maxSlots)
}

// loadName reads the slot's name. Issue 21: the length word went through
// int before its clamp, so a corrupt one panicked every later generation.
func (s *slot) loadName() string { return shmem.Text(s.name[:], atomic.LoadUint64(&s.nameLen)) }

// Observe counts one finished request. It does not allocate.
func (t *Table) Observe(e *proxy.Exchange) {
	s := t.none
	if e.Backend != "" {
		if bs, ok := t.slots[e.Backend]; ok {
			s = bs
		}
	}
	if s == nil {
		return // not registered
	}
	class := e.Status / 100
	if class < 0 || class > 5 {
		class = 0
	}
	atomic.AddUint64(&s.requests[class], 1)
	if e.BytesIn > 0 {
		atomic.AddUint64(&s.bytesIn, uint64(e.BytesIn))
	}
	if e.BytesOut > 0 {
		atomic.AddUint64(&s.bytesOut, uint64(e.BytesOut))
	}
	if e.Attempts > 0 {
		s.upstream.observe(e.Upstream)
	}
	t.g.total.observe(e.Total)
	if e.Held > 0 {
		t.g.hold.observe(e.Held)
	}
	if r := e.Attempts - 1; r > 0 {
		dial := min(e.DialRetries, r)
		if dial > 0 {
			atomic.AddUint64(&t.g.retries[RetryConnect], uint64(dial))
		}
		if r > dial {
			atomic.AddUint64(&t.g.retries[RetryReset], uint64(r-dial))
		}
	}
	if int(e.Term) < len(t.g.terms) {
		atomic.AddUint64(&t.g.terms[e.Term], 1)
	}
}

// Totals is the number of requests proxied by every generation so far
// and, of those, how many were answered 5xx (by a backend or by baton),
// to any backend any generation registered.
func (t *Table) Totals() (requests, errors uint64) {
	for i := 0; i < maxSlots; i++ {
		s := t.slotAt(i)
		if atomic.LoadUint64(&s.claim) != 2 {
			continue
		}
		for c := range s.requests {
			requests += load(&s.requests[c])
		}
		errors += load(&s.requests[5])
	}
	return requests, errors
}

// Step is one timed step of a backend restart, as metrics sees it.
type Step struct {
	Name     string
	Duration time.Duration
}

// RecordRestart counts a finished restart of backend and its steps.
func (t *Table) RecordRestart(backend string, ok bool, steps []Step) {
	s, found := t.slots[backend]
	if !found {
		return
	}
	i := 0
	if ok {
		i = 1
	}
	atomic.AddUint64(&s.restarts[i], 1)
	for _, st := range steps {
		k := len(stepNames) - 1
		for j, n := range stepNames[:len(stepNames)-1] {
			if n == st.Name {
				k = j
			}
		}
		s.steps[k].observe(st.Duration)
	}
}

// RecordUpgrade counts an upgrade this process started: ok, and how long
// until the new process was ready.
func (t *Table) RecordUpgrade(ok bool, took time.Duration) {
	if !ok {
		atomic.AddUint64(&t.g.upgradesFailed, 1)
		return
	}
	atomic.AddUint64(&t.g.upgradesOK, 1)
	t.g.upgradeTook.observe(took)
}

// LogWritten counts access log lines written.
func (t *Table) LogWritten(n int) { atomic.AddUint64(&t.g.logLines, uint64(n)) }

// LogDropped counts access log lines dropped (queue full, write error).
func (t *Table) LogDropped(n int) { atomic.AddUint64(&t.g.logDropped, uint64(n)) }

// ReopenEpoch is bumped by BumpReopen; every generation's access log
// reopens its file when it sees it move.
func (t *Table) ReopenEpoch() uint64 { return atomic.LoadUint64(&t.g.reopenEpoch) }

// BumpReopen asks every generation to reopen its log files.
func (t *Table) BumpReopen() uint64 { return atomic.AddUint64(&t.g.reopenEpoch, 1) }

// Generation is one live baton process, as recorded in the table.
type Generation struct {
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	Started    time.Time `json:"started"`
	State      string    `json:"state"` // starting, serving, draining
	Since      time.Time `json:"since"`
}

// Join records this process as generation gen, starting. Call SetState as
// it becomes ready and starts draining, and Leave before it exits.
func (t *Table) Join(gen int, started time.Time) {
	pid := int64(os.Getpid())
	for i := range t.g.gens {
		g := &t.g.gens[i]
		st := atomic.LoadUint64(&g.state)
		if st != genFree && !alive(atomic.LoadInt64(&g.pid)) {
			// A generation that died without leaving.
			if !atomic.CompareAndSwapUint64(&g.state, st, genFree) {
				continue
			}
			st = genFree
		}
		if st == genFree && atomic.CompareAndSwapUint64(&g.state, genFree, genStarting) {
			atomic.StoreInt64(&g.pid, pid)
			atomic.StoreInt64(&g.gen, int64(gen))
			atomic.StoreInt64(&g.started, started.UnixNano())
			atomic.StoreInt64(&g.since, time.Now().UnixNano())
			t.mine = g
			return
		}
	}
}

// Serving marks this process as the serving generation.
func (t *Table) Serving() { t.setState(genServing) }

// Draining marks this process as draining.
func (t *Table) Draining() { t.setState(genDraining) }

// Leave removes this process from the live generations.
func (t *Table) Leave() {
	if t.mine != nil {
		atomic.StoreInt64(&t.mine.pid, 0)
		atomic.StoreUint64(&t.mine.state, genFree)
		t.mine = nil
	}
}

func (t *Table) setState(st uint64) {
	if t.mine != nil {
		atomic.StoreInt64(&t.mine.since, time.Now().UnixNano())
		atomic.StoreUint64(&t.mine.state, st)
	}
}

// Generations lists the live baton generations, oldest first.
func (t *Table) Generations() []Generation {
	var out []Generation
	for i := range t.g.gens {
		g := &t.g.gens[i]
		st := atomic.LoadUint64(&g.state)
		pid := atomic.LoadInt64(&g.pid)
		if st == genFree || st >= uint64(len(genStateNames)) || pid == 0 || !alive(pid) {
			continue
		}
		out = append(out, Generation{
			PID: int(pid), Generation: int(atomic.LoadInt64(&g.gen)),
			Started: time.Unix(0, atomic.LoadInt64(&g.started)), State: genStateNames[st],
			Since: time.Unix(0, atomic.LoadInt64(&g.since)),
		})
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Generation < out[j-1].Generation; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func alive(pid int64) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(int(pid), 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
