// Package shmem creates and maps the fixed-size shared-memory regions
// (memfds) that baton passes from one generation to the next: the backend
// state table and the metrics table. The invariant it owns: a Region is
// always mapped MAP_SHARED over exactly its file's size, so every process
// that maps the same memfd sees the same bytes.
package shmem

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Region is a memfd mapped read-write and shared. Mem is valid until
// Close.
type Region struct {
	File *os.File
	Mem  []byte
}

// Create makes a new zeroed region of size bytes in a memfd called name.
func Create(name string, size int) (*Region, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate: %w", err)
	}
	return mapFile(f, size)
}

// Open maps a region passed by a previous generation, which must be size
// bytes. It takes ownership of f, closing it on error.
func Open(f *os.File, size int) (*Region, error) {
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Size() != int64(size) {
		f.Close()
		return nil, fmt.Errorf("size %d, want %d", fi.Size(), size)
	}
	return mapFile(f, size)
}

func mapFile(f *os.File, size int) (*Region, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mmap: %w", err)
	}
	return &Region{File: f, Mem: mem}, nil
}

// Close unmaps the region and closes its file.
func (r *Region) Close() error {
	return errors.Join(unix.Munmap(r.Mem), r.File.Close())
}
