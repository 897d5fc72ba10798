package fleet

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRestartEverywhere: the restart runs only once every member has the
// backend drained with nothing in flight (one member's requests finish
// late), and the backend is readmitted everywhere only once every member
// has probed it healthy.
func TestRestartEverywhere(t *testing.T) {
	c := startCluster(t, 3, false)
	var ms []*testMember
	for _, n := range []string{"a", "b", "c"} {
		ms = append(ms, c.join(t, n, newLocal("web", "other"), nil))
	}
	a, b := ms[0], ms[1]
	b.local.set("web", func(fb *fakeBackend) { fb.inFlight = 3 })
	waitFor(t, 5*time.Second, "a sees 3 members", func() bool { return len(a.f.Status().Members) == 3 })

	// b's requests finish a while after it is drained.
	go func() {
		deadline := time.Now().Add(5 * time.Second)
		for !b.local.drained("web") && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		b.local.set("web", func(fb *fakeBackend) { fb.inFlight = 0 })
	}()

	var mu sync.Mutex
	var atRestart []string // what each member looked like when restart ran
	restart := func(ctx context.Context, name string) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range ms {
			fb := m.local.get(name)
			if !fb.fleetDrained || fb.inFlight != 0 {
				atRestart = append(atRestart, m.name)
			}
			m.local.set(name, func(fb *fakeBackend) { fb.healthy = false; fb.probes = 0 })
		}
		// It comes back a little later, as a server does.
		go func() {
			time.Sleep(200 * time.Millisecond)
			for _, m := range ms {
				m.local.set(name, func(fb *fakeBackend) { fb.healthy = true })
			}
		}()
		return nil
	}
	var ev events
	res, err := a.f.RestartEverywhere(context.Background(), "web", restart, RestartOptions{Progress: ev.add})
	if err != nil {
		t.Fatalf("restart: %v\n%s", err, ev.String())
	}
	if len(atRestart) != 0 {
		t.Errorf("restart ran while %v still had web undrained or busy", atRestart)
	}
	if !res.OK || !res.Restarted || !slices.Equal(res.Members, []string{"a", "b", "c"}) {
		t.Errorf("result %+v, want ok, restarted, members a b c", res)
	}
	for _, m := range ms {
		fb := m.local.get("web")
		// Sync undrains every unmarked backend once (level-triggered),
		// then the readmission once more.
		if fb.fleetDrained || fb.drains != 1 || fb.undrains != 2 || fb.probes == 0 {
			t.Errorf("%s: web drained=%v drains=%d undrains=%d probes=%d, want readmitted after one drain and a probe", m.name, fb.fleetDrained, fb.drains, fb.undrains, fb.probes)
		}
		if o := m.local.get("other"); o.drains != 0 {
			t.Errorf("%s: other drained %d times, want 0", m.name, o.drains)
		}
	}
	want := []string{"lock", "drain", "drained", "restart", "restarted", "healthy", "readmitted"}
	if got := ev.steps("web"); !slices.Equal(got, want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	if !strings.Contains(ev.String(), "b (drained, 3 in flight)") {
		t.Errorf("no step said it waited for b's in-flight requests:\n%s", ev.String())
	}
	if marks := a.f.Status().Marks; len(marks) != 0 {
		t.Errorf("marks left: %+v", marks)
	}
}

// TestRestartBusy: a second fleet restart of the same backend, from
// another member, is refused naming the one under way.
func TestRestartBusy(t *testing.T) {
	c := startCluster(t, 3, false)
	a := c.join(t, "a", newLocal("web"), nil)
	b := c.join(t, "b", newLocal("web"), nil)
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := a.f.RestartEverywhere(context.Background(), "web", func(ctx context.Context, name string) error {
			close(started)
			<-release
			return nil
		}, RestartOptions{})
		done <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("first restart did not start")
	}
	_, err := b.f.RestartEverywhere(context.Background(), "web", func(ctx context.Context, name string) error {
		t.Error("second restart ran")
		return nil
	}, RestartOptions{})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "started by member a") {
		t.Errorf("second restart: %v, want ErrBusy naming member a", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("first restart: %v", err)
	}
	if _, err := b.f.RestartEverywhere(context.Background(), "nosuch", nil, RestartOptions{}); err == nil || !strings.Contains(err.Error(), "no such backend") {
		t.Errorf("unknown backend: %v", err)
	}
}

// TestRestartCancelled: Ctrl-C while the fleet drains (a member never
// gets quiet) readmits the backend everywhere and never restarts it.
func TestRestartCancelled(t *testing.T) {
	c := startCluster(t, 3, false)
	a := c.join(t, "a", newLocal("web"), nil)
	b := c.join(t, "b", newLocal("web"), nil)
	b.local.set("web", func(fb *fakeBackend) { fb.inFlight = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, 5*time.Second, "b drained", func() bool { return b.local.drained("web") })
		cancel()
	}()
	_, err := a.f.RestartEverywhere(ctx, "web", func(ctx context.Context, name string) error {
		t.Error("restart ran")
		return nil
	}, RestartOptions{})
	if err == nil || !strings.Contains(err.Error(), "stopped before the restart") {
		t.Fatalf("cancelled restart: %v", err)
	}
	for _, m := range []*testMember{a, b} {
		waitFor(t, 5*time.Second, m.name+" readmits web", func() bool { return !m.local.drained("web") })
	}
}

// TestMemberDiesMidRestart: a member that stops renewing (it died) while
// the fleet waits for its in-flight requests is dropped when its lease
// ends, and the restart goes on without it.
func TestMemberDiesMidRestart(t *testing.T) {
	c := startCluster(t, 3, false)
	a := c.join(t, "a", newLocal("web"), nil)
	b := c.join(t, "b", newLocal("web"), nil)
	b.local.set("web", func(fb *fakeBackend) { fb.inFlight = 5 })
	go func() {
		waitFor(t, 5*time.Second, "b drained", func() bool { return b.local.drained("web") })
		b.vanish()
	}()
	restarted := false
	res, err := a.f.RestartEverywhere(context.Background(), "web", func(ctx context.Context, name string) error {
		restarted = true
		return nil
	}, RestartOptions{})
	if err != nil || !restarted {
		t.Fatalf("restart: %v (restarted %v)", err, restarted)
	}
	if !slices.Equal(res.Members, []string{"a"}) {
		t.Errorf("members %v, want a alone (b died)", res.Members)
	}
}
