package events

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
	"unsafe"

	"golang.org/x/sys/unix"
)

func newRing(t testing.TB) *Ring {
	t.Helper()
	g, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// reopen maps g's memfd again, as the next generation does.
func reopen(t *testing.T, g *Ring) (*Ring, error) {
	t.Helper()
	fd, err := unix.Dup(int(g.File().Fd()))
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Open(os.NewFile(uintptr(fd), "dup"))
	if err == nil {
		t.Cleanup(func() { g2.Close() })
	}
	return g2, err
}

func ev(i int) Event {
	return Event{Time: time.Unix(1_700_000_000, int64(i)), Level: 0, PID: 100 + i, Generation: 1 + i%3,
		Msg: fmt.Sprintf("m%d", i), Attrs: fmt.Sprintf("k=%d", i)}
}

// TestRingAcrossGenerations: the next generation sees the events of the
// previous one, newest first, and adds to the same ring; the ring keeps
// the last Size.
func TestRingAcrossGenerations(t *testing.T) {
	g := newRing(t)
	for i := 0; i < 10; i++ {
		g.Add(ev(i))
	}
	g2, err := reopen(t, g)
	if err != nil {
		t.Fatal(err)
	}
	got := g2.List()
	if len(got) != 10 || got[0] != ev(9) || got[9] != ev(0) {
		t.Fatalf("after reopening: %d events, first %+v, last %+v", len(got), got[0], got[len(got)-1])
	}
	for i := 10; i < Size+20; i++ {
		g2.Add(ev(i))
	}
	got = g.List()
	if len(got) != Size {
		t.Fatalf("got %d events, want %d", len(got), Size)
	}
	for k, e := range got {
		if want := ev(Size + 19 - k); e != want {
			t.Fatalf("event %d: got %+v, want %+v", k, e, want)
		}
	}
}

// TestCut: long texts are cut at a rune boundary to fit.
func TestCut(t *testing.T) {
	g := newRing(t)
	long := strings.Repeat("é", MaxMsg) // 2 bytes a rune
	g.Add(Event{Time: time.Now(), PID: 1, Msg: long + "x", Attrs: strings.Repeat("ü", MaxAttrs)})
	got := g.List()
	if len(got) != 1 {
		t.Fatalf("got %d events, want 1", len(got))
	}
	if e := got[0]; len(e.Msg) != MaxMsg || len(e.Attrs) != MaxAttrs || !utf8.ValidString(e.Msg) || !utf8.ValidString(e.Attrs) {
		t.Errorf("message %d bytes, attributes %d bytes (want %d, %d, both UTF-8)", len(e.Msg), len(e.Attrs), MaxMsg, MaxAttrs)
	}
}

// TestOpenBad: a memfd of another size or layout is refused.
func TestOpenBad(t *testing.T) {
	g := newRing(t)
	for _, tc := range []struct {
		name  string
		spoil func()
		want  string
	}{
		{"magic", func() { g.hdr.magic = 1 }, "bad magic"},
		{"version", func() { g.hdr.magic, g.hdr.version = ringMagic, 2 }, "version 2"},
	} {
		tc.spoil()
		if _, err := reopen(t, g); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestSealed: the ring's memfd cannot be truncated or grown (a shrunk
// mapping would fault every process that maps it).
func TestSealed(t *testing.T) {
	g := newRing(t)
	for _, size := range []int64{ringBytes + 8, ringBytes - 8} {
		if err := g.File().Truncate(size); err == nil {
			t.Errorf("truncating the ring to %d bytes worked; want it sealed", size)
		}
	}
}

// TestConcurrent: writers in several goroutines and a reader; every event
// read is whole (its message and attributes belong together).
func TestConcurrent(t *testing.T) {
	g := newRing(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				g.Add(ev(w*10000 + i))
			}
		}()
	}
	readDone := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				readDone <- n
				return
			default:
			}
			for _, e := range g.List() {
				var i int
				if _, err := fmt.Sscanf(e.Msg, "m%d", &i); err != nil || e != ev(i) {
					t.Errorf("torn event %+v", e)
					return
				}
				n++
			}
		}
	}()
	wg.Wait()
	close(stop)
	t.Logf("%d events read while written", <-readDone)
	if got := len(g.List()); got != Size {
		t.Errorf("after the writers: %d events, want %d", got, Size)
	}
}

// plain is a ring over ordinary memory holding raw at its start.
func plain(raw []byte) *Ring {
	words := make([]uint64, ringBytes/8)
	mem := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), ringBytes)
	copy(mem, raw)
	return over(mem)
}

// FuzzList: whatever the bytes of the shared memory, List does not panic
// and returns only events that pass every check.
func FuzzList(f *testing.F) {
	g := newRing(f)
	for i := 0; i < 3; i++ {
		g.Add(ev(i))
	}
	f.Add(append([]byte(nil), g.mem[:headerSize+4*entrySize]...))
	f.Add([]byte{})
	f.Add([]byte(strings.Repeat("\xff", headerSize+entrySize)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r := plain(raw)
		evs := r.List()
		if len(evs) > Size {
			t.Fatalf("%d events from a ring of %d", len(evs), Size)
		}
		for _, e := range evs {
			switch {
			case e.Msg == "" || len(e.Msg) > MaxMsg || len(e.Attrs) > MaxAttrs:
				t.Fatalf("lengths %d, %d", len(e.Msg), len(e.Attrs))
			case !utf8.ValidString(e.Msg) || !utf8.ValidString(e.Attrs):
				t.Fatalf("not UTF-8: %q %q", e.Msg, e.Attrs)
			case e.Level < minLevel || e.Level > maxLevel || e.PID <= 0 || e.PID > maxPID || e.Generation < 0:
				t.Fatalf("out of range: %+v", e)
			case e.Time.UnixNano() < minTime || e.Time.After(time.Now().Add(time.Hour)):
				t.Fatalf("time %v", e.Time)
			}
		}
		// A corrupt header does not stop the ring from working (the first
		// event after a wrap of the sequence numbers may be lost).
		r.Add(ev(1))
		r.Add(ev(2))
		if evs := r.List(); len(evs) == 0 || evs[0] != ev(2) {
			t.Fatalf("after Add on a corrupt ring: %+v", evs)
		}
	})
}
