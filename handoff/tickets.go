package handoff

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/internal/shmem"
)

// Defaults applied by NewTicketKeys to zero TicketOptions fields.
const (
	DefaultTicketRotation = time.Hour
	DefaultTicketKeys     = 4 // the current key and three older ones that still decrypt
)

// TicketOptions configure TicketKeys. The zero value is usable.
type TicketOptions struct {
	// Rotation is how often a new key starts encrypting tickets. Default 1h.
	Rotation time.Duration
	// Keep is how many keys decrypt tickets (the newest encrypts), so a
	// ticket resumes for between (Keep-1)×Rotation and Keep×Rotation.
	// Default 4.
	Keep int
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
	// OnRepair, if set, is told each time the keys read from the memfd
	// were corrupt, and what was done: a bad key dropped, or the whole
	// file replaced by a fresh key (clients then make full handshakes
	// instead of resuming). nil: not told.
	OnRepair func(shmem.Repair)
}

// TicketKeys are the TLS session ticket keys of every generation. They
// live in memory only, in a memfd that each generation passes to the next
// (AddFile), so a client that reconnects to a new process after an
// upgrade resumes its session instead of doing a full handshake. The
// serving process adds a key every Rotation and drops the oldest beyond
// Keep; every process applies the file's keys to its tls.Configs. It is
// safe for concurrent use.
//
// The memfd is never linked into a file system; like any anonymous memory
// it could reach swap, not a file.
//
// What is read from the memfd is checked (Issue 21): a key with an
// impossible creation time, an all-zero key or one found twice is dropped;
// a file whose header, count or size is wrong is replaced by one fresh key.
// Either way the file is rewritten with what is left, so the next
// generation inherits it in order, and OnRepair is told. Sessions under a
// dropped key make a full handshake; nothing else is lost.
type TicketKeys struct {
	opts TicketOptions
	f    *os.File

	mu      sync.Mutex
	keys    []ticketKey // newest first
	configs []*tls.Config
}

type ticketKey struct {
	created time.Time
	key     [32]byte
}

const (
	ticketMagic   = 0x4b54_4e54_4142 // "BATNTK"
	ticketVersion = 1
	ticketHeader  = 16 // magic (8), version (4), count (4)
	ticketEntry   = 8 + 32
	ticketMax     = 64
	ticketsName   = "baton-tickets" // the memfd's name, checked by NewTicketKeys
	// ticketAhead is how far ahead of now a key's creation time may be:
	// beyond it, the time is corrupt (or the clock went back by a day).
	ticketAhead = 24 * time.Hour
)

// ticketOldest is before any baton: a key created earlier is corrupt.
var ticketOldest = time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC)

// NewTicketKeys opens the keys a previous generation passed on in f, or,
// with f nil, makes a memfd with one fresh key. It takes ownership of f.
// An f that is not the memfd a NewTicketKeys made (see shmem.Check) is
// refused with an error saying what it is; the caller then starts with
// fresh keys (f nil). Corrupt contents are repaired (see TicketKeys).
func NewTicketKeys(f *os.File, opts TicketOptions) (*TicketKeys, error) {
	if opts.Rotation <= 0 {
		opts.Rotation = DefaultTicketRotation
	}
	if opts.Keep <= 0 {
		opts.Keep = DefaultTicketKeys
	}
	opts.Keep = min(opts.Keep, ticketMax)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	k := &TicketKeys{opts: opts, f: f}
	if f != nil {
		if _, err := shmem.Check(f, ticketsName); err != nil {
			f.Close()
			return nil, fmt.Errorf("handoff: ticket keys: %w", err)
		}
		// The write lock: a corrupt file is rewritten.
		unlock, err := k.lock(unix.F_WRLCK)
		if err == nil {
			err = k.load()
			unlock()
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		return k, nil
	}
	fd, err := unix.MemfdCreate(ticketsName, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("handoff: ticket keys: memfd: %w", err)
	}
	k.f = os.NewFile(uintptr(fd), ticketsName)
	if _, err := k.rotate(true); err != nil {
		k.f.Close()
		return nil, err
	}
	return k, nil
}

// File is the memfd holding the keys, to pass to the next generation.
func (k *TicketKeys) File() *os.File { return k.f }

// Close closes the memfd (other generations keep their own copies).
func (k *TicketKeys) Close() error { return k.f.Close() }

// Apply sets the keys on c now and after every rotation. Call it before c
// serves.
func (k *TicketKeys) Apply(c *tls.Config) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.configs = append(k.configs, c)
	c.SetSessionTicketKeys(k.keyBytesLocked())
}

// Len is how many keys decrypt tickets now.
func (k *TicketKeys) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.keys)
}

// Run rotates the keys on schedule until ctx ends. Only the serving
// generation should run it; a generation that started while the previous
// one rotated catches up at its first tick.
func (k *TicketKeys) Run(ctx context.Context) error {
	for {
		next, err := k.rotate(false)
		if err != nil {
			return err
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// rotate re-reads the file (another generation may have written it), adds
// a key if the newest is due (or force), applies the keys to every config,
// and says how long until the next key is due.
func (k *TicketKeys) rotate(force bool) (time.Duration, error) {
	unlock, err := k.lock(unix.F_WRLCK)
	if err != nil {
		return 0, err
	}
	defer unlock()
	if !force {
		if err := k.load(); err != nil {
			return 0, err
		}
	}
	now := k.opts.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if force || len(k.keys) == 0 || now.Sub(k.keys[0].created) >= k.opts.Rotation {
		var nk ticketKey
		nk.created = now
		if _, err := io.ReadFull(rand.Reader, nk.key[:]); err != nil {
			return 0, fmt.Errorf("handoff: ticket keys: %w", err)
		}
		k.keys = append([]ticketKey{nk}, k.keys...)
		if len(k.keys) > k.opts.Keep {
			k.keys = k.keys[:k.opts.Keep]
		}
		if err := k.storeLocked(); err != nil {
			return 0, err
		}
	}
	keys := k.keyBytesLocked()
	for _, c := range k.configs {
		c.SetSessionTicketKeys(keys)
	}
	return k.keys[0].created.Add(k.opts.Rotation).Sub(now), nil
}

func (k *TicketKeys) keyBytesLocked() [][32]byte {
	out := make([][32]byte, len(k.keys))
	for i, t := range k.keys {
		out[i] = t.key
	}
	return out
}

// lock takes a POSIX record lock on the whole memfd. why: not flock, which
// belongs to the open file description, and every generation shares one.
func (k *TicketKeys) lock(typ int16) (func(), error) {
	fd := k.f.Fd()
	lk := unix.Flock_t{Type: typ, Whence: io.SeekStart}
	if err := unix.FcntlFlock(fd, unix.F_SETLKW, &lk); err != nil {
		return nil, fmt.Errorf("handoff: ticket keys: lock: %w", err)
	}
	return func() {
		lk.Type = unix.F_UNLCK
		_ = unix.FcntlFlock(fd, unix.F_SETLK, &lk)
	}, nil
}

// ticketFileMax bounds what load reads: a valid file is far smaller.
const ticketFileMax = ticketHeader + ticketMax*ticketEntry

// load reads the keys from the file, and rewrites it if parseTickets found
// anything corrupt (with a fresh key if no key was left); the caller holds
// the write lock.
func (k *TicketKeys) load() error {
	fi, err := k.f.Stat()
	if err != nil {
		return fmt.Errorf("handoff: ticket keys: %w", err)
	}
	// A file grown past any valid size is read only as far as that: the
	// size check below refuses it anyway.
	b := make([]byte, min(fi.Size(), ticketFileMax+1))
	if _, err := k.f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("handoff: ticket keys: %w", err)
	}
	now := k.opts.Now()
	keys, repairs := parseTickets(b, fi.Size(), now)
	clear(b)
	if len(keys) == 0 {
		var nk ticketKey
		nk.created = now
		if _, err := io.ReadFull(rand.Reader, nk.key[:]); err != nil {
			return fmt.Errorf("handoff: ticket keys: %w", err)
		}
		keys = []ticketKey{nk}
	}
	k.mu.Lock()
	k.keys = keys
	if len(repairs) > 0 {
		err = k.storeLocked()
	}
	k.mu.Unlock()
	if err != nil {
		return err
	}
	if k.opts.OnRepair != nil {
		for _, r := range repairs {
			k.opts.OnRepair(r)
		}
	}
	return nil
}

// parseTickets reads the key file b (of size bytes; b may hold only the
// start of a file too large) written at or before now. It returns the
// keys that can be used, newest first, and what it found corrupt. A wrong
// header, count or size makes the whole file unusable (no keys); a key
// created at an impossible time, an all-zero key and a key found twice are
// dropped; keys out of order are sorted.
func parseTickets(b []byte, size int64, now time.Time) ([]ticketKey, []shmem.Repair) {
	whole := func(problem string) ([]ticketKey, []shmem.Repair) {
		return nil, []shmem.Repair{{Table: ticketsName, Entry: "file", Problem: problem,
			Action: "replaced by a fresh key: sessions under the old keys make full handshakes"}}
	}
	if size < ticketHeader || int64(len(b)) < ticketHeader {
		return whole(fmt.Sprintf("%d bytes, shorter than its header", size))
	}
	if m := binary.LittleEndian.Uint64(b); m != ticketMagic {
		return whole(fmt.Sprintf("magic %#x, want %#x", m, uint64(ticketMagic)))
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != ticketVersion {
		return whole(fmt.Sprintf("version %d, want %d", v, ticketVersion))
	}
	n := binary.LittleEndian.Uint32(b[12:])
	if n < 1 || n > ticketMax {
		return whole(fmt.Sprintf("%d keys, want 1 to %d", n, ticketMax))
	}
	if want := int64(ticketHeader + int(n)*ticketEntry); size != want || int64(len(b)) != want {
		return whole(fmt.Sprintf("%d bytes for %d keys, want %d", size, n, want))
	}
	var keys []ticketKey
	var repairs []shmem.Repair
	drop := func(i int, problem string) {
		repairs = append(repairs, shmem.Repair{Table: ticketsName, Entry: fmt.Sprintf("key %d", i), Problem: problem,
			Action: "dropped: sessions under it make full handshakes"})
	}
	for i := 0; i < int(n); i++ {
		e := b[ticketHeader+i*ticketEntry:]
		var tk ticketKey
		ns := int64(binary.LittleEndian.Uint64(e))
		tk.created = time.Unix(0, ns)
		copy(tk.key[:], e[8:ticketEntry])
		switch {
		case tk.created.Before(ticketOldest) || tk.created.After(now.Add(ticketAhead)):
			drop(i, fmt.Sprintf("created at %d, no time baton wrote", ns))
		case tk.key == [32]byte{}:
			drop(i, "all zeros")
		case slices.ContainsFunc(keys, func(o ticketKey) bool { return o.key == tk.key }):
			drop(i, "the same as an earlier key")
		default:
			keys = append(keys, tk)
		}
	}
	if !slices.IsSortedFunc(keys, newestFirst) {
		slices.SortStableFunc(keys, newestFirst)
		repairs = append(repairs, shmem.Repair{Table: ticketsName, Entry: "file", Problem: "keys out of order", Action: "sorted, newest first"})
	}
	return keys, repairs
}

func newestFirst(a, b ticketKey) int { return b.created.Compare(a.created) }

func (k *TicketKeys) storeLocked() error {
	b := make([]byte, ticketHeader+len(k.keys)*ticketEntry)
	binary.LittleEndian.PutUint64(b, ticketMagic)
	binary.LittleEndian.PutUint32(b[8:], ticketVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(k.keys)))
	for i, t := range k.keys {
		e := b[ticketHeader+i*ticketEntry:]
		binary.LittleEndian.PutUint64(e, uint64(t.created.UnixNano()))
		copy(e[8:], t.key[:])
	}
	defer clear(b)
	if err := k.f.Truncate(int64(len(b))); err != nil {
		return fmt.Errorf("handoff: ticket keys: %w", err)
	}
	if _, err := k.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("handoff: ticket keys: %w", err)
	}
	return nil
}
