package shmem

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Region is a memfd mapped read-write and shared. Mem is valid until
// Close.
type Region struct {
	File *os.File
	Mem  []byte
	// Sealed reports whether the memfd can neither shrink nor grow. Those
	// Create makes are; one made by an older baton may not be.
	Sealed bool
}

// sizeSeals keep the file at the size it was mapped with, for good: with
// F_SEAL_SEAL no one can lift them.
const sizeSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// Create makes a new zeroed region of size bytes in a memfd called name,
// sealed at that size.
func Create(name string, size int) (*Region, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate: %w", err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, sizeSeals); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %s: seal: %w", name, err)
	}
	return mapFile(f, size)
}

// Open maps a region passed by a previous generation: f must be the memfd
// called name (see Check), of exactly size bytes. It takes ownership of f,
// closing it on error.
func Open(f *os.File, name string, size int) (*Region, error) {
	got, err := Check(f, name)
	if err != nil {
		f.Close()
		return nil, err
	}
	if got != int64(size) {
		f.Close()
		return nil, fmt.Errorf("memfd %s has size %d, want %d (truncated, grown, or another layout)", name, got, size)
	}
	return mapFile(f, size)
}

// Check verifies that f is a memfd called name and returns its size. A
// memfd is a regular file linked nowhere that /proc shows as
// "/memfd:<name> (deleted)" and whose seals can be read (only files in
// memory have seals); a regular file, a socket, a pipe, a file in /dev/shm
// or a memfd under another name is refused, with what it is.
func Check(f *os.File, name string) (int64, error) {
	fd := int(f.Fd())
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return 0, fmt.Errorf("fd %d: cannot tell what it is: %w", fd, err)
	}
	want := "/memfd:" + name + " (deleted)"
	if link != want {
		return 0, fmt.Errorf("fd %d is %s, not the memfd %s", fd, describe(link), name)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fd %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 0 {
		return 0, fmt.Errorf("fd %d is named like the memfd %s but is not one (mode %#o, %d links)", fd, name, st.Mode, st.Nlink)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0); err != nil {
		return 0, fmt.Errorf("fd %d is named like the memfd %s but is not in memory (no seals: %w)", fd, name, err)
	}
	return st.Size, nil
}

// describe names what a /proc/self/fd link points at, for an error.
func describe(link string) string {
	switch {
	case strings.HasPrefix(link, "/memfd:"):
		return "the memfd " + strings.TrimSuffix(strings.TrimPrefix(link, "/memfd:"), " (deleted)")
	case strings.HasPrefix(link, "socket:"):
		return "a socket (" + link + ")"
	case strings.HasPrefix(link, "pipe:"):
		return "a pipe (" + link + ")"
	case strings.HasPrefix(link, "/"):
		return "the file " + link
	default:
		return link
	}
}

func mapFile(f *os.File, size int) (*Region, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mmap: %w", err)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	sealed := err == nil && seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) == unix.F_SEAL_SHRINK|unix.F_SEAL_GROW
	return &Region{File: f, Mem: mem, Sealed: sealed}, nil
}

// Close unmaps the region and closes its file.
func (r *Region) Close() error {
	return errors.Join(unix.Munmap(r.Mem), r.File.Close())
}

// Repair is one thing a loader found corrupt in a shared table passed on
// by a previous generation, and what it did instead of using it. The
// library that found it returns it; cmd logs it.
type Repair struct {
	Table   string // the memfd's name, e.g. baton-backends
	Entry   string // which entry: "slot 3 (web1)", "header", "key 2"
	Field   string // the field, e.g. "name length"
	Problem string // what was wrong, with the value read
	Action  string // what was done about it
}

func (r Repair) String() string {
	s := r.Table + ": " + r.Entry
	if r.Field != "" {
		s += ": " + r.Field
	}
	return s + ": " + r.Problem + "; " + r.Action
}

// LoadBytes copies words into b, which holds at least 8*len(words) bytes,
// each word read atomically (another process may be writing them).
func LoadBytes(b []byte, words []uint64) {
	for i := range words {
		binary.NativeEndian.PutUint64(b[i*8:], atomic.LoadUint64(&words[i]))
	}
}

// StoreBytes stores b into words, zero-padded, each word written
// atomically. It stores at most 8*len(words) bytes and returns how many.
func StoreBytes(words []uint64, b []byte) int {
	n := min(len(b), 8*len(words))
	for i := range words {
		var w [8]byte
		if i*8 < n {
			copy(w[:], b[i*8:n])
		}
		atomic.StoreUint64(&words[i], binary.NativeEndian.Uint64(w[:]))
	}
	return n
}

// Text is the string of the first n bytes stored in words. n is a length
// word read from shared memory, so it is not trusted: it is clamped to
// what words hold, never used as it is to slice.
func Text(words []uint64, n uint64) string {
	b := make([]byte, 8*len(words))
	LoadBytes(b, words)
	return string(b[:min(n, uint64(len(b)))])
}

// Name reads a name stored zero-padded in words with its length in n, and
// checks it with valid. If n is wrong but the bytes hold a valid name
// followed by zeros, that name is returned with fixed set: the length can
// be rebuilt from the bytes. ok is false if no valid name can be read.
func Name(words []uint64, n uint64, valid func(string) bool) (name string, fixed, ok bool) {
	b := make([]byte, 8*len(words))
	LoadBytes(b, words)
	if n >= 1 && n <= uint64(len(b)) && zero(b[n:]) && valid(string(b[:n])) {
		return string(b[:n]), false, true
	}
	z := bytes.IndexByte(b, 0)
	if z < 0 {
		z = len(b)
	}
	if z >= 1 && zero(b[z:]) && valid(string(b[:z])) {
		return string(b[:z]), true, true
	}
	return "", false, false
}

// Printable shows the bytes stored in words for an error: at most the
// first n, quoted.
func Printable(words []uint64, n uint64) string {
	b := make([]byte, 8*len(words))
	LoadBytes(b, words)
	b = b[:min(n, uint64(len(b)))]
	return fmt.Sprintf("%q", bytes.TrimRight(b, "\x00"))
}

// Zero reports whether every word is zero.
func Zero(words []uint64) bool {
	for i := range words {
		if atomic.LoadUint64(&words[i]) != 0 {
			return false
		}
	}
	return true
}

func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
