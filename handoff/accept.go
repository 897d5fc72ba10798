package handoff

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Bounds of the pause between failed accepts: net/http's Server.Serve
// waits 5 ms after a temporary error, doubling up to 1 s.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// KeepAccepting wraps ln so that its Accept survives errors that pass: out
// of file descriptors (EMFILE, ENFILE), of memory or buffers (ENOMEM,
// ENOBUFS), a connection aborted before it was accepted, and anything else
// the kernel says about one accept. Accept then waits (5 ms, doubling up to
// 1 s, as net/http's Server.Serve does) and tries again, so an accept loop
// built on it ends only when the listener is closed. Each episode is logged
// twice: when accepting starts to fail and when it works again. net/http
// retries only the errors it deems temporary (not ENOBUFS or ENOMEM); a
// loop of our own retried none.
//
// Closing the returned listener closes ln and ends a pause at once. log
// may be nil; name says which listener it is in the log. A listener
// KeepAccepting returned is returned as it is.
func KeepAccepting(ln net.Listener, log *slog.Logger, name string) net.Listener {
	if k, ok := ln.(*keepAccepting); ok {
		return k // keeps accepting already (a caller's server wraps it again)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &keepAccepting{Listener: ln, log: log, name: name, closedC: make(chan struct{})}
}

type keepAccepting struct {
	net.Listener
	log  *slog.Logger
	name string

	closeOnce sync.Once
	closedC   chan struct{}

	mu      sync.Mutex // the episode; Accept is normally called by one goroutine
	fails   int
	since   time.Time
	backoff time.Duration
}

// Accept waits for the next connection; it fails only once the listener
// is closed.
func (l *keepAccepting) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			l.recovered()
			return c, nil
		}
		select {
		case <-l.closedC:
			return nil, err
		default:
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		t := time.NewTimer(l.failed(err))
		select {
		case <-t.C:
		case <-l.closedC:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// failed records one failed accept and returns how long to wait.
func (l *keepAccepting) failed(err error) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fails == 0 {
		l.since = time.Now()
		l.backoff = acceptBackoffMin
		l.log.Warn("cannot accept connections; retrying until it works", "listener", l.name, "err", err)
	} else {
		l.backoff = min(2*l.backoff, acceptBackoffMax)
	}
	l.fails++
	return l.backoff
}

// recovered ends an episode of failed accepts, if there was one.
func (l *keepAccepting) recovered() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fails == 0 {
		return
	}
	l.log.Info("accepting connections again", "listener", l.name, "failed_accepts", l.fails,
		"for", time.Since(l.since).Round(time.Millisecond))
	l.fails = 0
}

// Close closes the listener and ends a pause between retries.
func (l *keepAccepting) Close() error {
	l.closeOnce.Do(func() { close(l.closedC) })
	return l.Listener.Close()
}
