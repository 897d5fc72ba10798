package backends

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/batonproxy/baton/internal/shmem"
)

// The state table is a small region of memory shared by every live baton
// generation: the serving process and the older ones still draining. It is a
// memfd passed across upgrades (see handoff.AddFile), mapped MAP_SHARED, and
// every field is read and written with sync/atomic, so a backend taken out of
// rotation by one process is out of rotation for all of them at once, and
// in-flight counts cover every generation.
//
// In-flight counts belong to a generation (Issue 7: a kill -9 of a
// draining generation left its requests counted forever, and every later
// restart waited its whole drain_timeout). Each live generation has an
// entry per slot, named by its pid and start time (genID), counting its own
// requests; the global count is kept as well, since an older baton knows
// only that one. Whoever notices that an entry's generation is gone
// (the drain poll, Drain, Status, a new generation looking for a free
// entry) takes the entry over by compare-and-swap, subtracts its count
// from the global one and frees it.
//
// Nothing read from the table is trusted: other processes write it, and so
// may a bug or anything running as root that opens the memfd. OpenStateTable
// checks every slot before this process uses any (statecheck.go) and
// repairs what is corrupt in place, by compare-and-swap, so the older
// generations still writing the same slots see the repair; reads at run
// time never slice or index by a value from the table unchecked.

const (
	stateMagic   = 0x31544e4f54414231 // "1BATONT1" little-endian-ish tag
	stateVersion = 1
	maxSlots     = 128
	maxNameLen   = 64
	maxReasonLen = 192
	maxGens      = 9 // generation entries per slot: live generations counted apart
	headerSize   = 64
	slotSize     = 512
	stateSize    = headerSize + maxSlots*slotSize
	stateName    = "baton-backends" // the memfd's name, checked by OpenStateTable
)

// Values of stateSlot.claim.
const (
	claimFree    = 0
	claimWriting = 1 // a starting generation writes the name
	claimed      = 2
	// claimRetired marks a slot a loader found unreadable (no valid name,
	// or a name found twice): it is never looked up nor claimed again, as
	// an older generation may still write it through the pointer it holds.
	claimRetired = 3
)

type stateHeader struct {
	magic   uint64
	version uint64
	_       [6]uint64
}

// stateSlot is one backend's shared record. Its layout is part of the
// handoff contract between baton versions: append fields only.
type stateSlot struct {
	claim    uint64 // 0 free, 1 being written, 2 claimed
	nameLen  uint64
	name     [maxNameLen / 8]uint64
	word     uint64 // packed stateWord
	owner    int64  // pid running the current restart, 0 if none
	inflight int64  // requests in flight to this backend, all generations
	epoch    uint64 // bumped when the backend restarted: pooled connections are stale
	since    int64  // unix nanos when the current phase began
	lastAt   int64  // unix nanos of the last restart result
	lastOK   uint64 // 1 if the last restart succeeded
	lastDur  int64  // nanos the last restart took
	lastSeq  uint64 // seqlock over the last* fields: odd while one is written
	lastLen  uint64
	reason   [maxReasonLen / 8]uint64

	// Appended after the first release; older binaries leave them zero.
	ownerGen uint64            // genID of owner, 0 if unknown
	gens     [maxGens]genEntry // per-generation in-flight counts

	// Appended for slow start (issue 11); this fills the slot.
	routableSince int64 // unix nanos when the backend last became routable again; 0: since start
}

// genEntry counts one generation's requests in flight to a backend. id is
// 0 when the entry is free and genReclaiming while one process frees it.
type genEntry struct {
	id    uint64
	count int64
}

const genReclaiming = ^uint64(0)

func init() {
	if unsafe.Sizeof(stateSlot{}) > slotSize || unsafe.Sizeof(stateHeader{}) != headerSize {
		panic("backends: state slot layout does not fit")
	}
}

// Phase is where a backend is in a restart.
type Phase uint8

// Restart phases, in order.
const (
	PhaseNone       Phase = iota // not restarting
	PhaseDraining                // out of rotation, waiting for in-flight requests
	PhaseRestarting              // the server is being signalled, stopped or started
	PhaseStarting                // waiting for the process and the health check
)

var phaseNames = [...]string{"none", "draining", "restarting", "starting"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", p)
}

// stateWord packs what routing needs into one atomically swapped word.
type stateWord uint64

const (
	bitDown    = 1 << 8 // health checks or passive failures say the backend is down
	bitDrained = 1 << 9 // taken out of rotation by an operator

	// wordFlags are every flag bit above. A flag added must be added here
	// too: OpenStateTable takes a word with a bit it does not know, outside
	// the phase byte, for corrupt (statecheck.go), as it does a phase
	// without a name in phaseNames.
	wordFlags = bitDown | bitDrained
)

// valid reports whether w holds a known phase and known flags only.
func (w stateWord) valid() bool {
	return int(w.phase()) < len(phaseNames) && w&^(0xff|wordFlags) == 0
}

func (w stateWord) phase() Phase  { return Phase(w & 0xff) }
func (w stateWord) down() bool    { return w&bitDown != 0 }
func (w stateWord) drained() bool { return w&bitDrained != 0 }
func (w stateWord) routable() bool {
	return w.phase() == PhaseNone && w&(bitDown|bitDrained) == 0
}
func (w stateWord) withPhase(p Phase) stateWord { return w&^0xff | stateWord(p) }
func (w stateWord) with(bit stateWord, on bool) stateWord {
	if on {
		return w | bit
	}
	return w &^ bit
}

// label is the one-word state shown by status.
func (w stateWord) label() string {
	switch {
	case w.phase() != PhaseNone:
		return w.phase().String()
	case w.drained():
		return "drained"
	case w.down():
		return "down"
	default:
		return "up"
	}
}

// StateTable is the backend state shared by all live baton generations. The
// zero value is not usable; use NewStateTable or OpenStateTable. It is safe
// for concurrent use by any number of goroutines and processes.
type StateTable struct {
	r   *shmem.Region
	mem []byte // r.Mem
	hdr *stateHeader

	repairs []shmem.Repair // what OpenStateTable found corrupt
	// startDown makes a slot claimed by this process start down (until a
	// health check passes) rather than up: set when the state of some
	// backends was lost (a slot retired, the whole table replaced), since
	// a backend that gets a new slot may be one whose old slot is gone.
	startDown bool
}

func mapState(r *shmem.Region) *StateTable {
	return &StateTable{r: r, mem: r.Mem, hdr: (*stateHeader)(unsafe.Pointer(&r.Mem[0]))}
}

// NewStateTable creates an empty table in a new memfd.
func NewStateTable() (*StateTable, error) {
	r, err := shmem.Create(stateName, stateSize)
	if err != nil {
		return nil, fmt.Errorf("backends: state table: %w", err)
	}
	t := mapState(r)
	atomic.StoreUint64(&t.hdr.version, stateVersion)
	atomic.StoreUint64(&t.hdr.magic, stateMagic)
	return t, nil
}

// ReplaceStateTable creates an empty table to use instead of one that
// OpenStateTable refused. The previous generations' state is then
// unknown, including restarts they may be running, so every backend
// starts down and is readmitted by its first passing health check.
func ReplaceStateTable() (*StateTable, error) {
	t, err := NewStateTable()
	if err != nil {
		return nil, err
	}
	t.startDown = true
	return t, nil
}

// OpenStateTable maps a table passed by a previous generation. It takes
// ownership of f. f must be the memfd NewStateTable made (by its name, its
// size and its seals: see shmem.Check) and carry this layout's magic;
// anything else is refused with an error that says what f is, and the
// caller starts from ReplaceStateTable. Then every slot is checked and
// what is corrupt is repaired in place (see Repairs).
func OpenStateTable(f *os.File) (*StateTable, error) {
	return openStateTable(f, time.Now(), genAlive, alive)
}

// openStateTable is OpenStateTable with the clock and the liveness checks
// of generations and pids given: a test seam.
func openStateTable(f *os.File, now time.Time, genAlive func(genID) bool, pidAlive func(int) bool) (*StateTable, error) {
	r, err := shmem.Open(f, stateName, stateSize)
	if err != nil {
		return nil, fmt.Errorf("backends: state table: %w", err)
	}
	t := mapState(r)
	// why: versions only append fields (see stateSlot), so a table from a
	// newer baton is read for what this one knows; another layout has
	// another magic.
	if m, v := atomic.LoadUint64(&t.hdr.magic), atomic.LoadUint64(&t.hdr.version); m != stateMagic || v < 1 {
		t.Close()
		return nil, fmt.Errorf("backends: state table: magic %#x, version %d: not a state table of this layout (want magic %#x)", m, v, uint64(stateMagic))
	}
	t.repairs = t.check(now, genAlive, pidAlive)
	return t, nil
}

// Repairs lists what OpenStateTable found corrupt in the table and what it
// did about each (see statecheck.go); nil for a table in order.
func (t *StateTable) Repairs() []shmem.Repair { return t.repairs }

// File is the memfd behind the table, to pass to the next generation.
func (t *StateTable) File() *os.File { return t.r.File }

// Close unmaps the table. Slots handed out before must not be used after.
func (t *StateTable) Close() error { return t.r.Close() }

func (t *StateTable) slotAt(i int) *stateSlot {
	return (*stateSlot)(unsafe.Pointer(&t.mem[headerSize+i*slotSize]))
}

// slot returns the record for name, claiming a free one for a name never
// seen. A new record starts up, not draining, not drained.
func (t *StateTable) slot(name string) (*stateSlot, error) {
	if len(name) == 0 || len(name) > maxNameLen {
		return nil, fmt.Errorf("backends: state table: name %q must be 1 to %d bytes", name, maxNameLen)
	}
	free := -1
	for i := 0; i < maxSlots; i++ {
		s := t.slotAt(i)
		switch atomic.LoadUint64(&s.claim) {
		case claimed:
			if s.loadName() == name {
				return s, nil
			}
		case claimFree:
			if free < 0 {
				free = i
			}
		}
	}
	if free < 0 {
		return nil, fmt.Errorf("backends: state table full (%d names)", maxSlots)
	}
	// Only a starting generation claims slots, and only one generation starts
	// at a time, but CAS keeps two claimers from sharing a slot anyway.
	for i := free; i < maxSlots; i++ {
		s := t.slotAt(i)
		if atomic.CompareAndSwapUint64(&s.claim, claimFree, claimWriting) {
			storeText(s.name[:], &s.nameLen, name)
			if t.startDown {
				atomic.StoreUint64(&s.word, bitDown)
			}
			atomic.StoreUint64(&s.claim, claimed)
			return s, nil
		}
	}
	return nil, fmt.Errorf("backends: state table full (%d names)", maxSlots)
}

func (s *stateSlot) loadName() string { return loadText(s.name[:], &s.nameLen) }

func (s *stateSlot) load() stateWord { return stateWord(atomic.LoadUint64(&s.word)) }

func (s *stateSlot) cas(old, new stateWord) bool {
	return atomic.CompareAndSwapUint64(&s.word, uint64(old), uint64(new))
}

// update applies f until the swap wins, and returns the old and new words.
func (s *stateSlot) update(f func(stateWord) stateWord) (old, new stateWord) {
	for {
		old = s.load()
		new = f(old)
		if old == new || s.cas(old, new) {
			if !old.routable() && new.routable() {
				atomic.StoreInt64(&s.routableSince, time.Now().UnixNano())
			}
			return old, new
		}
	}
}

func (s *stateSlot) setResult(ok bool, dur time.Duration, reason string) {
	if len(reason) > maxReasonLen {
		reason = strings.ToValidUTF8(reason[:maxReasonLen-3], "") + "..."
	}
	// Only the restart's owner writes a result, so writers never overlap.
	atomic.AddUint64(&s.lastSeq, 1)
	storeText(s.reason[:], &s.lastLen, reason)
	var okv uint64
	if ok {
		okv = 1
	}
	atomic.StoreUint64(&s.lastOK, okv)
	atomic.StoreInt64(&s.lastDur, int64(dur))
	atomic.StoreInt64(&s.lastAt, time.Now().UnixNano())
	atomic.AddUint64(&s.lastSeq, 1)
}

// lastResult is a restart's outcome as recorded in the table.
type lastResult struct {
	at     time.Time
	ok     bool
	dur    time.Duration
	reason string
}

// result reads the last restart result; have is false if there was none.
func (s *stateSlot) result() (r lastResult, have bool) {
	for i := 0; i < 1000; i++ {
		seq := atomic.LoadUint64(&s.lastSeq)
		if seq&1 != 0 {
			continue // a writer is mid-update
		}
		reason := loadText(s.reason[:], &s.lastLen)
		ns := atomic.LoadInt64(&s.lastAt)
		ok := atomic.LoadUint64(&s.lastOK) == 1
		dur := time.Duration(atomic.LoadInt64(&s.lastDur))
		if atomic.LoadUint64(&s.lastSeq) != seq {
			continue
		}
		if ns == 0 {
			return lastResult{}, false
		}
		return lastResult{time.Unix(0, ns), ok, dur, reason}, true
	}
	return lastResult{}, false
}

func storeText(words []uint64, n *uint64, s string) {
	atomic.StoreUint64(n, uint64(shmem.StoreBytes(words, []byte(s))))
}

// loadText reads a text field. Issue 21: the length word was converted to
// int before the clamp, so a corrupt one (2^63 or more) went negative and
// the slice panicked, in every later generation at its start.
func loadText(words []uint64, np *uint64) string {
	return shmem.Text(words, atomic.LoadUint64(np))
}

// genID names a process for its whole life: its pid and its start time
// (clock ticks after boot, /proc/PID/stat field 22), so a reused pid is a
// different genID. pid_max is at most 2^22; 42 bits of ticks are 1394
// years at 100 Hz.
type genID uint64

func makeGenID(pid int, start uint64) genID {
	return genID(uint64(pid)<<42 | start&(1<<42-1))
}

func (g genID) pid() int { return int(uint64(g) >> 42) }

// plausible reports whether g can name a process: its pid is one Linux
// can give. An id read from the table that is not is corrupt.
func (g genID) plausible() bool {
	return uint64(g) != genReclaiming && g.pid() >= 1 && g.pid() <= maxPID
}

// genOf is the genID of a running process.
func genOf(pid int) (genID, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return makeGenID(pid, st.start), nil
}

// genAlive reports whether the process g names still runs: its pid exists,
// is no zombie, and started when g says. If /proc cannot tell, it is
// taken to be alive: a count kept too long costs a drain_timeout, a count
// dropped early costs a restart under a request.
func genAlive(g genID) bool {
	st, err := readStat(g.pid())
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	if st.state == 'Z' || st.state == 'X' {
		return false
	}
	return makeGenID(g.pid(), st.start) == g
}

// claimGen takes a free generation entry for id, freeing the entries of
// dead generations if there is none. It returns nil if every entry belongs
// to a live generation.
func (s *stateSlot) claimGen(id genID, alive func(genID) bool) *genEntry {
	for pass := 0; pass < 2; pass++ {
		for i := range s.gens {
			if atomic.CompareAndSwapUint64(&s.gens[i].id, 0, uint64(id)) {
				return &s.gens[i]
			}
		}
		s.reclaim(id, alive)
	}
	return nil
}

// reclaimed is a dead generation's count taken out of a slot.
type reclaimed struct {
	pid   int
	count int64
}

// reclaim frees the entries of generations that are gone (never self's)
// and subtracts their counts from the global one. Any number of processes
// may run it at once: the compare-and-swap of the entry's id to
// genReclaiming picks the one that frees it, and nothing else writes a
// dead generation's count.
func (s *stateSlot) reclaim(self genID, alive func(genID) bool) []reclaimed {
	var out []reclaimed
	for i := range s.gens {
		e := &s.gens[i]
		id := atomic.LoadUint64(&e.id)
		if id == 0 || id == genReclaiming || genID(id) == self || (genID(id).plausible() && alive(genID(id))) {
			continue
		}
		if !atomic.CompareAndSwapUint64(&e.id, id, genReclaiming) {
			continue // another process is at it
		}
		n := s.takeCount(e)
		atomic.StoreUint64(&e.id, 0)
		out = append(out, reclaimed{pid: genID(id).pid(), count: n})
	}
	return out
}

// takeCount zeroes the count of e, an entry this process took over, and
// subtracts it from the global count, never by more than the global count
// holds beyond the other entries' (which is at least what e's generation
// really had in flight): a count corrupt in shared memory must not make
// the global one go below the requests the others have in flight.
func (s *stateSlot) takeCount(e *genEntry) int64 {
	n := atomic.SwapInt64(&e.count, 0)
	var others int64
	for i := range s.gens {
		if o := &s.gens[i]; o != e {
			others += max(atomic.LoadInt64(&o.count), 0)
		}
	}
	n = min(n, atomic.LoadInt64(&s.inflight)-others)
	if n <= 0 {
		return 0
	}
	atomic.AddInt64(&s.inflight, -n)
	return n
}

// liveGens lists the pids of the generations holding entries in s.
func (s *stateSlot) liveGens(alive func(genID) bool) []int {
	var out []int
	for i := range s.gens {
		id := atomic.LoadUint64(&s.gens[i].id)
		if id != 0 && id != genReclaiming && genID(id).plausible() && alive(genID(id)) {
			out = append(out, genID(id).pid())
		}
	}
	return out
}
