package backends

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/batonproxy/baton/proxy"
)

var _ proxy.Upstream = (*Backend)(nil)

// Backend is one configured server: its shared state, its connection pools
// and its passive failure count. It is safe for concurrent use.
type Backend struct {
	cfg   Config
	facts ServerFacts
	addr  string
	slot  *stateSlot
	set   *Set

	pooled *proxy.Transport // keep-alive, for replayable requests
	fresh  *http.Transport  // one connection per request, for the rest
	probeT *http.Transport  // health checks: fresh, but past the gate
	gate   *proxy.DialGate  // bounds connections being opened (pooled and fresh)
	// dial makes connections to the server for baton's own use (the
	// restart sentinel); with the PROXY protocol it sends the header.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	inflight  atomic.Int64 // this process's share of slot.inflight
	gen       *genEntry    // this generation's entry in slot; nil: global count only
	fails     atomic.Int64 // consecutive failures, active or passive
	seenEpoch atomic.Uint64
	lastErr   atomic.Pointer[string] // last health or connection error, for status
	kickC     chan struct{}          // asks the health loop for a check now
	statusOK  func(int) bool         // health_status
	passive   atomic.Int64           // consecutive 5xx answers or failed round trips (passive_fails)
	coolUntil atomic.Int64           // unix nanos: health checks do not readmit before (passive cool-down)
	served    atomic.Uint64          // requests this process sent to it
	turns     atomic.Uint64          // round-robin turns seen during a slow start
	lastCheck atomic.Pointer[CheckResult]
}

func newBackend(cfg Config, slot *stateSlot, set *Set) *Backend {
	addr, _ := hostPort(cfg.URL) // validated
	facts := servers[cfg.Kind]
	if cfg.MaxConns > 0 && cfg.MaxIdleConns > cfg.MaxConns {
		// why: idle keep-alive connections count against lighttpd's
		// server.max-connections; more than max_conns are never needed.
		cfg.MaxIdleConns = cfg.MaxConns
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if cfg.ProxyProtocol != "" {
		dial = ppDialer(cfg.ProxyProtocol, dial)
	}
	gate := &proxy.DialGate{Max: cfg.MaxConnecting, Dial: dial}
	std := &http.Transport{
		DialContext:            gate.DialContext,
		MaxIdleConns:           0, // no global cap; per host below
		MaxIdleConnsPerHost:    cfg.MaxIdleConns,
		IdleConnTimeout:        cfg.IdleConnTimeout,
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout:  proxy.DefaultExpectContinueTimeout,
		DisableCompression:     true, // pass Accept-Encoding through untouched
		WriteBufferSize:        16 << 10,
		ReadBufferSize:         16 << 10,
		MaxResponseHeaderBytes: int64(cfg.MaxResponseHeaderBytes),
	}
	pooled := &proxy.Transport{
		Addr: addr, MaxIdle: cfg.MaxIdleConns, IdleTimeout: cfg.IdleConnTimeout,
		DialTimeout: cfg.DialTimeout, ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ReadTimeout: cfg.ReadTimeout, MaxResponseHeaderBytes: cfg.MaxResponseHeaderBytes,
		DialContext: gate.DialContext,
		Fallback:    std, // upgrades (WebSocket) keep net/http's handling, and no read timeout
	}
	fresh := std.Clone()
	fresh.DisableKeepAlives = true
	fresh.DialContext = proxy.ReadTimeoutDialer(gate.DialContext, cfg.ReadTimeout)
	// Health checks do not queue behind requests: a check that waited its
	// turn behind a burst could fail and mark a healthy backend down.
	probeT := fresh.Clone()
	probeT.DialContext = proxy.ReadTimeoutDialer(dial, cfg.ReadTimeout)
	b := &Backend{cfg: cfg, facts: facts, addr: addr, slot: slot, set: set, pooled: pooled, fresh: fresh, probeT: probeT,
		gate: gate, dial: dial, kickC: make(chan struct{}, 1), statusOK: statusMatcher(cfg.HealthStatus)}
	b.seenEpoch.Store(atomic.LoadUint64(&slot.epoch))
	return b
}

// Name is the backend's configured name.
func (b *Backend) Name() string { return b.cfg.Name }

// Addr is the host:port requests go to.
func (b *Backend) Addr() string { return b.addr }

// Config is the backend's normalized configuration.
func (b *Backend) Config() Config { return b.cfg }

// Transport returns the pooled transport for replayable requests and a
// fresh-connection one for the others. A backend that is sent the PROXY
// protocol gets a fresh connection per request: the header names one
// client, so the connection must not carry another's requests.
func (b *Backend) Transport(replayable bool) http.RoundTripper {
	var rt http.RoundTripper = b.fresh
	switch {
	case b.cfg.ProxyProtocol != "":
		rt = ppTransport{b.fresh}
	case replayable:
		rt = b.pooled
	}
	if b.cfg.PassiveFails > 0 {
		return passiveRT{b, rt}
	}
	return rt
}

// passiveRT watches the answers for passive detection: passive_fails
// consecutive 5xx answers or failed round trips take the backend out for
// passive_cooldown.
type passiveRT struct {
	b  *Backend
	rt http.RoundTripper
}

func (p passiveRT) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := p.rt.RoundTrip(req)
	switch {
	case err == nil:
		p.b.Answered(resp.StatusCode, nil)
	case req.Context().Err() == nil:
		p.b.Answered(0, err)
	}
	return resp, err
}

var _ proxy.PassiveUpstream = (*Backend)(nil)

// Answered counts an attempt's outcome for passive detection when
// passive_fails is set: a 5xx status or an error (other than a
// cancellation) counts against the backend, any other status clears the
// count. Both data planes call it (proxy.PassiveUpstream).
func (b *Backend) Answered(status int, err error) {
	if b.cfg.PassiveFails <= 0 {
		return
	}
	switch {
	case err != nil:
		if !errors.Is(err, context.Canceled) {
			b.notePassive("request: " + err.Error())
		}
	case status >= 500:
		b.notePassive(fmt.Sprintf("request: status %d", status))
	default:
		b.passive.Store(0)
	}
}

// notePassive counts a failed request and takes the backend out for its
// cool-down once passive_fails were seen in a row.
func (b *Backend) notePassive(msg string) {
	if b.passive.Add(1) < int64(b.cfg.PassiveFails) {
		return
	}
	b.passive.Store(0)
	until := time.Now().Add(b.cfg.PassiveCooldown)
	b.coolUntil.Store(until.UnixNano())
	msg = fmt.Sprintf("%s (%d in a row; out for %s)", msg, b.cfg.PassiveFails, b.cfg.PassiveCooldown)
	b.lastErr.Store(&msg)
	if old, new := b.slot.update(func(w stateWord) stateWord { return w.with(bitDown, true) }); old != new {
		b.set.warnf("backend taken out by passive detection", "backend", b.cfg.Name, "after", b.cfg.PassiveFails, "reason", msg, "cooldown", b.cfg.PassiveCooldown)
	}
}

// Done releases the request's in-flight count and records a connection
// failure or success for passive health.
func (b *Backend) Done(err error) {
	b.release()
	b.set.dispatch()
	if err == nil {
		b.fails.Store(0)
		return
	}
	// A dial cut short because the client went away says nothing about
	// the backend.
	if isDialError(err) && !errors.Is(err, context.Canceled) {
		b.noteFailure(err, "connection")
	}
}

// acquire counts a request in flight and reports whether the backend is
// still routable after counting it. Counting first and checking second is
// what makes a drain safe: a drainer sets the phase and then waits for the
// count to reach zero, so either the drainer sees this request or this
// request sees the phase. It is what makes max_conns hold across
// generations too: of two processes counting the last free place at
// once, at least one sees the count over the limit and takes it back.
func (b *Backend) acquire(now time.Time) bool {
	b.inflight.Add(1)
	// The global count goes up first and down last: a reclaimer subtracts
	// what the entry holds from the global count, so if this process dies
	// between the two, the entry holds less than it added there (a count
	// kept too long, costing a drain_timeout), never more (a drain that
	// ends under a request).
	atomic.AddInt64(&b.slot.inflight, 1)
	if b.gen != nil {
		atomic.AddInt64(&b.gen.count, 1)
	}
	if !b.slot.load().routable() {
		b.release()
		return false
	}
	if lim := b.limit(now); lim > 0 && atomic.LoadInt64(&b.slot.inflight) > lim {
		b.release()
		return false
	}
	return true
}

func (b *Backend) release() {
	b.inflight.Add(-1)
	if b.gen != nil {
		atomic.AddInt64(&b.gen.count, -1)
	}
	atomic.AddInt64(&b.slot.inflight, -1)
}

// noteFailure counts a failure and marks the backend down once MaxFails
// consecutive failures were seen.
func (b *Backend) noteFailure(err error, what string) {
	msg := what + ": " + err.Error()
	b.lastErr.Store(&msg)
	if b.fails.Add(1) < int64(b.cfg.MaxFails) {
		return
	}
	if old, new := b.slot.update(func(w stateWord) stateWord { return w.with(bitDown, true) }); old != new {
		b.set.logf("backend down", "backend", b.cfg.Name, "after", b.fails.Load(), "reason", msg)
		b.set.kickHealth(b)
	}
}

// noteHealthy records a passing health check and readmits a backend that
// was down, unless a restart owns it.
func (b *Backend) noteHealthy() {
	b.fails.Store(0)
	if time.Now().UnixNano() < b.coolUntil.Load() {
		return // passive cool-down
	}
	old, new := b.slot.update(func(w stateWord) stateWord {
		if w.phase() != PhaseNone {
			return w // the restart decides when it is back
		}
		return w.with(bitDown, false)
	})
	if old != new {
		b.set.logf("backend up", "backend", b.cfg.Name)
		b.set.wake()
	}
}

// globalInflight is the number of requests in flight to the backend from
// every live baton generation. It first takes out the counts of
// generations that died (see reclaim).
func (b *Backend) globalInflight() int64 {
	for _, r := range b.slot.reclaim(b.set.gen, b.set.alive) {
		// A generation that exited cleanly leaves its entry at zero: only
		// one that died with requests counted is worth a warning.
		if r.count != 0 {
			b.set.warnf("dropped the in-flight count of a dead baton generation", "backend", b.cfg.Name, "dead_pid", r.pid, "requests", r.count)
		}
	}
	return atomic.LoadInt64(&b.slot.inflight)
}

// dropIdleEverywhere advances b's epoch in the shared table, so every baton
// generation closes its idle pooled connections to b (watchEpochs), and
// closes this process's at once. A restart does it: those connections
// would be stale after the server restarts, and an idle one keeps one of
// Apache's old children busy through a graceful restart.
func (b *Backend) dropIdleEverywhere() {
	atomic.AddUint64(&b.slot.epoch, 1)
	b.pooled.CloseIdleConnections()
}

// syncEpoch closes this process's idle pooled connections to b if b's
// epoch moved since it last looked.
func (b *Backend) syncEpoch() {
	if e := atomic.LoadUint64(&b.slot.epoch); e != b.seenEpoch.Load() {
		b.seenEpoch.Store(e)
		b.pooled.CloseIdleConnections()
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

var _ proxy.ConnUpstream = (*Backend)(nil)

// Options are the backend's connection settings, for a data plane that
// makes its own connections.
func (b *Backend) Options() proxy.UpstreamOptions {
	return proxy.UpstreamOptions{
		MaxIdle: b.cfg.MaxIdleConns, IdleTimeout: b.cfg.IdleConnTimeout, DialTimeout: b.cfg.DialTimeout,
		ResponseHeaderTimeout: b.cfg.ResponseHeaderTimeout, ReadTimeout: b.cfg.ReadTimeout,
		MaxResponseHeaderBytes: b.cfg.MaxResponseHeaderBytes, ExpectContinueTimeout: proxy.DefaultExpectContinueTimeout,
	}
}

// Epoch moves when a restart of the backend begins (dropIdleEverywhere):
// pooled connections made before must be closed.
func (b *Backend) Epoch() uint64 { return atomic.LoadUint64(&b.slot.epoch) }
