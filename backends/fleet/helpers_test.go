package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeLocal is a member's backends as baton would report them: state the
// test sets, and the fleet's Drain/Undrain recorded.
type fakeLocal struct {
	mu    sync.Mutex
	order []string
	b     map[string]*fakeBackend
}

type fakeBackend struct {
	pool         string
	healthy      bool
	inFlight     int64
	drainTimeout time.Duration
	fleetDrained bool
	drains       int
	undrains     int
	probes       int
}

// newLocal makes backends from "name" or "name@pool", healthy and idle.
func newLocal(specs ...string) *fakeLocal {
	l := &fakeLocal{b: map[string]*fakeBackend{}}
	for _, s := range specs {
		name, pool, _ := strings.Cut(s, "@")
		l.order = append(l.order, name)
		l.b[name] = &fakeBackend{pool: pool, healthy: true, drainTimeout: 30 * time.Second}
	}
	return l
}

func (l *fakeLocal) Backends() []BackendView {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []BackendView
	for _, n := range l.order {
		b := l.b[n]
		st := "up"
		switch {
		case b.fleetDrained:
			st = "drained"
		case !b.healthy:
			st = "down"
		}
		out = append(out, BackendView{Name: n, Pool: b.pool, State: st, Ready: b.healthy && !b.fleetDrained,
			Healthy: b.healthy, InFlight: b.inFlight, DrainTimeout: b.drainTimeout, Local: true})
	}
	return out
}

func (l *fakeLocal) Drain(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b[name].fleetDrained = true
	l.b[name].drains++
}

func (l *fakeLocal) Undrain(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b[name].fleetDrained = false
	l.b[name].undrains++
}

func (l *fakeLocal) Probe(ctx context.Context, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b[name].probes++
	if !l.b[name].healthy {
		return errors.New("unhealthy")
	}
	return nil
}

func (l *fakeLocal) set(name string, f func(*fakeBackend)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l.b[name])
}

func (l *fakeLocal) get(name string) fakeBackend {
	l.mu.Lock()
	defer l.mu.Unlock()
	return *l.b[name]
}

func (l *fakeLocal) drained(name string) bool { return l.get(name).fleetDrained }

// testMember is a Fleet member running in the test process.
type testMember struct {
	t      *testing.T
	name   string
	f      *Fleet
	local  *fakeLocal
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// join starts a member on c: New, Sync, Run; Cleanup leaves.
func (c *cluster) join(t *testing.T, name string, local *fakeLocal, mod func(*Config, *Options)) *testMember {
	t.Helper()
	m, err := c.tryJoin(t, name, local, mod)
	if err != nil {
		t.Fatalf("member %s: sync: %v", name, err)
	}
	return m
}

func (c *cluster) tryJoin(t *testing.T, name string, local *fakeLocal, mod func(*Config, *Options)) (*testMember, error) {
	t.Helper()
	cfg := c.config(name)
	opts := Options{Local: local, Generation: 1}
	if mod != nil {
		mod(&cfg, &opts)
	}
	e, err := NewEtcd(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(e, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	m := &testMember{t: t, name: name, f: f, local: local, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = f.Sync(ctx)
	cancel()
	if err != nil {
		e.Close()
		return nil, err
	}
	m.run()
	t.Cleanup(m.leave)
	return m, nil
}

func (m *testMember) run() {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer close(m.done)
		if err := m.f.Run(ctx); err != nil {
			m.t.Errorf("member %s: run: %v", m.name, err)
		}
	}()
}

// leave stops Run and ends the membership.
func (m *testMember) leave() {
	m.once.Do(func() {
		m.cancel()
		<-m.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.f.Leave(ctx)
	})
}

// vanish stops Run and the process's renewals without leaving, as a
// process that dies does: the lease ends after its TTL.
func (m *testMember) vanish() {
	m.once.Do(func() {
		m.cancel()
		<-m.done
		_ = m.f.Close()
	})
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// memberNames is the names of the members f's status shows.
func memberNames(st Status) []string {
	var out []string
	for _, m := range st.Members {
		out = append(out, m.Name)
	}
	return out
}

// events collects a fleet operation's progress.
type events struct {
	mu sync.Mutex
	ev []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ev = append(e.ev, ev)
}

func (e *events) steps(backend string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.ev {
		if ev.Backend == backend && ev.Step != "wait" {
			out = append(out, ev.Step)
		}
	}
	return out
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for _, ev := range e.ev {
		fmt.Fprintf(&b, "%s %s %s %v\n", ev.Backend, ev.Step, ev.Detail, ev.Members)
	}
	return b.String()
}
