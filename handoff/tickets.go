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
	"sync"
	"time"

	"golang.org/x/sys/unix"
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
)

// NewTicketKeys opens the keys a previous generation passed on in f, or,
// with f nil, makes a memfd with one fresh key. It takes ownership of f.
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
		unlock, err := k.lock(unix.F_RDLCK)
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
	fd, err := unix.MemfdCreate("baton-tickets", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("handoff: ticket keys: memfd: %w", err)
	}
	k.f = os.NewFile(uintptr(fd), "baton-tickets")
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

// load reads the keys from the file; the caller holds the lock.
func (k *TicketKeys) load() error {
	fi, err := k.f.Stat()
	if err != nil {
		return fmt.Errorf("handoff: ticket keys: %w", err)
	}
	b := make([]byte, fi.Size())
	if _, err := k.f.ReadAt(b, 0); err != nil {
		return fmt.Errorf("handoff: ticket keys: %w", err)
	}
	bad := errors.New("handoff: ticket keys: the file passed on is not a key file")
	if len(b) < ticketHeader || binary.LittleEndian.Uint64(b) != ticketMagic || binary.LittleEndian.Uint32(b[8:]) != ticketVersion {
		return bad
	}
	n := int(binary.LittleEndian.Uint32(b[12:]))
	if n < 1 || n > ticketMax || len(b) != ticketHeader+n*ticketEntry {
		return bad
	}
	keys := make([]ticketKey, n)
	for i := range keys {
		e := b[ticketHeader+i*ticketEntry:]
		keys[i].created = time.Unix(0, int64(binary.LittleEndian.Uint64(e)))
		copy(keys[i].key[:], e[8:])
	}
	clear(b)
	k.mu.Lock()
	k.keys = keys
	k.mu.Unlock()
	return nil
}

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
