package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

var _ Coordinator = (*Etcd)(nil)

// Etcd is the Coordinator on an etcd cluster (v3 API), through
// go.etcd.io/etcd/client/v3 and its concurrency package: leases are
// concurrency.Sessions, locks concurrency.Mutexes, the election a
// concurrency.Election; the semaphore is the Mutex's algorithm with limit
// slots instead of one. Connecting does not wait: with etcd down, NewEtcd
// succeeds and calls fail within their ctx.
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	name   string // "etcd [endpoints]", for errors

	wg sync.WaitGroup // calls abandoned at their ctx's end, finishing
}

// NewEtcd connects to the endpoints of c (normalized and valid), with
// client TLS from its files for https endpoints.
func NewEtcd(c *Config) (*Etcd, error) {
	cfg := clientv3.Config{
		Endpoints: c.Etcd,
		// why: a dead TCP connection (a partition, a killed member) is
		// noticed within seconds, not the kernel's minutes.
		DialKeepAliveTime:    c.LeaseTTL / 4,
		DialKeepAliveTimeout: c.CallTimeout,
		PermitWithoutStream:  true,
		Logger:               zap.NewNop(), // the library returns errors; cmd logs
	}
	if strings.HasPrefix(c.Etcd[0], "https://") {
		tc, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("fleet: etcd %s: %w", strings.Join(c.Etcd, ","), err)
	}
	return &Etcd{cli: cli, prefix: c.Prefix, name: "etcd " + strings.Join(c.Etcd, ",")}, nil
}

// String is "etcd " and the endpoints.
func (e *Etcd) String() string { return e.name }

func (e *Etcd) errf(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no answer in time (%w)", err)
	}
	return fmt.Errorf("fleet: %s: %s: %w", e.name, what, err)
}

// Grant makes a new lease.
func (e *Etcd) Grant(ctx context.Context, ttl time.Duration) (Lease, error) {
	resp, err := e.cli.Grant(ctx, ttlSeconds(ttl))
	if err != nil {
		return nil, e.errf("grant a lease", err)
	}
	return e.session(resp.ID, ttl)
}

// Resume takes over the keepalive of lease id, if it still lives.
func (e *Etcd) Resume(ctx context.Context, id LeaseID, ttl time.Duration) (Lease, error) {
	resp, err := e.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil, ErrLeaseGone
		}
		return nil, e.errf(fmt.Sprintf("lease %x", id), err)
	}
	if resp.TTL <= 0 {
		return nil, ErrLeaseGone
	}
	return e.session(clientv3.LeaseID(id), ttl)
}

func (e *Etcd) session(id clientv3.LeaseID, ttl time.Duration) (Lease, error) {
	s, err := concurrency.NewSession(e.cli, concurrency.WithLease(id), concurrency.WithTTL(int(ttlSeconds(ttl))))
	if err != nil {
		return nil, e.errf(fmt.Sprintf("keep lease %x alive", id), err)
	}
	return &etcdLease{e: e, s: s}, nil
}

// Revoke ends lease id.
func (e *Etcd) Revoke(ctx context.Context, id LeaseID) error {
	if _, err := e.cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return e.errf(fmt.Sprintf("revoke lease %x", id), err)
	}
	return nil
}

// Put sets a key.
func (e *Etcd) Put(ctx context.Context, key string, value []byte, lease LeaseID) error {
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	if _, err := e.cli.Put(ctx, e.prefix+key, string(value), opts...); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("fleet: put %s: %w", key, ErrLeaseGone)
		}
		return e.errf("put "+key, err)
	}
	return nil
}

// Get reads a key.
func (e *Etcd) Get(ctx context.Context, key string) (KV, bool, error) {
	resp, err := e.cli.Get(ctx, e.prefix+key)
	if err != nil {
		return KV{}, false, e.errf("get "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, false, nil
	}
	return e.kv(resp.Kvs[0]), true, nil
}

func (e *Etcd) kv(k *mvccpb.KeyValue) KV {
	return KV{Key: strings.TrimPrefix(string(k.Key), e.prefix), Value: k.Value, Lease: LeaseID(k.Lease)}
}

// List reads a directory.
func (e *Etcd) List(ctx context.Context, dir string) ([]KV, int64, error) {
	resp, err := e.cli.Get(ctx, e.prefix+dir, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, e.errf("list "+dir, err)
	}
	kvs := make([]KV, len(resp.Kvs))
	for i, k := range resp.Kvs {
		kvs[i] = e.kv(k)
	}
	return kvs, resp.Header.Revision, nil
}

// Delete removes a key.
func (e *Etcd) Delete(ctx context.Context, key string) error {
	if _, err := e.cli.Delete(ctx, e.prefix+key); err != nil {
		return e.errf("delete "+key, err)
	}
	return nil
}

// Watch streams changes; it requires a leader, so a member cut off from
// the quorum ends the watch instead of going silent.
func (e *Etcd) Watch(ctx context.Context, dir string, rev int64) <-chan Change {
	out := make(chan Change, 64)
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := e.cli.Watch(ctx, e.prefix+dir, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(out)
		defer cancel()
		for resp := range wch {
			if resp.Err() != nil || resp.Canceled {
				return
			}
			for _, ev := range resp.Events {
				c := Change{KV: e.kv(ev.Kv), Deleted: ev.Type == mvccpb.DELETE}
				select {
				case out <- c:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// abandonable runs f, returning at ctx's end even if f does not (the
// concurrency package cleans up after a cancelled wait with calls on the
// client's own context); undo runs if f succeeds after that.
func (e *Etcd) abandonable(ctx context.Context, f func() error, undo func()) error {
	res := make(chan error, 1)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		res <- f()
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			if <-res == nil {
				undo()
			}
		}()
		return ctx.Err()
	}
}

func (e *Etcd) undoCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.cli.Ctx(), 5*time.Second)
}

// Lock takes a concurrency.Mutex under locks/name.
func (e *Etcd) Lock(ctx context.Context, lease Lease, name string, try bool) (Held, error) {
	l, ok := lease.(*etcdLease)
	if !ok {
		return nil, fmt.Errorf("fleet: lock %s: not an etcd lease", name)
	}
	m := concurrency.NewMutex(l.s, e.prefix+"locks/"+name)
	if try {
		if err := m.TryLock(ctx); err != nil {
			if errors.Is(err, concurrency.ErrLocked) {
				return nil, ErrLocked
			}
			return nil, e.errf("lock "+name, err)
		}
		return mutexHeld{m}, nil
	}
	err := e.abandonable(ctx, func() error { return m.Lock(ctx) }, func() {
		uctx, cancel := e.undoCtx()
		defer cancel()
		_ = m.Unlock(uctx)
	})
	if err != nil {
		if errors.Is(err, concurrency.ErrSessionExpired) {
			return nil, ErrLeaseGone
		}
		return nil, e.errf("lock "+name, err)
	}
	return mutexHeld{m}, nil
}

type mutexHeld struct{ m *concurrency.Mutex }

func (h mutexHeld) Release(ctx context.Context) error {
	if err := h.m.Unlock(ctx); err != nil && !errors.Is(err, concurrency.ErrLockReleased) {
		return fmt.Errorf("fleet: unlock %s: %w", h.m.Key(), err)
	}
	return nil
}

// Acquire takes one of limit slots of sems/name: like a Mutex, each
// holder's key is under its lease, and the limit oldest keys hold a slot.
func (e *Etcd) Acquire(ctx context.Context, lease Lease, name string, limit int) (Held, error) {
	dir := e.prefix + "sems/" + name + "/"
	key := fmt.Sprintf("%s%x", dir, lease.ID())
	_, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "", clientv3.WithLease(clientv3.LeaseID(lease.ID())))).
		Commit()
	if err != nil {
		return nil, e.errf("semaphore "+name, err)
	}
	h := semHeld{e: e, key: key}
	for {
		resp, err := e.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
		if err != nil {
			h.abandon()
			return nil, e.errf("semaphore "+name, err)
		}
		mine := -1
		for i, kv := range resp.Kvs {
			if string(kv.Key) == key {
				mine = i
			}
		}
		switch {
		case mine < 0:
			return nil, fmt.Errorf("fleet: semaphore %s: %w", name, ErrLeaseGone)
		case mine < limit:
			return h, nil
		}
		// Wait for a holder ahead of us to go, then count again.
		if err := e.waitDelete(ctx, dir, resp.Header.Revision, lease.Done()); err != nil {
			h.abandon()
			return nil, e.errf("semaphore "+name, err)
		}
	}
}

func (e *Etcd) waitDelete(ctx context.Context, dir string, rev int64, lost <-chan struct{}) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(ctx, dir, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithFilterPut())
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return errors.New("watch ended")
			}
			if err := resp.Err(); err != nil {
				return err
			}
			if len(resp.Events) > 0 {
				return nil
			}
		case <-lost:
			return ErrLeaseGone
		}
	}
}

type semHeld struct {
	e   *Etcd
	key string
}

func (h semHeld) Release(ctx context.Context) error {
	if _, err := h.e.cli.Delete(ctx, h.key); err != nil {
		return h.e.errf("release "+strings.TrimPrefix(h.key, h.e.prefix), err)
	}
	return nil
}

// abandon deletes the waiter's key after a failed wait, bounded.
func (h semHeld) abandon() {
	ctx, cancel := h.e.undoCtx()
	defer cancel()
	_ = h.Release(ctx)
}

// Campaign runs a concurrency.Election under elections/name.
func (e *Etcd) Campaign(ctx context.Context, lease Lease, name string) (Leadership, error) {
	l, ok := lease.(*etcdLease)
	if !ok {
		return nil, fmt.Errorf("fleet: campaign %s: not an etcd lease", name)
	}
	el := concurrency.NewElection(l.s, e.prefix+"elections/"+name)
	err := e.abandonable(ctx, func() error { return el.Campaign(ctx, fmt.Sprintf("%x", lease.ID())) }, func() {
		uctx, cancel := e.undoCtx()
		defer cancel()
		_ = el.Resign(uctx)
	})
	if err != nil {
		return nil, e.errf("campaign "+name, err)
	}
	return &etcdLeader{e: e, el: el, lost: l.s.Done()}, nil
}

type etcdLeader struct {
	e    *Etcd
	el   *concurrency.Election
	lost <-chan struct{}
}

func (l *etcdLeader) Put(ctx context.Context, key string, value []byte) error {
	resp, err := l.e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.el.Key()), "=", l.el.Rev())).
		Then(clientv3.OpPut(l.e.prefix+key, string(value))).
		Commit()
	if err != nil {
		return l.e.errf("put "+key, err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}

func (l *etcdLeader) Lost() <-chan struct{} { return l.lost }

func (l *etcdLeader) Resign(ctx context.Context) error {
	if err := l.el.Resign(ctx); err != nil {
		return l.e.errf("resign", err)
	}
	return nil
}

// Close closes the client; leases are no longer renewed by this process.
func (e *Etcd) Close() error {
	err := e.cli.Close()
	e.wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return e.errf("close", err)
	}
	return nil
}

type etcdLease struct {
	e *Etcd
	s *concurrency.Session
}

func (l *etcdLease) ID() LeaseID           { return LeaseID(l.s.Lease()) }
func (l *etcdLease) Done() <-chan struct{} { return l.s.Done() }
func (l *etcdLease) Close()                { l.s.Orphan() }

func (l *etcdLease) Revoke(ctx context.Context) error {
	l.s.Orphan()
	return l.e.Revoke(ctx, l.ID())
}

func ttlSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
