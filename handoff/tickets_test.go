package handoff

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/internal/tlstest"
)

// nextGeneration opens k's memfd the way the next process gets it: a
// duplicate descriptor of the same file.
func nextGeneration(t *testing.T, k *TicketKeys, opts TicketOptions) *TicketKeys {
	t.Helper()
	fd, err := unix.Dup(int(k.File().Fd()))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := NewTicketKeys(os.NewFile(uintptr(fd), "tickets"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k2.Close() })
	return k2
}

// handshake connects a client to a server using srv over a pipe, reads
// one byte (so a TLS 1.3 ticket arrives) and says whether it resumed.
func handshake(t *testing.T, srv *tls.Config, cli *tls.Config) bool {
	t.Helper()
	a, b := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s := tls.Server(a, srv)
		if err := s.Handshake(); err == nil {
			_, _ = s.Write([]byte("x"))
		}
		_, _ = io.Copy(io.Discard, s)
		s.Close()
	}()
	c := tls.Client(b, cli)
	defer wg.Wait()
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c.ConnectionState().DidResume
}

// TestTicketKeysShared: a session from one generation resumes at the next,
// for TLS 1.2 and 1.3, and not at a process with keys of its own.
func TestTicketKeysShared(t *testing.T) {
	ca := tlstest.NewCA(t)
	cert := ca.Issue(t, time.Time{}, time.Time{}, "site.test").Certificate(t)
	k1, err := NewTicketKeys(nil, TicketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer k1.Close()
	k2 := nextGeneration(t, k1, TicketOptions{})
	stranger, err := NewTicketKeys(nil, TicketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	server := func(k *TicketKeys) *tls.Config {
		c := &tls.Config{Certificates: []tls.Certificate{cert}}
		k.Apply(c)
		return c
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cli := &tls.Config{RootCAs: ca.Pool(), ServerName: "site.test", MaxVersion: v, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			if handshake(t, server(k1), cli) {
				t.Fatal("first handshake resumed")
			}
			if !handshake(t, server(k2), cli) {
				t.Error("next generation: not resumed")
			}
			if handshake(t, server(stranger), cli) {
				t.Error("a process with other keys resumed")
			}
		})
	}
}

// TestTicketKeysRotate: a key is added every Rotation, at most Keep are
// kept (the oldest dropped), a session under the previous key resumes, and
// the other generation picks the keys up without adding its own.
func TestTicketKeysRotate(t *testing.T) {
	ca := tlstest.NewCA(t)
	cert := ca.Issue(t, time.Time{}, time.Time{}, "site.test").Certificate(t)
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
	opts := TicketOptions{Rotation: time.Hour, Keep: 3, Now: clock}
	k1, err := NewTicketKeys(nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer k1.Close()
	first := k1.keys[0].key
	k2 := nextGeneration(t, k1, opts)
	srv := &tls.Config{Certificates: []tls.Certificate{cert}}
	k2.Apply(srv)
	cli := &tls.Config{RootCAs: ca.Pool(), ServerName: "site.test", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	handshake(t, srv, cli) // a session under the first key

	if next, err := k1.rotate(false); err != nil || next != time.Hour {
		t.Fatalf("not due: next in %v (%v), want 1h", next, err)
	}
	for i, want := range []int{2, 3, 3} {
		advance(time.Hour)
		if _, err := k1.rotate(false); err != nil {
			t.Fatal(err)
		}
		if g := k1.Len(); g != want {
			t.Errorf("after rotation %d: %d keys, want %d", i+1, g, want)
		}
		if i == 0 {
			// The other generation catches up without adding a key.
			if _, err := k2.rotate(false); err != nil {
				t.Fatal(err)
			}
			if g := k2.Len(); g != 2 {
				t.Errorf("other generation: %d keys, want 2", g)
			}
			if !handshake(t, srv, &tls.Config{RootCAs: ca.Pool(), ServerName: "site.test", ClientSessionCache: cli.ClientSessionCache}) {
				t.Error("a session under the previous key did not resume")
			}
		}
	}
	if _, err := k2.rotate(false); err != nil {
		t.Fatal(err)
	}
	k2.mu.Lock()
	keys := k2.keyBytesLocked()
	k2.mu.Unlock()
	if len(keys) != 3 || slices.Contains(keys, first) {
		t.Errorf("other generation after 3 rotations: %d keys, first key kept: %v; want 3, false", len(keys), slices.Contains(keys, first))
	}
}
