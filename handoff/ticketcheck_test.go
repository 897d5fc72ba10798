package handoff

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/internal/shmem"
	"github.com/batonproxy/baton/internal/tlstest"
)

// keyFile is the bytes of a ticket key file of keys, newest first.
func keyFile(keys []ticketKey) []byte {
	b := make([]byte, ticketHeader+len(keys)*ticketEntry)
	binary.LittleEndian.PutUint64(b, ticketMagic)
	binary.LittleEndian.PutUint32(b[8:], ticketVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(keys)))
	for i, k := range keys {
		e := b[ticketHeader+i*ticketEntry:]
		binary.LittleEndian.PutUint64(e, uint64(k.created.UnixNano()))
		copy(e[8:], k.key[:])
	}
	return b
}

// ticketMemfd is a memfd named as the key file, holding b.
func ticketMemfd(t testing.TB, b []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(ticketsName, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), ticketsName)
	if _, err := f.WriteAt(b, 0); err != nil && len(b) > 0 {
		t.Fatal(err)
	}
	return f
}

func testKeys(now time.Time, n int) []ticketKey {
	keys := make([]ticketKey, n)
	for i := range keys {
		keys[i].created = now.Add(-time.Duration(i) * time.Hour)
		for j := range keys[i].key {
			keys[i].key[j] = byte(i*32 + j + 1)
		}
	}
	return keys
}

// TestTicketKeysCorrupt: a key file a previous generation passed on with
// corrupt contents no longer fails the start (Issue 21: it failed every
// upgrade with "not a key file"). A bad key is dropped and the others
// kept; a bad header, count or size gives one fresh key. Each repair is
// reported, and the file is rewritten: the generation after loads it
// without any.
func TestTicketKeysCorrupt(t *testing.T) {
	now := time.Now()
	good := testKeys(now, 3)
	tests := []struct {
		name    string
		file    func() []byte
		entry   string // a repair of this entry is reported
		keep    []int  // indexes of good kept, in order; nil: one fresh key
		problem string
	}{
		{"magic", func() []byte { b := keyFile(good); b[0] ^= 0xff; return b }, "file", nil, "magic"},
		{"version", func() []byte { b := keyFile(good); b[8] = 9; return b }, "file", nil, "version 9"},
		{"count zero", func() []byte { b := keyFile(good); b[12] = 0; return b }, "file", nil, "0 keys"},
		{"count all ones", func() []byte { b := keyFile(good); binary.LittleEndian.PutUint32(b[12:], ^uint32(0)); return b }, "file", nil, "4294967295 keys"},
		{"count more than the file holds", func() []byte { b := keyFile(good); b[12] = 4; return b }, "file", nil, "bytes for 4 keys"},
		{"truncated", func() []byte { return keyFile(good)[:ticketHeader+ticketEntry+7] }, "file", nil, "bytes for 3 keys"},
		{"grown", func() []byte { return append(keyFile(good), make([]byte, 100)...) }, "file", nil, "bytes for 3 keys"},
		{"empty", func() []byte { return nil }, "file", nil, "shorter than its header"},
		{"key created in the future", func() []byte {
			b := keyFile(good)
			binary.LittleEndian.PutUint64(b[ticketHeader+ticketEntry:], uint64(now.Add(48*time.Hour).UnixNano()))
			return b
		}, "key 1", []int{0, 2}, "no time baton wrote"},
		{"key created before baton", func() []byte {
			b := keyFile(good)
			binary.LittleEndian.PutUint64(b[ticketHeader:], 1)
			return b
		}, "key 0", []int{1, 2}, "no time baton wrote"},
		{"key all zeros", func() []byte {
			k := slices.Clone(good)
			k[2].key = [32]byte{}
			return keyFile(k)
		}, "key 2", []int{0, 1}, "all zeros"},
		{"key twice", func() []byte {
			k := slices.Clone(good)
			k[1].key = k[0].key
			return keyFile(k)
		}, "key 1", []int{0, 2}, "same as an earlier key"},
		{"out of order", func() []byte {
			return keyFile([]ticketKey{good[2], good[0], good[1]})
		}, "file", []int{0, 1, 2}, "out of order"},
		{"every key bad", func() []byte {
			k := slices.Clone(good)
			for i := range k {
				k[i].key = [32]byte{}
			}
			return keyFile(k)
		}, "key 0", nil, "all zeros"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []shmem.Repair
			opts := TicketOptions{Now: func() time.Time { return now }, OnRepair: func(r shmem.Repair) { got = append(got, r) }}
			k, err := NewTicketKeys(ticketMemfd(t, tt.file()), opts)
			if err != nil {
				t.Fatalf("NewTicketKeys: %v", err)
			}
			t.Cleanup(func() { k.Close() })
			found := false
			for _, r := range got {
				if r.Table != ticketsName || r.Action == "" {
					t.Errorf("repair %+v: want table %s and an action", r, ticketsName)
				}
				if r.Entry == tt.entry && strings.Contains(r.Problem, tt.problem) {
					found = true
				}
			}
			if !found {
				t.Errorf("repairs %v: want one of %s saying %q", got, tt.entry, tt.problem)
			}
			k.mu.Lock()
			keys := slices.Clone(k.keys)
			k.mu.Unlock()
			if tt.keep == nil {
				if len(keys) != 1 || slices.ContainsFunc(good, func(g ticketKey) bool { return g.key == keys[0].key }) || !keys[0].created.Equal(now) {
					t.Errorf("keys: %d, want one fresh key created now", len(keys))
				}
			} else {
				var want [][32]byte
				for _, i := range tt.keep {
					want = append(want, good[i].key)
				}
				if g := k.keyBytesLocked(); !slices.Equal(g, want) {
					t.Errorf("keys kept: %d, want good keys %v in that order", len(g), tt.keep)
				}
			}
			// The file was rewritten: the next generation finds it in order.
			var again []shmem.Repair
			next := nextGeneration(t, k, TicketOptions{Now: opts.Now, OnRepair: func(r shmem.Repair) { again = append(again, r) }})
			if len(again) > 0 || next.Len() != len(keys) {
				t.Errorf("next generation: repairs %v, %d keys; want none, %d", again, next.Len(), len(keys))
			}
		})
	}
}

// TestTicketKeysDroppedKeyHandshake: a session under a key that was
// dropped as corrupt makes a full handshake, one under a kept key resumes:
// nothing else changes for clients.
func TestTicketKeysDroppedKeyHandshake(t *testing.T) {
	ca := tlstest.NewCA(t)
	cert := ca.Issue(t, time.Time{}, time.Time{}, "site.test").Certificate(t)
	now := time.Now()
	keys := testKeys(now, 2)
	server := func(k [][32]byte) *tls.Config {
		c := &tls.Config{Certificates: []tls.Certificate{cert}}
		c.SetSessionTicketKeys(k)
		return c
	}
	client := func() *tls.Config {
		return &tls.Config{RootCAs: ca.Pool(), ServerName: "site.test", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	}
	underFirst, underSecond := client(), client()
	handshake(t, server([][32]byte{keys[0].key}), underFirst)
	handshake(t, server([][32]byte{keys[1].key}), underSecond)

	// The first key's creation time is corrupt: it is dropped.
	b := keyFile(keys)
	binary.LittleEndian.PutUint64(b[ticketHeader:], ^uint64(0))
	k, err := NewTicketKeys(ticketMemfd(t, b), TicketOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	srv := &tls.Config{Certificates: []tls.Certificate{cert}}
	k.Apply(srv)
	if handshake(t, srv, underFirst) {
		t.Error("a session under the dropped key resumed")
	}
	if !handshake(t, srv, underSecond) {
		t.Error("a session under the kept key did not resume")
	}
}

// TestTicketKeysRefusesForeign: a descriptor passed as the key file that
// is not the key memfd is refused, saying what it is, and left unread.
func TestTicketKeysRefusesForeign(t *testing.T) {
	regular, err := os.Create(t.TempDir() + "/keys")
	if err != nil {
		t.Fatal(err)
	}
	regular.Write(keyFile(testKeys(time.Now(), 1)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := ln.(*net.TCPListener).File()
	ln.Close()
	fd, _ := unix.MemfdCreate("baton-backends", unix.MFD_CLOEXEC)
	other := os.NewFile(uintptr(fd), "other")
	for _, tt := range []struct {
		name string
		f    *os.File
		want string
	}{
		{"a regular file", regular, "is the file " + regular.Name() + ", not the memfd baton-tickets"},
		{"a socket", sock, "is a socket"},
		{"another memfd", other, "is the memfd baton-backends, not the memfd baton-tickets"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewTicketKeys(tt.f, TicketOptions{})
			if err == nil {
				k.Close()
				t.Fatalf("got keys, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// FuzzTicketFile feeds random key files to the loader. Nothing panics; the
// keys it keeps are sorted newest first, distinct, not all zeros, created
// at times baton could have written, at most ticketMax; a file it repaired
// loads in order the next time. Seeds: a real file from NewTicketKeys and
// rotations, and the same with a corrupt count.
func FuzzTicketFile(f *testing.F) {
	now := time.Now()
	k, err := NewTicketKeys(nil, TicketOptions{Rotation: time.Second, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		now = now.Add(time.Second)
		k.rotate(false)
	}
	real := make([]byte, ticketHeader+3*ticketEntry+ticketEntry)
	n, _ := k.f.ReadAt(real, 0)
	k.Close()
	f.Add(real[:n])
	bad := slices.Clone(real[:n])
	bad[12] = 200
	f.Add(bad)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 2*ticketFileMax {
			data = data[:2*ticketFileMax]
		}
		keys, repairs := parseTickets(data, int64(len(data)), now)
		if len(keys) > ticketMax {
			t.Errorf("%d keys", len(keys))
		}
		if !slices.IsSortedFunc(keys, newestFirst) {
			t.Error("keys not newest first")
		}
		for i, tk := range keys {
			if tk.key == [32]byte{} || tk.created.Before(ticketOldest) || tk.created.After(now.Add(ticketAhead)) {
				t.Errorf("key %d: created %s, zero %v", i, tk.created, tk.key == [32]byte{})
			}
			for _, o := range keys[:i] {
				if o.key == tk.key {
					t.Errorf("key %d twice", i)
				}
			}
		}
		for _, r := range repairs {
			if r.Table != ticketsName || r.Entry == "" || r.Problem == "" || r.Action == "" {
				t.Errorf("repair %+v: not fully described", r)
			}
		}
		k, err := NewTicketKeys(ticketMemfd(t, data), TicketOptions{Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		if k.Len() < 1 {
			t.Error("no key")
		}
		var again []shmem.Repair
		next := nextGeneration(t, k, TicketOptions{Now: func() time.Time { return now }, OnRepair: func(r shmem.Repair) { again = append(again, r) }})
		if len(again) > 0 || next.Len() != k.Len() {
			t.Errorf("reloaded: repairs %v, %d keys of %d", again, next.Len(), k.Len())
		}
	})
}
