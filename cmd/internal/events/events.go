package events

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/batonproxy/baton/internal/shmem"
)

// Layout: a header, then Size entries. Part of the contract between baton
// versions: a different layout needs a new magic or version, and an
// older ring is then not opened (the events start afresh).
const (
	ringMagic   = 0x31535456454e4231 // "1BNEVTS1"
	ringVersion = 1
	headerSize  = 64
	entrySize   = 512
	// Size is the number of events the ring keeps.
	Size      = 64
	ringBytes = headerSize + Size*entrySize
	// ringName is the memfd's name, which Open checks (shmem.Check).
	ringName = "baton-events"

	entryFixed = 8 * 6 // seq, time, level, pid, generation, lengths
	dataWords  = (entrySize - entryFixed) / 8
	dataBytes  = dataWords * 8

	// MaxMsg and MaxAttrs bound an event's message and attributes, in
	// bytes; longer ones are cut at a rune boundary.
	MaxMsg   = 120
	MaxAttrs = dataBytes - MaxMsg
)

type header struct {
	magic   uint64
	version uint64
	next    uint64 // sequence number of the next event; the event n is at entries[n%Size]
	_       [5]uint64
}

type entry struct {
	seq   uint64 // 2n+1 while event n is written, 2n+2 once it is whole; 0: never written
	time  int64  // unix nanoseconds
	level int64
	pid   int64
	gen   int64
	lens  uint64 // message length <<32 | attributes length
	data  [dataWords]uint64
}

func init() {
	if unsafe.Sizeof(header{}) != headerSize || unsafe.Sizeof(entry{}) != entrySize {
		panic("events: layout does not fit")
	}
}

// Event is one log event.
type Event struct {
	Time       time.Time `json:"time"`
	Level      int       `json:"level"` // slog.Level
	PID        int       `json:"pid"`
	Generation int       `json:"generation"` // 0: logged before the process knew it
	Msg        string    `json:"msg"`
	Attrs      string    `json:"attrs,omitempty"`
}

// Ring is the last Size events of every baton generation. It is safe for
// concurrent use by any number of goroutines and processes.
type Ring struct {
	r   *shmem.Region // nil for a ring over plain memory (tests)
	mem []byte
	hdr *header
}

// New creates an empty ring in a new memfd.
func New() (*Ring, error) {
	r, err := shmem.Create(ringName, ringBytes)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	g := over(r.Mem)
	g.r = r
	atomic.StoreUint64(&g.hdr.version, ringVersion)
	atomic.StoreUint64(&g.hdr.magic, ringMagic)
	return g, nil
}

// Open maps a ring passed by a previous generation. It takes ownership of
// f. A ring of another layout (magic, version or size) is an error.
func Open(f *os.File) (*Ring, error) {
	r, err := shmem.Open(f, ringName, ringBytes)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	g := over(r.Mem)
	g.r = r
	if err := g.check(); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

func over(mem []byte) *Ring {
	return &Ring{mem: mem, hdr: (*header)(unsafe.Pointer(&mem[0]))}
}

func (g *Ring) check() error {
	if m, v := atomic.LoadUint64(&g.hdr.magic), atomic.LoadUint64(&g.hdr.version); m != ringMagic || v != ringVersion {
		return fmt.Errorf("events: bad magic %#x or version %d", m, v)
	}
	return nil
}

// File is the memfd behind the ring, to pass to the next generation.
func (g *Ring) File() *os.File { return g.r.File }

// Close unmaps the ring; nothing may be added after.
func (g *Ring) Close() error {
	if g.r == nil {
		return nil
	}
	return g.r.Close()
}

func (g *Ring) at(n uint64) *entry {
	return (*entry)(unsafe.Pointer(&g.mem[headerSize+int(n%Size)*entrySize]))
}

// Add appends e, cutting its message and attributes to MaxMsg and
// MaxAttrs bytes. It does not block.
func (g *Ring) Add(e Event) {
	msg, attrs := cut(e.Msg, MaxMsg), cut(e.Attrs, MaxAttrs)
	n := atomic.AddUint64(&g.hdr.next, 1) - 1
	p := g.at(n)
	atomic.StoreUint64(&p.seq, 2*n+1)
	atomic.StoreInt64(&p.time, e.Time.UnixNano())
	atomic.StoreInt64(&p.level, int64(e.Level))
	atomic.StoreInt64(&p.pid, int64(e.PID))
	atomic.StoreInt64(&p.gen, int64(e.Generation))
	atomic.StoreUint64(&p.lens, uint64(len(msg))<<32|uint64(len(attrs)))
	var buf [dataBytes]byte
	copy(buf[:], msg)
	copy(buf[len(msg):], attrs)
	for i := range p.data {
		atomic.StoreUint64(&p.data[i], *(*uint64)(unsafe.Pointer(&buf[i*8])))
	}
	atomic.StoreUint64(&p.seq, 2*n+2)
}

// cut shortens s to at most n bytes, at a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Bounds of what a valid entry holds.
var minTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

const (
	minLevel = -8 // slog.LevelDebug - 4
	maxLevel = 12 // slog.LevelError + 4
	maxPID   = 1 << 22
	maxGen   = 1 << 31
)

var errBad = errors.New("events: bad entry")

// List returns the valid events, newest first. An entry being written, or
// overwritten while it was read, or that fails a check, is left out.
func (g *Ring) List() []Event {
	next := atomic.LoadUint64(&g.hdr.next)
	out := make([]Event, 0, Size)
	for k := uint64(0); k < Size && k < next; k++ {
		if e, err := g.read(next - 1 - k); err == nil {
			out = append(out, e)
		}
	}
	return out
}

// read decodes event n, checking every field.
func (g *Ring) read(n uint64) (Event, error) {
	p := g.at(n)
	want := 2*n + 2
	if atomic.LoadUint64(&p.seq) != want { // never written, being written, or overwritten
		return Event{}, errBad
	}
	t := atomic.LoadInt64(&p.time)
	level := atomic.LoadInt64(&p.level)
	pid := atomic.LoadInt64(&p.pid)
	gen := atomic.LoadInt64(&p.gen)
	lens := atomic.LoadUint64(&p.lens)
	var buf [dataBytes]byte
	for i := range p.data {
		*(*uint64)(unsafe.Pointer(&buf[i*8])) = atomic.LoadUint64(&p.data[i])
	}
	if atomic.LoadUint64(&p.seq) != want {
		return Event{}, errBad // overwritten while read
	}
	ml, al := lens>>32, lens&0xffffffff
	now := time.Now().Add(time.Hour).UnixNano()
	switch {
	case ml == 0 || ml > MaxMsg || al > MaxAttrs || ml+al > dataBytes:
		return Event{}, errBad
	case t < minTime || t > now:
		return Event{}, errBad
	case level < minLevel || level > maxLevel:
		return Event{}, errBad
	case pid <= 0 || pid > maxPID || gen < 0 || gen > maxGen:
		return Event{}, errBad
	}
	msg, attrs := buf[:ml], buf[ml:ml+al]
	if !utf8.Valid(msg) || !utf8.Valid(attrs) {
		return Event{}, errBad
	}
	return Event{Time: time.Unix(0, t), Level: int(level), PID: int(pid), Generation: int(gen), Msg: string(msg), Attrs: string(attrs)}, nil
}
