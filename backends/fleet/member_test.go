package fleet

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestHandoverKeepsMembership: the next generation resumes the member's
// lease while the old one stops renewing it; a third member never sees the
// member leave, and a fleet restart the old generation runs goes on and
// finishes across the hand-over.
func TestHandoverKeepsMembership(t *testing.T) {
	c := startCluster(t, 3, false)
	cli := c.client()
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var mu sync.Mutex
	var deleted []string
	wch := cli.Watch(wctx, DefaultPrefix+dirMembers, clientv3.WithPrefix())
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					mu.Lock()
					deleted = append(deleted, string(ev.Kv.Key))
					mu.Unlock()
				}
			}
		}
	}()

	local := newLocal("web") // the state table both generations share
	a1 := c.join(t, "a", local, nil)
	third := c.join(t, "c", newLocal("web"), nil)
	waitFor(t, 5*time.Second, "c sees a", func() bool { return slices.Contains(memberNames(third.f.Status()), "a") })

	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the members leave: Leave waits for the restart
	started := make(chan struct{})
	type outcome struct {
		res Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := a1.f.RestartEverywhere(context.Background(), "web", func(ctx context.Context, name string) error {
			close(started)
			<-release
			return nil
		}, RestartOptions{})
		done <- outcome{res, err}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("restart did not start")
	}

	// The upgrade: the new generation starts with the handed-over data.
	a2 := c.join(t, "a", local, func(cfg *Config, o *Options) {
		o.Generation = 2
		o.Handover = a1.f.Handover()
	})
	if g, w := a2.f.Status().Lease, a1.f.Status().Lease; g != w || g == "" {
		t.Fatalf("new generation's lease %q, want the old one's %q", g, w)
	}
	waitFor(t, 5*time.Second, "c sees a's generation 2", func() bool {
		for _, m := range third.f.Status().Members {
			if m.Name == "a" && m.Generation == 2 {
				return true
			}
		}
		return false
	})
	a1.f.Detach() // the old generation stops renewing
	select {
	case <-a1.done:
	case <-time.After(5 * time.Second):
		t.Fatal("old generation's Run did not end after Detach")
	}

	// Three lease TTLs later, a is still a member.
	end := time.Now().Add(3 * c.config("x").LeaseTTL)
	for time.Now().Before(end) {
		if !slices.Contains(memberNames(third.f.Status()), "a") {
			t.Fatal("c lost member a after the hand-over")
		}
		time.Sleep(50 * time.Millisecond)
	}
	releaseOnce()
	o := <-done
	if o.err != nil || !o.res.OK {
		t.Fatalf("restart across the hand-over: %v", o.err)
	}
	if !slices.Equal(o.res.Members, []string{"a", "c"}) {
		t.Errorf("members %v, want a and c", o.res.Members)
	}
	if local.drained("web") {
		t.Error("web still drained on a after the restart")
	}
	stopWatch()
	<-watching
	mu.Lock()
	defer mu.Unlock()
	if len(deleted) != 0 {
		t.Errorf("member records deleted during the hand-over: %v", deleted)
	}
}

// TestInitiatorKilled: kill -9 of the member running a fleet restart
// leaves no backend drained: the mark and locks go with its lease, and the
// next restart can take the lock.
func TestInitiatorKilled(t *testing.T) {
	c := startCluster(t, 3, false)
	b := c.join(t, "b", newLocal("web"), nil)
	d := c.join(t, "d", newLocal("web"), nil)
	h := c.startHelper(t, "x", "restart")
	h.expect(t, "restarting")
	for _, m := range []*testMember{b, d} {
		if !m.local.drained("web") {
			t.Fatalf("%s: web not drained while the restart runs", m.name)
		}
	}
	h.kill()
	killed := time.Now()
	for _, m := range []*testMember{b, d} {
		waitFor(t, 3*c.config("x").LeaseTTL, m.name+" readmits web after the initiator died", func() bool { return !m.local.drained("web") })
	}
	t.Logf("readmitted %s after kill -9", time.Since(killed).Round(time.Millisecond))
	waitFor(t, 5*time.Second, "x dropped", func() bool { return !slices.Contains(memberNames(b.f.Status()), "x") })
	if _, err := b.f.RestartEverywhere(context.Background(), "web", func(context.Context, string) error { return nil }, RestartOptions{}); err != nil {
		t.Fatalf("restart after the initiator died: %v", err)
	}
}

// TestNameInUse: a second baton with a member name in use is refused with
// a clear error; once the first is gone (kill -9, same host), the name is
// free at once.
func TestNameInUse(t *testing.T) {
	c := startCluster(t, 3, false)
	h := c.startHelper(t, "x", "hold")
	h.expect(t, "joined")
	_, err := c.tryJoin(t, "x", newLocal("web"), nil)
	if err == nil || !strings.Contains(err.Error(), `member name "x" is in use by a live baton`) {
		t.Fatalf("second x: %v, want the name refused", err)
	}
	h.kill()
	m, err := c.tryJoin(t, "x", newLocal("web"), nil)
	if err != nil {
		t.Fatalf("x after its predecessor died: %v", err)
	}
	if st := m.f.Status(); st.Degraded {
		t.Errorf("degraded: %s", st.Error)
	}
}

// TestDrainMarks: a fleet-wide drain reaches every member, survives a
// member's restart, and a member that joins later applies it before Sync
// returns; undrain readmits everywhere.
func TestDrainMarks(t *testing.T) {
	c := startCluster(t, 3, false)
	a := c.join(t, "a", newLocal("web", "api"), nil)
	b := c.join(t, "b", newLocal("web", "api"), nil)
	b.local.set("web", func(fb *fakeBackend) { fb.inFlight = 2 })
	go func() {
		waitFor(t, 5*time.Second, "b drained", func() bool { return b.local.drained("web") })
		b.local.set("web", func(fb *fakeBackend) { fb.inFlight = 0 })
	}()
	res, err := a.f.Drain(context.Background(), "web", "maintenance", 10*time.Second)
	if err != nil || res.Error != "" || !slices.Equal(res.Members, []string{"a", "b"}) {
		t.Fatalf("drain: %+v, %v; want quiet on a and b", res, err)
	}
	if b.local.drained("api") || a.local.drained("api") {
		t.Error("api drained too")
	}
	b.leave()
	for _, name := range []string{"b", "d"} { // b restarted, d new
		local := newLocal("web", "api")
		cfg := c.config(name)
		e, err := NewEtcd(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		f, err := New(e, cfg, Options{Local: local})
		if err != nil {
			t.Fatal(err)
		}
		marks, err := f.Sync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(marks) != 1 || marks[0].Backend != "web" || marks[0].Kind != KindDrain || marks[0].By != "a" || marks[0].Reason != "maintenance" {
			t.Errorf("%s: Sync marks %+v, want web drained by a", name, marks)
		}
		if !local.drained("web") || local.drained("api") {
			t.Errorf("%s: after Sync web drained %v, api drained %v; want web only", name, local.drained("web"), local.drained("api"))
		}
		m := &testMember{t: t, name: name, f: f, local: local, done: make(chan struct{})}
		m.run()
		t.Cleanup(m.leave)
		b = m
	}
	if err := a.f.Undrain(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*testMember{a, b} {
		waitFor(t, 5*time.Second, m.name+" readmits web", func() bool { return !m.local.drained("web") })
	}
	if err := a.f.Undrain(context.Background(), "nosuch"); err == nil || !strings.Contains(err.Error(), `no member has a backend "nosuch"`) {
		t.Errorf("undrain nosuch: %v", err)
	}
}

// TestRestartAll: every backend is restarted, at most
// max_parallel_restarts at once, never two of one pool at once, never the
// last ready one of its pool; Ctrl-C starts no more and leaves nothing
// drained.
func TestRestartAll(t *testing.T) {
	c := startCluster(t, 3, false)
	specs := []string{"w1@p1", "w2@p1", "x1@p2", "x2@p2", "y"}
	par := func(cfg *Config, o *Options) { cfg.MaxParallelRestarts = 2 }
	a := c.join(t, "a", newLocal(specs...), par)
	b := c.join(t, "b", newLocal(specs...), par)
	ms := []*testMember{a, b}
	pool := map[string]string{"w1": "p1", "w2": "p1", "x1": "p2", "x2": "p2", "y": "default"}

	var mu sync.Mutex
	active := map[string]bool{}
	var order, problems []string
	maxActive := 0
	var cancelAfter func(string)
	restart := func(ctx context.Context, name string) error {
		mu.Lock()
		for o := range active {
			if pool[o] == pool[name] {
				problems = append(problems, name+" with "+o+" of the same pool")
			}
		}
		active[name] = true
		maxActive = max(maxActive, len(active))
		order = append(order, name)
		mu.Unlock()
		for _, m := range ms {
			for _, o := range m.local.Backends() {
				if o.Pool == pool[name] && o.Name != name && !o.Ready {
					mu.Lock()
					problems = append(problems, name+" while "+o.Name+" was not ready on "+m.name)
					mu.Unlock()
				}
			}
			m.local.set(name, func(fb *fakeBackend) { fb.healthy = false })
		}
		time.Sleep(150 * time.Millisecond) // the server restarting
		for _, m := range ms {
			m.local.set(name, func(fb *fakeBackend) { fb.healthy = true })
		}
		mu.Lock()
		delete(active, name)
		mu.Unlock()
		if cancelAfter != nil {
			cancelAfter(name)
		}
		return nil
	}

	t.Run("all", func(t *testing.T) {
		var ev events
		results, err := a.f.RestartAll(context.Background(), restart, RestartOptions{Progress: ev.add})
		if err != nil {
			t.Fatalf("restart all: %v\n%s", err, ev.String())
		}
		if len(results) != len(specs) {
			t.Fatalf("%d results, want %d", len(results), len(specs))
		}
		mu.Lock()
		defer mu.Unlock()
		slices.Sort(order)
		if !slices.Equal(order, []string{"w1", "w2", "x1", "x2", "y"}) {
			t.Errorf("restarted %v, want every backend once", order)
		}
		if maxActive > 2 {
			t.Errorf("%d restarts at once, max_parallel_restarts is 2", maxActive)
		}
		if len(problems) > 0 {
			t.Errorf("rules broken: %v", problems)
		}
		order, problems, maxActive = nil, nil, 0
	})

	t.Run("last ready of its pool", func(t *testing.T) {
		for _, m := range ms {
			m.local.set("w2", func(fb *fakeBackend) { fb.healthy = false })
		}
		waitFor(t, 5*time.Second, "a sees w2 down on both members", func() bool {
			down := 0
			for _, m := range a.f.Status().Members {
				for _, v := range m.Backends {
					if v.Name == "w2" && !v.Ready {
						down++
					}
				}
			}
			return down == 2
		})
		restartDown := func(ctx context.Context, name string) error {
			if name == "w2" {
				defer func() {
					for _, m := range ms {
						m.local.set("w2", func(fb *fakeBackend) { fb.healthy = true })
					}
				}()
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			return nil
		}
		results, err := a.f.RestartAll(context.Background(), restartDown, RestartOptions{DrainWait: time.Second})
		if err == nil || !strings.Contains(err.Error(), "w1: skipped: it is the last ready backend of pool p1") {
			t.Fatalf("restart all with w2 down: %v, want w1 skipped", err)
		}
		for _, r := range results {
			if r.Backend == "w1" && (r.OK || r.Restarted) {
				t.Errorf("w1: %+v, want skipped", r)
			}
			if r.Backend == "w2" && !r.OK {
				t.Errorf("w2: %+v, want restarted (w1 was ready)", r)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if slices.Contains(order, "w1") {
			t.Error("w1 restarted while the other of its pool was down")
		}
		order = nil
	})

	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancelAfter = func(string) { cancel() }
		defer func() { cancelAfter = nil }()
		a.f.cfg.MaxParallelRestarts = 1
		results, err := a.f.RestartAll(ctx, restart, RestartOptions{})
		if err == nil || !strings.Contains(err.Error(), "not started: context canceled") {
			t.Fatalf("cancelled restart all: %v", err)
		}
		ok := 0
		for _, r := range results {
			if r.OK {
				ok++
			}
		}
		if ok != 1 {
			t.Errorf("%d backends restarted, want the one under way when cancelled: %+v", ok, results)
		}
		for _, m := range ms {
			for _, name := range []string{"w1", "w2", "x1", "x2", "y"} {
				waitFor(t, 5*time.Second, name+" not drained on "+m.name, func() bool { return !m.local.drained(name) })
			}
		}
	})
}
