package proxy

import (
	"context"
	"errors"
	"net/http"
)

// ErrNoUpstream is returned by Pool.Pick when no upstream can take a request
// now; the proxy then holds the request and calls Pool.Wait.
var ErrNoUpstream = errors.New("proxy: no backend ready")

// Upstream is one backend server as the proxy sees it. A picked Upstream
// counts the request in flight until Done is called exactly once.
type Upstream interface {
	// Name identifies the upstream in errors and logs.
	Name() string
	// Addr is the host:port requests are sent to.
	Addr() string
	// Transport sends requests to the upstream: over pooled keep-alive
	// connections when replayable, else over a fresh connection that no
	// server can be closing as an idle one.
	Transport(replayable bool) http.RoundTripper
	// Done ends the request's turn; err is what the round trip returned,
	// nil once the response body was read.
	Done(err error)
}

// Pool chooses upstreams. Implementations must be safe for concurrent use.
type Pool interface {
	// Pick returns a ready upstream other than avoid if it can (avoid may be
	// nil), or ErrNoUpstream.
	Pick(avoid Upstream) (Upstream, error)
	// Wait blocks until Pick may succeed again or ctx ends. A Pool may
	// queue waiters in arrival order and keep room for the ones it wakes:
	// a caller that Wait returned nil to calls Pick next (and waits again
	// if that fails), and a request waiting in Wait counts as held.
	Wait(ctx context.Context) error
	// Unavailable says in a few words why no upstream is ready.
	Unavailable() string
}
