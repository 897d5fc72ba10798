package fleet

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEtcdStopped: with all of etcd stopped, members keep their last
// known state (a drained backend stays drained, nothing else changes),
// fleet operations refuse at once with an error naming etcd and its
// endpoints, status says degraded; once etcd is back every member
// reconnects, republishes its record and follows the marks again.
func TestEtcdStopped(t *testing.T) {
	c := startCluster(t, 3, false)
	a := c.join(t, "a", newLocal("web", "api"), nil)
	b := c.join(t, "b", newLocal("web", "api"), nil)
	if _, err := a.f.Drain(context.Background(), "api", "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b drains api", func() bool { return b.local.drained("api") })
	for i := range c.members {
		c.stop(i, syscall.SIGTERM)
	}
	for _, m := range []*testMember{a, b} {
		waitFor(t, 15*time.Second, m.name+" degraded", func() bool { return m.f.Status().Degraded })
		st := m.f.Status()
		if !strings.Contains(st.Error, "etcd "+c.endpoints()[0]) {
			t.Errorf("%s: status error %q does not name etcd and its endpoints", m.name, st.Error)
		}
		if !slices.Contains(memberNames(st), "a") || !slices.Contains(memberNames(st), "b") {
			t.Errorf("%s: last known members %v, want a and b", m.name, memberNames(st))
		}
		if !m.local.drained("api") || m.local.drained("web") {
			t.Errorf("%s: api drained %v, web drained %v: want the last known state", m.name, m.local.drained("api"), m.local.drained("web"))
		}
	}
	start := time.Now()
	_, err := a.f.RestartEverywhere(context.Background(), "web", func(context.Context, string) error {
		t.Error("restart ran with etcd down")
		return nil
	}, RestartOptions{})
	if err == nil || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), "etcd "+c.endpoints()[0]) {
		t.Errorf("restart with etcd down: %v, want a refusal naming etcd", err)
	}
	if _, err := a.f.Drain(context.Background(), "web", "", 0); err == nil || !strings.Contains(err.Error(), "etcd") {
		t.Errorf("drain with etcd down: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusals took %s, want at once", d)
	}

	for i := range c.members {
		c.start(i, "")
	}
	if err := c.waitServing(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*testMember{a, b} {
		waitFor(t, 20*time.Second, m.name+" reconnected", func() bool { return !m.f.Status().Degraded })
	}
	waitFor(t, 5*time.Second, "a sees b republished", func() bool {
		return slices.Equal(memberNames(a.f.Status()), []string{"a", "b"})
	})
	if err := a.f.Undrain(context.Background(), "api"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b follows the marks again", func() bool { return !b.local.drained("api") })
	if _, err := b.f.RestartEverywhere(context.Background(), "web", func(context.Context, string) error { return nil }, RestartOptions{}); err != nil {
		t.Errorf("restart after etcd came back: %v", err)
	}
}

// TestEtcdLeaderKilled: kill -9 of etcd's leader costs no member its
// membership, and a fleet restart right after it works on the two left
// (its calls wait out the election: call_timeout, default 3s, is longer).
func TestEtcdLeaderKilled(t *testing.T) {
	c := startCluster(t, 3, false)
	var ms []*testMember
	for _, n := range []string{"a", "b", "c"} {
		ms = append(ms, c.join(t, n, newLocal("web"), func(cfg *Config, o *Options) { cfg.LeaseTTL, cfg.CallTimeout = 4*time.Second, DefaultCallTimeout }))
	}
	waitFor(t, 5*time.Second, "3 members", func() bool { return len(ms[0].f.Status().Members) == 3 })
	leader := c.leader()
	c.stop(leader, syscall.SIGKILL)
	res, err := ms[0].f.RestartEverywhere(context.Background(), "web", func(context.Context, string) error { return nil }, RestartOptions{})
	if err != nil || !slices.Equal(res.Members, []string{"a", "b", "c"}) {
		t.Fatalf("restart after the leader died: %+v, %v; want all three members", res, err)
	}
	c.start(leader, "")
	if err := c.waitServing(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if st := m.f.Status(); len(st.Members) != 3 {
			t.Errorf("%s sees %v, want 3 members", m.name, memberNames(st))
		}
	}
}
