package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The idle-connection part of the bench: a fresh instance of each proxy,
// configured to allow the connections, gets -idle-conns client connections
// that each send one GET of small.txt, read the whole response and then
// stay open, idle. The proxy's RSS (summed over its process group) before
// and after, divided by the connections, is its memory per idle keep-alive
// connection. Fresh instances, because a process that has served the
// matrix keeps memory it freed and would reuse it for the connections,
// hiding their cost; and because the limits they need (HAProxy's maxconn,
// nginx's worker_connections) are not the measured configurations'.

const (
	// idleWorkers is how many connections are being opened at a time, and
	// the warm-up's connection count.
	idleWorkers = 32
	// idleOpenTimeout bounds opening all connections, idleRequestTimeout
	// one connection's request and response.
	idleOpenTimeout    = 60 * time.Second
	idleRequestTimeout = 5 * time.Second
	// idleMaxFailures ends opening early: a proxy at a limit fails every
	// connection after it.
	idleMaxFailures = 100
	// idleSample is how many connections, spread evenly, are asked once
	// more at the end, to show they were still alive.
	idleSample = 100
	// idleKeepAlive is the idle timeout of the fresh instances that have
	// one shorter than this by default (HAProxy), so that no proxy closes
	// a connection during the test.
	idleKeepAlive = "65s"
	// rssSettle* bound waiting for the RSS to stop moving.
	rssSettleEvery = 250 * time.Millisecond
	rssSettleMax   = 5 * time.Second
	rssSettleDelta = 256 << 10
)

// Row names of the idle-connection table.
const (
	idleEpoll   = "baton (epoll)"
	idleStdlib  = "baton (stdlib)"
	idleHAProxy = "haproxy"
	idleNginx   = "nginx"
)

// idleRequest is the one request each connection sends, twice for the
// sampled ones.
const idleRequest = "GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: baton-bench-idle\r\n\r\n"

// idleRun is one proxy's idle-connection test.
type idleRun struct {
	setup               string
	opened              int // connections that got their response
	rssBefore, rssAfter int64
	openTook            time.Duration
	sampled, alive      int
	err                 error
}

// perConn is the RSS growth per opened connection, in bytes.
func (r idleRun) perConn() float64 {
	if r.opened == 0 {
		return 0
	}
	return float64(r.rssAfter-r.rssBefore) / float64(r.opened)
}

// idleResults are the idle-connection tests; conns is how many connections
// each proxy was given.
type idleResults struct {
	conns       int
	nofile      uint64 // the RLIMIT_NOFILE the proxies inherited
	nginxNofile int    // nginx's worker_rlimit_nofile
	runs        []idleRun
}

func (r idleResults) failed() bool {
	for _, x := range r.runs {
		if x.err != nil {
			return true
		}
	}
	return false
}

// nofileWanted is the RLIMIT_NOFILE the bench raises its own to for n
// idle connections: HAProxy and nginx size their descriptor needs as
// twice their connection limits (a client and a server socket each);
// nofileNeeded is the least that works: the bench holds n client sockets,
// a proxy n client sockets and a few backend connections.
func nofileWanted(n int) uint64 { return uint64(2*idleLimit(n) + 1024) }
func nofileNeeded(n int) uint64 { return uint64(n + 1024) }

// idleLimit is the connection limit of the HAProxy and nginx instances of
// the idle-connection test: room for the connections, the warm-up's and
// the backend connections.
func idleLimit(n int) int { return n + 1000 }

// raiseNofile raises the bench's RLIMIT_NOFILE, soft and hard, to want, or
// as far as the hard limit goes if raising that is not allowed (it needs
// CAP_SYS_RESOURCE); the servers the bench starts inherit it. It fails if
// the limit stays below need. Go raised the soft limit to the hard one at
// start-up and would give children the original soft limit back; an
// explicit Setrlimit stops that, so children get what is set here.
func raiseNofile(want, need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit(RLIMIT_NOFILE): %w", err)
	}
	if lim.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want, nil
		}
	}
	next := syscall.Rlimit{Cur: min(want, lim.Max), Max: lim.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		return lim.Cur, fmt.Errorf("setrlimit(RLIMIT_NOFILE, %d): %w", next.Cur, err)
	}
	if next.Cur < need {
		return next.Cur, fmt.Errorf("RLIMIT_NOFILE: the hard limit %d is below the %d the idle-connection test needs "+
			"(raise it: ulimit -Hn, as root; or lower -idle-conns)", lim.Max, need)
	}
	return next.Cur, nil
}

// idleTarget is a proxy of the idle-connection test and how to start a
// fresh instance of it.
type idleTarget struct {
	name  string
	start func(port int) (*proc, error)
}

func (b *bench) idleTargets() []idleTarget {
	n := b.opts.idleConns
	return []idleTarget{
		{idleEpoll, func(port int) (*proc, error) {
			return b.startBatonAs(idleEpoll+", idle test", "idle-baton-epoll", nil, port, `engine = "epoll"`)
		}},
		{idleStdlib, func(port int) (*proc, error) {
			return b.startBatonAs(idleStdlib+", idle test", "idle-baton-stdlib", nil, port, `engine = "stdlib"`)
		}},
		{idleHAProxy, func(port int) (*proc, error) { return b.startIdleHAProxy(port, idleLimit(n)) }},
		{idleNginx, func(port int) (*proc, error) {
			return b.startNginxWith("idle-nginx", nginxProxyConf, port, idleLimit(n), b.idleNginxNofile())
		}},
	}
}

// idleNginxNofile is the idle-connection nginx's worker_rlimit_nofile:
// twice its worker_connections, or what the bench's limit allows.
func (b *bench) idleNginxNofile() int { return min(2*idleLimit(b.opts.idleConns), int(b.nofile)) }

// measureIdle runs the idle-connection test on a fresh instance of each
// proxy, one after the other; each instance is stopped before the next
// starts.
func (b *bench) measureIdle(ctx context.Context) idleResults {
	r := idleResults{conns: b.opts.idleConns, nofile: b.nofile, nginxNofile: b.idleNginxNofile()}
	for _, t := range b.idleTargets() {
		if ctx.Err() != nil {
			break
		}
		run := b.idleOne(ctx, t)
		r.runs = append(r.runs, run)
		if run.err != nil {
			b.progress("idle %-16s FAILED: %v", t.name, run.err)
			continue
		}
		b.progress("idle %-16s %d connections in %s: RSS %.1f -> %.1f MB, %.1f KiB/conn, %d of %d sampled alive",
			t.name, run.opened, run.openTook.Round(time.Millisecond), mb(run.rssBefore), mb(run.rssAfter),
			run.perConn()/1024, run.alive, run.sampled)
	}
	return r
}

// idleOne starts t, warms it up, reads its settled RSS, opens the idle
// connections, reads the settled RSS again, asks a sample of them once
// more, and closes them all and stops t.
func (b *bench) idleOne(ctx context.Context, t idleTarget) idleRun {
	run := idleRun{setup: t.name}
	if b.nofileErr != nil {
		run.err = fmt.Errorf("bench: idle %s: %w", t.name, b.nofileErr)
		return run
	}
	p, addr, err := b.startServer(ctx, t.name+" (idle test)", t.start)
	if err != nil {
		run.err = err
		return run
	}
	defer b.stopProc(p)
	pg := p.pgid()

	// Warm-up: the backend connections, buffers and pools the proxy sets
	// up for the first requests are not per-connection costs.
	warm, failed, err := openIdle(ctx, addr, idleWorkers, time.Now().Add(idleOpenTimeout))
	closeAll(warm)
	if failed > 0 {
		run.err = fmt.Errorf("bench: idle %s: warm-up: %d of %d connections failed: %w", t.name, failed, idleWorkers, err)
		return run
	}
	run.rssBefore = settledRSS(ctx, pg)

	started := time.Now()
	conns, failed, err := openIdle(ctx, addr, b.opts.idleConns, started.Add(idleOpenTimeout))
	defer closeAll(conns)
	run.openTook = time.Since(started)
	run.opened = b.opts.idleConns - failed
	if failed > 0 {
		run.err = fmt.Errorf("bench: idle %s: %d of %d connections failed: %w", t.name, failed, b.opts.idleConns, err)
		return run
	}
	run.rssAfter = settledRSS(ctx, pg)
	if p.exited() {
		run.err = fmt.Errorf("bench: idle %s: exited (%v): %s", t.name, p.waitErr, p.logTail())
		return run
	}
	run.sampled, run.alive, err = checkIdle(ctx, conns, idleSample)
	if err != nil {
		run.err = fmt.Errorf("bench: idle %s: %d of %d sampled connections no longer answer: %w", t.name,
			run.sampled-run.alive, run.sampled, err)
	}
	return run
}

// openIdle opens n connections to addr, idleWorkers at a time, each
// sending one request and reading the whole response; all must be done by
// deadline. It returns the connections, nil where one failed, how many
// failed (counting those not tried after idleMaxFailures or ctx's end),
// and the first error.
func openIdle(ctx context.Context, addr string, n int, deadline time.Time) ([]net.Conn, int, error) {
	conns := make([]net.Conn, n)
	var (
		next, failed atomic.Int64
		mu           sync.Mutex
		first        error
		wg           sync.WaitGroup
	)
	fail := func(err error) {
		failed.Add(1)
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	d := net.Dialer{Deadline: deadline}
	for range min(idleWorkers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil || failed.Load() >= idleMaxFailures {
					return
				}
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					fail(fmt.Errorf("connection %d: %w", i, err))
					continue
				}
				if err := exchangeSmall(c, earlier(deadline, time.Now().Add(idleRequestTimeout))); err != nil {
					c.Close()
					fail(fmt.Errorf("connection %d: %w", i, err))
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	missing := 0
	for _, c := range conns {
		if c == nil {
			missing++
		}
	}
	if missing > 0 && first == nil {
		first = fmt.Errorf("not tried: %w", cmpErr(ctx.Err(), errors.New("too many failures")))
	}
	return conns, missing, first
}

// earlier returns the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// cmpErr returns the first non-nil error.
func cmpErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// exchangeSmall sends idleRequest on c and reads the response, which must
// be small.txt with nothing after it, by deadline; c is left without a
// deadline.
func exchangeSmall(c net.Conn, deadline time.Time) error {
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := io.WriteString(c, idleRequest); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || n != int64(files[0].size) {
		return fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
	}
	if resp.Close {
		return errors.New("the proxy closes the connection after the response")
	}
	if br.Buffered() > 0 {
		return fmt.Errorf("%d bytes after the response", br.Buffered())
	}
	return c.SetDeadline(time.Time{})
}

// checkIdle asks up to sample of conns, spread evenly from the first
// opened to the last, once more; it returns how many it asked, how many
// answered, and the first failure.
func checkIdle(ctx context.Context, conns []net.Conn, sample int) (asked, alive int, err error) {
	if len(conns) == 0 {
		return 0, 0, nil
	}
	step := max(len(conns)/sample, 1)
	var errs []error
	for i := 0; i < len(conns) && asked < sample && ctx.Err() == nil; i += step {
		asked++
		if e := exchangeSmall(conns[i], time.Now().Add(idleRequestTimeout)); e != nil {
			errs = append(errs, fmt.Errorf("connection %d: %w", i, e))
			continue
		}
		alive++
	}
	if len(errs) > 0 {
		return asked, alive, errs[0]
	}
	return asked, alive, ctx.Err()
}

// closeAll closes every connection in conns.
func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// settledRSS reads group pg's RSS every rssSettleEvery until two readings
// in a row differ by at most rssSettleDelta, or rssSettleMax passes; it
// returns the last reading.
func settledRSS(ctx context.Context, pg int) int64 {
	deadline := time.Now().Add(rssSettleMax)
	last := groupRSS(pg)
	for time.Now().Before(deadline) {
		if sleepCtx(ctx, rssSettleEvery) != nil {
			break
		}
		v := groupRSS(pg)
		settled := max(v-last, last-v) <= rssSettleDelta
		last = v
		if settled {
			break
		}
	}
	return last
}

// haproxyIdleConf is haproxyConf for the idle-connection test: maxconn
// for the connections in global and defaults (the frontend's own limit);
// no strict-limits, so that HAProxy starts (with a warning) where it
// cannot raise its descriptor limit to the two per connection a proxied
// connection needs, as idle client connections need one; keep-alive
// timeouts as long as the others' defaults; no stats socket (the measured
// HAProxy has that name).
const haproxyIdleConf = `global
	nbthread 1
	maxconn {{.MaxConns}}
	no strict-limits
	pidfile {{.Dir}}/{{.Name}}.pid

defaults
	mode http
	maxconn {{.MaxConns}}
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client ` + idleKeepAlive + `
	timeout server 30s
	timeout http-request 10s
	timeout http-keep-alive ` + idleKeepAlive + `

frontend fe
	bind 127.0.0.1:{{.Port}}
	default_backend be

backend be
	server nginx {{.Backend}}
`

// startIdleHAProxy starts an HAProxy for the idle-connection test that
// accepts maxConns connections.
func (b *bench) startIdleHAProxy(port, maxConns int) (*proc, error) {
	const name = "idle-haproxy"
	d := serverData{Dir: b.dir, Name: name, Backend: b.backendAddr, Port: port, MaxConns: maxConns}
	conf, err := b.writeConfig(name+".cfg", haproxyIdleConf, d)
	if err != nil {
		return nil, err
	}
	return startProc("haproxy (idle test)", b.path(name+".log"), b.tools.haproxy, "-W", "-db", "-f", conf)
}

// renderIdle writes the idle-connection table.
func renderIdle(w *strings.Builder, r idleResults) {
	fmt.Fprintf(w, "## Idle keep-alive connections: memory\n\n")
	fmt.Fprintf(w, "A fresh instance of each proxy (not the one measured above: a process that has served the runs above "+
		"keeps memory it freed and reuses it, which would hide the connections' cost) gets %d client connections, "+
		"%d opened at a time, that each send one `GET /small.txt` over HTTP/1.1, read the whole response and then "+
		"stay open, idle. RSS is summed over the proxy's processes (as for peak RSS above) after %d warm-up "+
		"connections were opened and closed and again once all %d are open and idle, each reading taken when two "+
		"readings %s apart differ by at most %d KiB (at most %s); KiB per connection is the difference divided by "+
		"the connections. Afterwards %d of them, spread evenly from the first opened to the last, send one more "+
		"request and must get the whole response; then all are closed and the instance is stopped. Configurations "+
		"as above except: baton `engine = \"epoll\"` or `engine = \"stdlib\"`, otherwise defaults (no connection "+
		"limit, idle timeout 60 s); HAProxy `maxconn %d` in global and defaults, `no strict-limits` (it "+
		"starts, with a warning, if it cannot raise its descriptor limit to twice maxconn), client and keep-alive "+
		"timeouts %s; nginx `worker_connections %d`, `worker_rlimit_nofile %d`. RLIMIT_NOFILE of the bench and the "+
		"proxies, which inherit it: %d. Kernel socket buffers are not part of RSS.\n\n",
		r.conns, idleWorkers, idleWorkers, r.conns, rssSettleEvery, rssSettleDelta>>10, rssSettleMax, idleSample,
		idleLimit(r.conns), idleKeepAlive, idleLimit(r.conns), r.nginxNofile, r.nofile)
	fmt.Fprintf(w, "| setup | idle connections | RSS before MB | RSS with connections MB | KiB per connection | RSS with connections × HAProxy | KiB per connection × HAProxy | alive at the end (sample) | time to open |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---|---:|\n")
	var ha *idleRun
	for i := range r.runs {
		if r.runs[i].setup == idleHAProxy && r.runs[i].err == nil {
			ha = &r.runs[i]
		}
	}
	for _, x := range r.runs {
		if x.err != nil && x.rssAfter == 0 {
			fmt.Fprintf(w, "| %s | %d | - | - | - | - | - | FAILED: %s | - |\n", x.setup, x.opened, oneLine(x.err))
			continue
		}
		relRSS, relConn := "-", "-"
		if ha != nil {
			relRSS = ratio(float64(x.rssAfter), float64(ha.rssAfter))
			relConn = ratio(x.perConn(), ha.perConn())
		}
		alive := fmt.Sprintf("%d of %d", x.alive, x.sampled)
		if x.err != nil {
			alive += "; FAILED: " + oneLine(x.err)
		}
		fmt.Fprintf(w, "| %s | %d | %.1f | %.1f | %.1f | %s | %s | %s | %.1f s |\n", x.setup, x.opened, mb(x.rssBefore),
			mb(x.rssAfter), x.perConn()/1024, relRSS, relConn, alive, x.openTook.Seconds())
	}
	fmt.Fprintln(w)
}
