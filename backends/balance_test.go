package backends

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// fakeClock is the slow-start clock of a test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newPoolSet builds a Set over cfgs (names and limits only matter: Pick
// never dials) with a fake clock.
func newPoolSet(t *testing.T, balance Balance, cfgs ...Config) (*Set, *fakeClock) {
	t.Helper()
	table, err := NewStateTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { table.Close() })
	clock := &fakeClock{t: time.Now()}
	for i := range cfgs {
		cfgs[i].URL = fmt.Sprintf("http://127.0.0.1:%d", 1+i)
		cfgs[i] = cfgs[i].Normalize()
	}
	s, err := New(cfgs, table, Options{RunDir: t.TempDir(), Balance: balance, now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, clock
}

func setDown(s *Set, name string, down bool) {
	b, _ := s.Lookup(name)
	b.slot.update(func(w stateWord) stateWord { return w.with(bitDown, down) })
	s.wake()
}

// picks takes n upstreams without releasing them and counts them by name;
// a failed Pick counts as "-".
func picks(s *Set, n int) (map[string]int, []proxy.Upstream) {
	got := map[string]int{}
	var ups []proxy.Upstream
	for range n {
		up, err := s.Pick(nil)
		if err != nil {
			got["-"]++
			continue
		}
		got[up.Name()]++
		ups = append(ups, up)
	}
	return got, ups
}

func TestPickLimitsAndBalance(t *testing.T) {
	tests := []struct {
		name    string
		balance Balance
		cfgs    []Config
		down    []string
		n       int
		hold    bool // keep every pick in flight
		want    map[string]int
	}{
		{"no limit", BalanceRoundRobin, []Config{{Name: "a"}, {Name: "b"}}, nil, 10, true, map[string]int{"a": 5, "b": 5}},
		{"limit", BalanceRoundRobin, []Config{{Name: "a", MaxConns: 3}, {Name: "b", MaxConns: 2}}, nil, 8, true, map[string]int{"a": 3, "b": 2, "-": 3}},
		{"limit, one down", BalanceRoundRobin, []Config{{Name: "a", MaxConns: 3}, {Name: "b", MaxConns: 2}}, []string{"a"}, 4, true, map[string]int{"b": 2, "-": 2}},
		{"weights", BalanceRoundRobin, []Config{{Name: "a", Weight: 3}, {Name: "b"}}, nil, 400, false, map[string]int{"a": 300, "b": 100}},
		{"weights, least_conn", BalanceLeastConn, []Config{{Name: "a", Weight: 3}, {Name: "b"}}, nil, 40, true, map[string]int{"a": 30, "b": 10}},
		{"least_conn with limits", BalanceLeastConn, []Config{{Name: "a", MaxConns: 1}, {Name: "b", MaxConns: 4}}, nil, 6, true, map[string]int{"a": 1, "b": 4, "-": 1}},
		{"backup idle while a primary is up", BalanceRoundRobin, []Config{{Name: "a"}, {Name: "c", Backup: true}}, nil, 10, false, map[string]int{"a": 10}},
		{"backup when no primary is up", BalanceRoundRobin, []Config{{Name: "a"}, {Name: "b"}, {Name: "c", Backup: true}}, []string{"a", "b"}, 10, false, map[string]int{"c": 10}},
		{"full primaries do not spill to the backup", BalanceRoundRobin, []Config{{Name: "a", MaxConns: 2}, {Name: "c", Backup: true}}, nil, 4, true, map[string]int{"a": 2, "-": 2}},
		{"nothing up", BalanceRoundRobin, []Config{{Name: "a"}, {Name: "c", Backup: true}}, []string{"a", "c"}, 3, false, map[string]int{"-": 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newPoolSet(t, tt.balance, tt.cfgs...)
			for _, d := range tt.down {
				setDown(s, d, true)
			}
			got := map[string]int{}
			for range tt.n {
				up, err := s.Pick(nil)
				if err != nil {
					got["-"]++
					continue
				}
				got[up.Name()]++
				if !tt.hold {
					up.Done(nil)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("picks: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLeastConnPrefersTheIdlest(t *testing.T) {
	s, _ := newPoolSet(t, BalanceLeastConn, Config{Name: "a"}, Config{Name: "b"})
	a, _ := s.Lookup("a")
	// Another generation has 3 requests in flight to a.
	atomic.AddInt64(&a.slot.inflight, 3)
	got, _ := picks(s, 5)
	if want := map[string]int{"a": 1, "b": 4}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("picks: got %v, want %v", got, want)
	}
}

func TestLimitCountsOtherGenerations(t *testing.T) {
	s, _ := newPoolSet(t, BalanceRoundRobin, Config{Name: "a", MaxConns: 2})
	a, _ := s.Lookup("a")
	atomic.AddInt64(&a.slot.inflight, 2) // another generation's requests
	if _, err := s.Pick(nil); !errors.Is(err, proxy.ErrNoUpstream) {
		t.Fatalf("Pick at the limit: got %v, want ErrNoUpstream", err)
	}
	if g := atomic.LoadInt64(&a.slot.inflight); g != 2 {
		t.Errorf("in flight after a refused Pick: got %d, want 2", g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx) }()
	waitUntil(t, "the request to queue", func() bool { return s.Queued() == 1 })
	// The other generation finishes one; its release is not signalled
	// here: the watcher's poll (dispatch) finds the room.
	atomic.AddInt64(&a.slot.inflight, -1)
	s.dispatch()
	if err := <-done; err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if _, err := s.Pick(nil); err != nil {
		t.Fatalf("Pick after room was freed: %v", err)
	}
}

// waitUntil polls cond with a deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestQueueIsFIFOAndWakesOnlyWhatFits(t *testing.T) {
	s, _ := newPoolSet(t, BalanceRoundRobin, Config{Name: "a", MaxConns: 2})
	_, held := picks(s, 2)
	const n = 6
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	order := make(chan int, n)
	ups := make(chan proxy.Upstream, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := s.Wait(ctx); err != nil {
					t.Errorf("waiter %d: %v", i, err)
					return
				}
				up, err := s.Pick(nil)
				if err == nil {
					order <- i
					ups <- up
					return
				}
			}
		}()
		waitUntil(t, fmt.Sprintf("waiter %d to queue", i), func() bool { return s.Queued() == int64(i+1) })
	}
	// A newcomer does not jump the queue.
	if _, err := s.Pick(nil); !errors.Is(err, proxy.ErrNoUpstream) {
		t.Fatalf("newcomer Pick with a queue: got %v, want ErrNoUpstream", err)
	}
	if st := s.Status()[0]; st.Queued != n || st.MaxConns != 2 {
		t.Errorf("status: queued %d max_conns %d, want %d and 2", st.Queued, st.MaxConns, n)
	}
	held[0].Done(nil) // room for one: exactly one wakes
	var got []int
	got = append(got, <-order)
	if q := s.Queued(); q != n-1 {
		t.Errorf("after one release: %d queued, want %d", q, n-1)
	}
	held[1].Done(nil)
	got = append(got, <-order)
	for len(got) < n {
		(<-ups).Done(nil)
		got = append(got, <-order)
	}
	wg.Wait()
	for i, g := range got {
		if g != i {
			t.Fatalf("order served: got %v, want 0..%d", got, n-1)
		}
	}
}

func TestWaitGivesUpAndLeavesTheQueue(t *testing.T) {
	s, _ := newPoolSet(t, BalanceRoundRobin, Config{Name: "a", MaxConns: 1})
	_, held := picks(s, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait: got %v, want the deadline", err)
	}
	if q, g := s.Queued(), s.grants.Load(); q != 0 || g != 0 {
		t.Fatalf("after giving up: queued %d, grants %d, want 0 and 0", q, g)
	}
	held[0].Done(nil)
	if _, err := s.Pick(nil); err != nil {
		t.Fatalf("Pick: %v", err)
	}
}

func TestSlowStartRamp(t *testing.T) {
	tests := []struct {
		after time.Duration
		want  int64
	}{
		{0, 1}, {time.Second, 2}, {5 * time.Second, 10}, {9 * time.Second, 18}, {10 * time.Second, 20}, {time.Hour, 20},
	}
	for _, tt := range tests {
		t.Run(tt.after.String(), func(t *testing.T) {
			s, clock := newPoolSet(t, BalanceRoundRobin, Config{Name: "a", MaxConns: 20, SlowStart: 10 * time.Second})
			a, _ := s.Lookup("a")
			if g := a.limit(clock.now()); g != 20 {
				t.Fatalf("limit before any readmit: got %d, want 20", g)
			}
			setDown(s, "a", true)
			setDown(s, "a", false)
			// routableSince is wall time; line the fake clock up with it.
			clock.mu.Lock()
			clock.t = time.Unix(0, atomic.LoadInt64(&a.slot.routableSince)).Add(tt.after)
			clock.mu.Unlock()
			if g := a.limit(clock.now()); g != tt.want {
				t.Errorf("limit %s after readmit: got %d, want %d", tt.after, g, tt.want)
			}
			if got, _ := picks(s, 25); int64(got["a"]) != tt.want {
				t.Errorf("picks: got %v, want %d to a", got, tt.want)
			}
		})
	}
}

func TestSlowStartWithoutLimitRampsTheShare(t *testing.T) {
	s, clock := newPoolSet(t, BalanceRoundRobin, Config{Name: "a", SlowStart: 10 * time.Second}, Config{Name: "b"})
	a, _ := s.Lookup("a")
	setDown(s, "a", true)
	setDown(s, "a", false)
	clock.mu.Lock()
	clock.t = time.Unix(0, atomic.LoadInt64(&a.slot.routableSince)).Add(2 * time.Second)
	clock.mu.Unlock()
	got := map[string]int{}
	for range 1000 {
		up, err := s.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		got[up.Name()]++
		up.Done(nil)
	}
	// a's turns are half; 20% of them are taken: about 100 of 1000.
	if got["a"] < 80 || got["a"] > 120 {
		t.Errorf("picks 20%% into the slow start: got %v, want about 100 to a", got)
	}
}

func TestDrainingBackendRefusesEvenWithRoom(t *testing.T) {
	s, _ := newPoolSet(t, BalanceRoundRobin, Config{Name: "a", MaxConns: 5})
	a, _ := s.Lookup("a")
	a.slot.update(func(w stateWord) stateWord { return w.withPhase(PhaseDraining) })
	if _, err := s.Pick(nil); !errors.Is(err, proxy.ErrNoUpstream) {
		t.Fatalf("Pick while draining: got %v, want ErrNoUpstream", err)
	}
	if g := atomic.LoadInt64(&a.slot.inflight); g != 0 {
		t.Errorf("in flight: got %d, want 0", g)
	}
}

func TestNewRejectsBackupOnly(t *testing.T) {
	table, err := NewStateTable()
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	c := Config{Name: "c", URL: "http://127.0.0.1:1", Backup: true}.Normalize()
	if _, err := New([]Config{c}, table, Options{}); err == nil {
		t.Fatal("New with only a backup: got no error")
	}
}

// BenchmarkPick is the cost of choosing a backend and releasing it, per
// policy, with and without max_conns (make bench reports it).
func BenchmarkPick(b *testing.B) {
	for _, bc := range []struct {
		name    string
		balance Balance
		max     int
	}{
		{"round_robin", BalanceRoundRobin, 0},
		{"round_robin/max_conns", BalanceRoundRobin, 1 << 20},
		{"least_conn", BalanceLeastConn, 0},
		{"least_conn/max_conns", BalanceLeastConn, 1 << 20},
	} {
		b.Run(bc.name, func(b *testing.B) {
			table, err := NewStateTable()
			if err != nil {
				b.Fatal(err)
			}
			defer table.Close()
			var cfgs []Config
			for i := range 4 {
				cfgs = append(cfgs, Config{Name: fmt.Sprintf("b%d", i), URL: fmt.Sprintf("http://127.0.0.1:%d", 1+i), MaxConns: bc.max}.Normalize())
			}
			s, err := New(cfgs, table, Options{RunDir: b.TempDir(), Balance: bc.balance})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					up, err := s.Pick(nil)
					if err != nil {
						b.Fatal(err)
					}
					up.Done(nil)
				}
			})
		})
	}
}
