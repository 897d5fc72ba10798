package fleet

import (
	"context"
	"errors"
	"time"
)

// LeaseID names a lease of the coordination engine; 0 is no lease.
type LeaseID int64

// Errors of a Coordinator that callers decide on.
var (
	// ErrLeaseGone: the lease expired or was revoked.
	ErrLeaseGone = errors.New("fleet: lease gone")
	// ErrLocked: TryLock found the lock held by another lease.
	ErrLocked = errors.New("fleet: locked")
	// ErrNotLeader: a Leadership write after the leadership was lost.
	ErrNotLeader = errors.New("fleet: no longer the leader")
)

// Coordinator is what a fleet needs from a coordination engine: leases
// that end when their holder stops renewing them, a key-value store whose
// keys can belong to a lease, watches, locks, a counting semaphore and an
// election, all under the fleet's prefix (keys passed in are relative to
// it). The etcd implementation is Etcd; another engine (Consul sessions
// and KV, Kubernetes Leases) would implement the same methods. Every
// method is bounded by its ctx; an implementation adds no unbounded wait
// of its own. It is safe for concurrent use.
type Coordinator interface {
	// String names the engine and its endpoints, for error messages.
	String() string
	// Grant makes a new lease of ttl, kept alive by this process until
	// Lease.Close or Lease.Revoke.
	Grant(ctx context.Context, ttl time.Duration) (Lease, error)
	// Resume takes over the keepalive of an existing lease (from a
	// previous generation of this member); ErrLeaseGone if it has ended.
	Resume(ctx context.Context, id LeaseID, ttl time.Duration) (Lease, error)
	// Revoke ends a lease held by no live process (a crashed predecessor
	// of this member): every key under it goes.
	Revoke(ctx context.Context, id LeaseID) error
	// Put sets key to value, under lease (0: no lease, the key stays).
	Put(ctx context.Context, key string, value []byte, lease LeaseID) error
	// Get reads one key; ok is false if it does not exist.
	Get(ctx context.Context, key string) (kv KV, ok bool, err error)
	// List reads every key under dir (a prefix ending in "/") at one
	// revision, which it returns for Watch.
	List(ctx context.Context, dir string) (kvs []KV, rev int64, err error)
	// Delete removes key; a missing key is no error.
	Delete(ctx context.Context, key string) error
	// Watch sends every change under dir after revision rev, in order,
	// until ctx ends or the watch fails (compaction, no leader, lost
	// connection): then it closes the channel and the caller lists again.
	Watch(ctx context.Context, dir string, rev int64) <-chan Change
	// Lock takes the lock name for lease, waiting for it unless try is
	// set (then ErrLocked). The lock is released by Held.Release or when
	// the lease ends.
	Lock(ctx context.Context, lease Lease, name string, try bool) (Held, error)
	// Acquire takes one of limit slots of the semaphore name for lease,
	// waiting for one. The slot is released by Held.Release or when the
	// lease ends.
	Acquire(ctx context.Context, lease Lease, name string, limit int) (Held, error)
	// Campaign waits until lease leads the election name, then returns the
	// leadership, which ends with the lease or Resign. Campaigning again
	// with the same lease (a next generation) resumes the leadership.
	Campaign(ctx context.Context, lease Lease, name string) (Leadership, error)
	// Close ends this process's use of the engine: the leases it renews
	// are no longer renewed (nothing is revoked).
	Close() error
}

// Lease is a lease this process keeps alive.
type Lease interface {
	ID() LeaseID
	// Done is closed when this process no longer renews the lease: it
	// ended, or renewal failed for a TTL (etcd unreachable).
	Done() <-chan struct{}
	// Close stops renewing without ending the lease (hand-over to the
	// next generation, which Resumes it).
	Close()
	// Revoke ends the lease now; every key under it goes.
	Revoke(ctx context.Context) error
}

// Held is a lock or semaphore slot.
type Held interface {
	// Release gives it up; a lease that ended already released it.
	Release(ctx context.Context) error
}

// Leadership is the lead of an election.
type Leadership interface {
	// Put writes key only while the leadership holds (else ErrNotLeader).
	Put(ctx context.Context, key string, value []byte) error
	// Lost is closed when the leadership's lease is no longer renewed.
	Lost() <-chan struct{}
	// Resign gives up the lead.
	Resign(ctx context.Context) error
}

// KV is a key (relative to the prefix) and its value.
type KV struct {
	Key   string
	Value []byte
	Lease LeaseID
}

// Change is one change seen by Watch.
type Change struct {
	KV
	Deleted bool
}
