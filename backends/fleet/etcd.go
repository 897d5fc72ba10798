package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	eps    []string
	tls    *tls.Config
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
	return &Etcd{cli: cli, eps: c.Etcd, tls: cfg.TLS, prefix: c.Prefix, name: "etcd " + strings.Join(c.Etcd, ",")}, nil
}

// String is "etcd " and the endpoints.
func (e *Etcd) String() string { return e.name }

func (e *Etcd) errf(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		// why: the client waits for a connection until the deadline and
		// keeps the reason to itself; find it out.
		if why := e.diagnose(); why != "" {
			err = fmt.Errorf("no answer in time (%w): %s", err, why)
		} else {
			err = fmt.Errorf("no answer in time (%w)", err)
		}
	}
	return fmt.Errorf("fleet: %s: %s: %w", e.name, what, err)
}

// unary runs one request, and sends it again if an attempt times out (or
// etcd answers that it has no leader) while ctx has time left: a request
// in flight when etcd's leader dies is lost and waits out its timeout,
// where the same request sent again is answered by the new leader within
// an election timeout. Each attempt has a third of the time left (at
// least minAttempt). Only requests that may be repeated go through it.
func unary(ctx context.Context, fn func(context.Context) error) error {
	dl, ok := ctx.Deadline()
	if !ok {
		return fn(ctx)
	}
	for {
		actx, cancel := context.WithTimeout(ctx, max(time.Until(dl)/3, minAttempt))
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !retryable(err) || time.Until(dl) < minAttempt/5 {
			return err
		}
	}
}

const minAttempt = 500 * time.Millisecond

func retryable(err error) bool {
	for _, e := range []error{context.DeadlineExceeded, rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged, rpctypes.ErrTimeout,
		rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrUnhealthy} {
		if errors.Is(err, e) {
			return true
		}
	}
	return status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
}

// diagnose connects to each endpoint as the client would (TCP, then TLS
// with the client's certificate, then the HTTP/2 preface, to which a
// server that refuses the certificate answers with its alert) and says
// what fails, within about a second; "" if every endpoint answers.
func (e *Etcd) diagnose() string {
	out := make([]string, len(e.eps))
	var wg sync.WaitGroup
	for i, ep := range e.eps {
		wg.Go(func() {
			if err := e.probe(ep); err != nil {
				out[i] = ep + ": " + err.Error()
			}
		})
	}
	wg.Wait()
	var bad []string
	for _, s := range out {
		if s != "" {
			bad = append(bad, s)
		}
	}
	return strings.Join(bad, "; ")
}

func (e *Etcd) probe(ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Second)
	conn, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	if u.Scheme != "https" {
		return nil
	}
	tc := e.tls.Clone()
	tc.ServerName = u.Hostname()
	tc.NextProtos = []string{"h2"}
	t := tls.Client(conn, tc)
	if err := t.Handshake(); err != nil {
		return err
	}
	if _, err := t.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return err
	}
	if _, err := t.Read(make([]byte, 64)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

// Grant makes a new lease.
func (e *Etcd) Grant(ctx context.Context, ttl time.Duration) (Lease, error) {
	var resp *clientv3.LeaseGrantResponse
	err := unary(ctx, func(ctx context.Context) (err error) {
		resp, err = e.cli.Grant(ctx, ttlSeconds(ttl))
		return err
	})
	if err != nil {
		return nil, e.errf("grant a lease", err)
	}
	return e.session(resp.ID, ttl)
}

// Resume takes over the keepalive of lease id, if it still lives.
func (e *Etcd) Resume(ctx context.Context, id LeaseID, ttl time.Duration) (Lease, error) {
	var resp *clientv3.LeaseTimeToLiveResponse
	err := unary(ctx, func(ctx context.Context) (err error) {
		resp, err = e.cli.TimeToLive(ctx, clientv3.LeaseID(id))
		return err
	})
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
	err := unary(ctx, func(ctx context.Context) error {
		_, err := e.cli.Revoke(ctx, clientv3.LeaseID(id))
		return err
	})
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
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
	err := unary(ctx, func(ctx context.Context) error {
		_, err := e.cli.Put(ctx, e.prefix+key, string(value), opts...)
		return err
	})
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("fleet: put %s: %w", key, ErrLeaseGone)
		}
		return e.errf("put "+key, err)
	}
	return nil
}

// Get reads a key.
func (e *Etcd) Get(ctx context.Context, key string) (KV, bool, error) {
	var resp *clientv3.GetResponse
	err := unary(ctx, func(ctx context.Context) (err error) {
		resp, err = e.cli.Get(ctx, e.prefix+key)
		return err
	})
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
	var resp *clientv3.GetResponse
	err := unary(ctx, func(ctx context.Context) (err error) {
		resp, err = e.cli.Get(ctx, e.prefix+dir, clientv3.WithPrefix())
		return err
	})
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
	err := unary(ctx, func(ctx context.Context) error {
		_, err := e.cli.Delete(ctx, e.prefix+key)
		return err
	})
	if err != nil {
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
		if err := unary(ctx, m.TryLock); err != nil {
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
	err := unary(ctx, func(ctx context.Context) error {
		_, err := e.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, "", clientv3.WithLease(clientv3.LeaseID(lease.ID())))).
			Commit()
		return err
	})
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
	err := unary(ctx, func(ctx context.Context) error {
		_, err := h.e.cli.Delete(ctx, h.key)
		return err
	})
	if err != nil {
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
	var resp *clientv3.TxnResponse
	err := unary(ctx, func(ctx context.Context) (err error) {
		resp, err = l.e.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(l.el.Key()), "=", l.el.Rev())).
			Then(clientv3.OpPut(l.e.prefix+key, string(value))).
			Commit()
		return err
	})
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
