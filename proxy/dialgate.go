package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults applied by DialGate to zero fields.
const (
	DefaultMaxConnecting = 128
	DefaultConnectingFor = 250 * time.Millisecond
)

// DialGate bounds how many new connections to one backend are being opened
// at once; further dials wait their turn, first come first served.
//
// Issue 7: a connection counts as being opened from its dial until the
// backend first answers on it, because connect returns as soon as the
// kernel has queued the connection, before the server accepts it. When
// requests held during a restart were all released at once (1,000 under
// `wrk -c1000`, on a pool the restart had emptied), each dialled a new
// connection at the same moment, the backend's listen backlog (511 for
// Apache) overflowed, the kernel dropped the SYNs, and those requests
// waited for SYN retransmits, 1 s and then 3 s. With at most Max
// connections opening, the rest wait in baton, in order, and get their
// connection as soon as the backend accepts.
//
// A slot is given back when the backend first sends something on the
// connection, when the connection fails or closes, or at the latest
// ConnectingFor after it was made, so that slow responses (a CGI, an
// upload the backend reads slowly) do not keep new connections waiting
// longer than that. It is safe for concurrent use.
type DialGate struct {
	Max           int           // connections opening at once (default DefaultMaxConnecting)
	ConnectingFor time.Duration // a slot is held at most this long after connecting (default DefaultConnectingFor)
	// Dial makes the connection (nil: a net.Dialer with no timeout); its
	// timeout starts once the turn came.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	once    sync.Once
	slots   chan struct{}
	waiting atomic.Int64
	waited  atomic.Int64
}

func (g *DialGate) init() {
	g.once.Do(func() {
		n := g.Max
		if n <= 0 {
			n = DefaultMaxConnecting
		}
		g.slots = make(chan struct{}, n)
	})
}

// DialContext waits for a slot (or for ctx to end) and dials. The returned
// connection gives its slot back as described on DialGate.
func (g *DialGate) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	g.init()
	select {
	case g.slots <- struct{}{}:
	default:
		// Blocked senders on a channel are served in arrival order.
		g.waiting.Add(1)
		g.waited.Add(1)
		select {
		case g.slots <- struct{}{}:
			g.waiting.Add(-1)
		case <-ctx.Done():
			g.waiting.Add(-1)
			// Not a dial error: nothing was tried, and the backend is
			// not to blame.
			return nil, ctx.Err()
		}
	}
	dial := g.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	c, err := dial(ctx, network, addr)
	if err != nil {
		<-g.slots
		return nil, err
	}
	hold := g.ConnectingFor
	if hold <= 0 {
		hold = DefaultConnectingFor
	}
	gc := &gatedConn{Conn: c, slots: g.slots}
	gc.timer = time.AfterFunc(hold, func() { gc.giveBack() })
	return gc, nil
}

// Waiting reports how many dials are waiting for a slot now.
func (g *DialGate) Waiting() int64 { return g.waiting.Load() }

// Waited reports how many dials had to wait for a slot, in all.
func (g *DialGate) Waited() int64 { return g.waited.Load() }

// gatedConn holds a DialGate slot until the backend first answers.
type gatedConn struct {
	net.Conn
	slots    chan struct{}
	timer    *time.Timer
	released atomic.Bool
}

// giveBack returns the slot, once; the timer calls it.
func (c *gatedConn) giveBack() bool {
	if c.released.CompareAndSwap(false, true) {
		<-c.slots
		return true
	}
	return false
}

// release returns the slot and stops the timer; only the connection's
// users call it (the timer may not have been stored when it fires).
func (c *gatedConn) release() {
	if c.giveBack() {
		c.timer.Stop()
	}
}

func (c *gatedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if (n > 0 || err != nil) && !c.released.Load() {
		c.release()
	}
	return n, err
}

func (c *gatedConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// SyscallConn lets Transport peek at an idle connection.
func (c *gatedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// CloseWrite half-closes a connection handed over by a protocol upgrade.
func (c *gatedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
