package backends

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// Balance is how a Set spreads requests over its backends.
type Balance string

// Balancing policies.
const (
	BalanceRoundRobin Balance = "round_robin" // in turn, in proportion to weight
	BalanceLeastConn  Balance = "least_conn"  // fewest in flight (all generations) per unit of weight
)

// DefaultBalance is the policy of a zero Options.Balance.
const DefaultBalance = BalanceRoundRobin

// MaxWeight bounds a backend's weight.
const MaxWeight = 1000

// ParseBalance checks a policy name; "" is DefaultBalance.
func ParseBalance(s string) (Balance, error) {
	switch Balance(s) {
	case "":
		return DefaultBalance, nil
	case BalanceRoundRobin, BalanceLeastConn:
		return Balance(s), nil
	}
	return "", fmt.Errorf("%q: want round_robin or least_conn", s)
}

// The queue. A request that Pick cannot place (every backend down, or
// every routable one at its limit) waits in Wait, in arrival order. Room
// freed by this process (Done), a backend readmitted, a slow start ramping
// up, or room freed by another generation (seen by the watcher, which
// polls the shared table while anyone waits) wakes as many waiters from
// the front as there is room, and no more: each woken waiter holds a
// grant, which its next Pick spends. While waiters or grants exist, a
// Pick without a grant fails, so newcomers queue behind the waiters
// instead of taking the room freed for them.

// waiter is one request in the queue.
type waiter struct {
	c     chan struct{} // closed when woken
	woken bool          // under qmu
}

// unlimited stands for the room of a backend without a limit.
const unlimited = math.MaxInt64 / 4

// groups splits backends into primaries and backups, and precomputes the
// weighted round-robin order of each.
type group struct {
	members []*Backend
	seq     []int // smooth weighted round-robin order, indices into members
}

func newGroup(bs []*Backend) group {
	g := group{members: bs}
	total := 0
	for _, b := range bs {
		total += b.cfg.Weight
	}
	cur := make([]int, len(bs))
	for k := 0; k < total; k++ {
		best := 0
		for i, b := range bs {
			cur[i] += b.cfg.Weight
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		g.seq = append(g.seq, best)
	}
	return g
}

func (g *group) anyRoutable() bool {
	for _, b := range g.members {
		if b.slot.load().routable() {
			return true
		}
	}
	return false
}

// active is the group requests go to: the primaries while one is
// routable, else the backups.
func (s *Set) active() *group {
	if len(s.backup.members) == 0 || s.primary.anyRoutable() {
		return &s.primary
	}
	return &s.backup
}

// Pick returns a routable backend with room, chosen by the balancing
// policy, preferring one other than avoid, counted in flight until its
// Done; or ErrNoUpstream, and the caller waits in Wait.
func (s *Set) Pick(avoid proxy.Upstream) (proxy.Upstream, error) {
	if (s.queued.Load() > 0 || s.grants.Load() > 0) && !s.takeGrant() {
		return nil, proxy.ErrNoUpstream // queue behind the waiters
	}
	g := s.active()
	n := len(g.members)
	if n == 0 {
		return nil, proxy.ErrNoUpstream
	}
	now := s.now()
	var avoided *Backend
	try := func(b *Backend) bool {
		if avoid != nil && proxy.Upstream(b) == avoid {
			avoided = b
			return false
		}
		if b.acquire(now) {
			b.served.Add(1)
			return true
		}
		return false
	}
	r := s.rr.Add(1)
	if s.balance == BalanceLeastConn {
		var tried [maxSlots]bool
		start := int(r % uint64(n))
		for range n {
			best := -1
			var bestLoad, bestW int64
			for i := 0; i < n; i++ {
				j := (start + i) % n
				if tried[j] {
					continue
				}
				b := g.members[j]
				load, w := atomic.LoadInt64(&b.slot.inflight), int64(b.rampWeight(now))
				if best < 0 || load*bestW < bestLoad*w {
					best, bestLoad, bestW = j, load, w
				}
			}
			tried[best] = true
			if try(g.members[best]) {
				return g.members[best], nil
			}
		}
	} else {
		first := g.seq[r%uint64(len(g.seq))]
		var ramping *Backend
		for i := 0; i < n; i++ {
			b := g.members[(first+i)%n]
			if b.skipForRamp(now) {
				ramping = b
				continue
			}
			if try(b) {
				return b, nil
			}
		}
		if ramping != nil && try(ramping) {
			return ramping, nil
		}
	}
	if avoided != nil && avoided.acquire(now) {
		avoided.served.Add(1)
		return avoided, nil
	}
	return nil, proxy.ErrNoUpstream
}

// takeGrant spends a grant if there is one.
func (s *Set) takeGrant() bool {
	for {
		g := s.grants.Load()
		if g <= 0 {
			return false
		}
		if s.grants.CompareAndSwap(g, g-1) {
			return true
		}
	}
}

// Wait queues the caller until there may be room for it, or ctx ends.
// Other generations change the shared table too, so while anyone waits a
// watcher looks at it every few milliseconds.
func (s *Set) Wait(ctx context.Context) error {
	w := &waiter{c: make(chan struct{})}
	s.qmu.Lock()
	e := s.queue.PushBack(w)
	s.queued.Add(1)
	s.qmu.Unlock()
	if s.waiters.Add(1) == 1 {
		select {
		case s.watchC <- struct{}{}:
		default:
		}
	}
	defer s.waiters.Add(-1)
	s.dispatch()
	select {
	case <-w.c:
		return nil
	case <-ctx.Done():
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if w.woken {
		return nil // woken as it gave up: it holds a grant, which its Pick spends
	}
	s.queue.Remove(e)
	s.queued.Add(-1)
	return ctx.Err()
}

// grantTTL is how long grants may stay unspent before dispatch forgets
// them: a woken waiter whose caller never called Pick must not hold the
// queue up for good.
const grantTTL = time.Second

// dispatch wakes as many waiters, from the front, as there is room for.
func (s *Set) dispatch() {
	if s.queued.Load() == 0 {
		return
	}
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.grants.Load() > 0 && time.Since(time.Unix(0, s.grantAt.Load())) > grantTTL {
		s.grants.Store(0)
	}
	free := s.room() - s.grants.Load()
	for ; free > 0 && s.queue.Len() > 0; free-- {
		w := s.queue.Remove(s.queue.Front()).(*waiter)
		w.woken = true
		s.grants.Add(1)
		s.grantAt.Store(time.Now().UnixNano())
		s.queued.Add(-1)
		close(w.c)
	}
}

// room is how many more requests the active group takes now.
func (s *Set) room() int64 {
	now := s.now()
	var total int64
	for _, b := range s.active().members {
		if !b.slot.load().routable() {
			continue
		}
		lim := b.limit(now)
		if lim == 0 {
			return unlimited
		}
		if free := lim - atomic.LoadInt64(&b.slot.inflight); free > 0 {
			total += free
		}
	}
	return total
}

// Queued is how many requests wait in the queue now.
func (s *Set) Queued() int64 { return s.queued.Load() }

// ramp is how far into its slow start b is at now, in (0, 1]; 1 when
// not ramping.
func (b *Backend) ramp(now time.Time) float64 {
	if b.cfg.SlowStart <= 0 {
		return 1
	}
	since := atomic.LoadInt64(&b.slot.routableSince)
	if since == 0 {
		return 1 // routable since the table was made: nothing came back
	}
	el := now.Sub(time.Unix(0, since))
	if el >= b.cfg.SlowStart || el < 0 {
		return 1
	}
	return max(float64(el)/float64(b.cfg.SlowStart), 0.01)
}

// limit is b's effective max_conns at now (0: no limit): during a slow
// start it ramps from 1 up to MaxConns.
func (b *Backend) limit(now time.Time) int64 {
	if b.cfg.MaxConns <= 0 {
		return 0
	}
	return max(1, int64(math.Ceil(float64(b.cfg.MaxConns)*b.ramp(now))))
}

// rampWeight is b's weight at now, in hundredths: during a slow start of
// a backend without a limit, its share ramps up.
func (b *Backend) rampWeight(now time.Time) int {
	if b.cfg.MaxConns > 0 {
		return 100 * b.cfg.Weight
	}
	return max(1, int(100*float64(b.cfg.Weight)*b.ramp(now)))
}

// skipForRamp reports whether round robin passes over b this turn: a
// backend without a limit in slow start takes only its ramp's share of
// its turns.
func (b *Backend) skipForRamp(now time.Time) bool {
	if b.cfg.MaxConns > 0 {
		return false
	}
	f := b.ramp(now)
	if f >= 1 {
		return false
	}
	t := float64(b.turns.Add(1))
	return math.Floor(t*f) == math.Floor((t-1)*f)
}
