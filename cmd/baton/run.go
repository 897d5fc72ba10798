package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/accesslog"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/control"
	"github.com/batonproxy/baton/cmd/internal/metrics"
	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/proxy"
	"github.com/batonproxy/baton/proxy/epoll"
)

// stateFile is the name under which the backend state table is passed to
// the next generation.
const stateFile = "baton.backends"

func newLogger(w io.Writer, level slog.Level, format string, evts *eventLog) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	if evts != nil {
		h = teeHandler{h: h, evts: evts}
	}
	return slog.New(newUniqueKeys(h)).With("pid", os.Getpid())
}

// server is one listener's data plane: a handoff.Server (net/http) or an
// epoll.Server.
type server interface {
	handoff.Drainer
	Serve(net.Listener) error
	Connections() int
}

// instance is one running baton process: everything cmdRun wires together.
type instance struct {
	cfg     *config.Config
	h       *handoff.Handoff
	log     *slog.Logger
	table   *backends.StateTable
	set     *backends.Set
	px      *proxy.Handler
	servers []server
	tickets *handoff.TicketKeys // TLS session ticket keys; nil without TLS
	ctl     *control.Server
	addrs   []string // actual listen addresses

	mtab   atomic.Pointer[metrics.Table] // shared counters; set in start
	alog   *accesslog.Log                // nil: no access log
	admin  *adminServer                  // nil: no admin listener
	events *eventLog

	restartsMu   sync.Mutex
	lastRestarts map[string]backends.RestartResult // run by this process

	rates rates // for the status page

	cuts drainCuts // requests the drain deadline cut short (observer)

	restartAll atomic.Bool
	bg         sync.WaitGroup // serve loops, health checks, signal handling
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton run", flag.ContinueOnError)
	cfgPath := configFlag(fs)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process to `file` when it exits")
	ok, code := parseFlags(fs, args, stderr)
	if !ok {
		return code
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "baton run: %v\n", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "baton run: %v\n", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if *cfgPath, ok = configOrDefault(*cfgPath, "baton run", stderr); !ok {
		return 2
	}
	cfg, cfgErr := config.Load(*cfgPath)
	level, format := slog.LevelInfo, "text"
	var hopts handoff.Options
	if cfgErr == nil {
		level, format, hopts = cfg.LogLevel, cfg.LogFormat, cfg.Handoff
	}
	if cfgErr == nil && cfg.Threads > 0 {
		// With the epoll engine threads are the event loops, each on a
		// thread of its own; the rest (TLS handshakes, HTTP/2, health
		// checks, logs) needs a thread besides them, or it runs only when
		// a loop waits.
		n := cfg.Threads
		if cfg.Engine == config.EngineEpoll {
			n = max(n+1, runtime.NumCPU())
		}
		runtime.GOMAXPROCS(n)
	}
	inst := &instance{cfg: cfg, events: newEventLog()}
	log := newLogger(stderr, level, format, inst.events)
	hopts.Logger = log
	hopts.OnUpgrade = inst.recordUpgrade
	h, err := handoff.New(hopts)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer h.Close()
	inst.events.gen.Store(int64(h.Generation()))
	log = log.With("generation", h.Generation())
	if cfgErr != nil {
		h.Fail(cfgErr)
		fmt.Fprintf(stderr, "baton run: %v\n", cfgErr)
		return 1
	}
	inst.h, inst.log = h, log
	if err := inst.start(); err != nil {
		h.Fail(err)
		fmt.Fprintf(stderr, "baton run: %v\n", err)
		inst.abort()
		return 1
	}
	if err := h.Ready(); err != nil {
		// The previous generation's upgrade fails with this reason.
		h.Fail(err)
		log.Error("cannot signal readiness", "err", err)
		inst.abort()
		return 1
	}
	inst.mtab.Load().Serving()
	log.Info("serving", "listen", inst.addrs, "backends", len(cfg.Backends), "config", cfg.Path, "version", versionString())
	inst.warnBackends()

	ctx, stopBackground := context.WithCancel(context.Background())
	inst.runBackground(ctx)
	<-h.Exit()
	stopBackground()
	return inst.shutdown()
}

// start builds everything and starts serving; nothing is ready until Ready.
func (i *instance) start() error {
	cfg, h := i.cfg, i.h
	var err error
	if f, ferr := h.File(stateFile); ferr != nil {
		return ferr
	} else if f != nil {
		i.table, err = backends.OpenStateTable(f)
		if err != nil {
			// Issue 21: refusing to start would fail this upgrade and
			// every later one, the serving process passing on the same file.
			i.log.Error("refused the backend state table passed by the previous generation; starting from a new one: every backend starts down until its first passing health check, and the restarts and in-flight counts of the older generations are not seen here",
				"err", err)
			i.table, err = backends.ReplaceStateTable()
		} else {
			logRepairs(i.log, i.table.Repairs())
		}
	} else {
		i.table, err = backends.NewStateTable()
	}
	if err != nil {
		return err
	}
	if err := h.AddFile(stateFile, i.table.File()); err != nil {
		return err
	}
	i.set, err = backends.New(cfg.Backends, i.table, backends.Options{Logger: i.log, RunDir: cfg.RunDir,
		OnRestart: i.recordRestart, BeforeStop: i.closeSwitched, Balance: cfg.Balance})
	if err != nil {
		return err
	}
	names := make([]string, len(cfg.Backends))
	for n, b := range cfg.Backends {
		names[n] = b.Name
	}
	mt, err := openMetrics(h, names, i.log)
	if err != nil {
		return err
	}
	mt.Join(h.Generation(), h.Started())
	i.mtab.Store(mt)
	evr, lost, err := openEvents(h)
	if err != nil {
		return err
	}
	i.events.attach(evr)
	if lost != nil {
		i.log.Warn("the recent events of the previous generation are lost", "err", lost)
	}
	if cfg.AccessLog != "" {
		i.alog, err = accesslog.Open(accesslog.Options{
			Path: cfg.AccessLog, Format: cfg.AccessFormat,
			ReopenEpoch: mt.ReopenEpoch, Written: mt.LogWritten, Dropped: mt.LogDropped,
		})
		if err != nil {
			return &config.Error{File: cfg.Path, Key: "log.access", Err: err}
		}
	}
	pcfg := cfg.Proxy
	pcfg.Logger = i.log
	if i.alog != nil || cfg.Admin.Listen != "" {
		pcfg.Observer = &observer{table: mt, log: i.alog, h: h, gen: h.Generation(), cuts: &i.cuts}
	}
	i.px = proxy.New(i.set, pcfg)
	if cfg.Admin.Listen != "" {
		ln, err := h.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			return &config.Error{File: cfg.Path, Key: "admin.listen", Err: err}
		}
		i.startAdmin(ln)
	}

	errLog := slog.NewLogLogger(i.log.Handler(), slog.LevelDebug)
	for n, addr := range cfg.Listen {
		ln, err := h.Listen("tcp", addr)
		if err != nil {
			return &config.Error{File: cfg.Path, Key: fmt.Sprintf("proxy.listen[%d]", n), Err: err}
		}
		i.serve(i.newServer(nil, errLog), ln)
	}
	if err := i.startTLS(errLog); err != nil {
		return err
	}
	if cfg.ControlSocket != "" {
		ln, err := h.Listen("unix", cfg.ControlSocket)
		if err != nil {
			return &config.Error{File: cfg.Path, Key: "control.socket", Err: err}
		}
		i.ctl = &control.Server{Handler: i.handleControl, Logger: i.log, ReadTimeout: cfg.ControlTimeout}
		i.bg.Add(1)
		go func() {
			defer i.bg.Done()
			if err := i.ctl.Serve(ln); err != nil {
				i.log.Error("control socket", "err", err)
			}
		}()
	}
	return nil
}

// serve runs srv on ln until it drains; the instance waits for it.
func (i *instance) serve(srv server, ln net.Listener) {
	i.servers = append(i.servers, srv)
	addr := ln.Addr().String()
	i.addrs = append(i.addrs, addr)
	i.bg.Add(1)
	go func() {
		defer i.bg.Done()
		if err := srv.Serve(ln); err != nil {
			i.log.Error("serve", "addr", addr, "err", err)
		}
	}()
}

// newServer is the server of one listener: the configured engine's, for
// TLS when tc is set. The epoll plane hands what its loops do not serve
// (HTTP/2, TLS 1.2, WebSockets, ...) to a handoff.Server, so both planes
// drain those alike.
func (i *instance) newServer(tc *tls.Config, errLog *log.Logger) server {
	cfg := i.cfg
	hs := &handoff.Server{
		Handler:           i.px,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		LongDrainTimeout:  cfg.Server.LongDrainTimeout,
		ErrorLog:          errLog,
		Logger:            i.log,
		TLSConfig:         tc,
	}
	// Both planes hand handoff.Server TLS connections whose handshake
	// has begun (handshakeListener) or is done (the epoll TLS front).
	hs.TLSTerminated = tc != nil
	if cfg.Engine != config.EngineEpoll {
		return hs
	}
	return &epoll.Server{
		Handler:           i.px,
		Loops:             cfg.Threads,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		MaxConns:          cfg.Server.MaxConns,
		ErrorLog:          errLog,
		Logger:            i.log,
		TLSConfig:         tc,
		Fallback:          hs,
		OnHandshake:       i.observeHandshake,
	}
}

// abort undoes a start that failed before Ready.
func (i *instance) abort() {
	for _, s := range i.servers {
		s.StopAccepting()
	}
	if i.ctl != nil {
		i.ctl.StopAccepting()
	}
	if i.admin != nil {
		i.admin.close()
	}
	if i.alog != nil {
		i.alog.Close()
	}
	if t := i.mtab.Load(); t != nil {
		t.Leave()
	}
	i.h.Stop()
}

// warnBackends points out backends whose restart would fail right now; a
// backend that is not up yet is no reason not to serve.
func (i *instance) warnBackends() {
	for _, b := range i.set.Backends() {
		if err := b.Precheck(); err != nil && b.Config().Restartable() {
			i.log.Warn("backend cannot be restarted at the moment", "backend", b.Name(), "err", err)
		}
	}
}

// runBackground starts health checks and signal handling until ctx ends.
func (i *instance) runBackground(ctx context.Context) {
	i.runTickets(ctx)
	i.runRates(ctx)
	i.bg.Add(2)
	go func() {
		defer i.bg.Done()
		i.set.Run(ctx)
	}()
	go func() {
		defer i.bg.Done()
		sigC := make(chan os.Signal, 1)
		signal.Notify(sigC, syscall.SIGUSR1)
		defer signal.Stop(sigC)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sigC:
				i.startRestartAll("SIGUSR1")
			}
		}
	}()
}

// startRestartAll runs `restart --all` in the background, once at a time.
func (i *instance) startRestartAll(by string) {
	if !i.restartAll.CompareAndSwap(false, true) {
		i.log.Warn("restart of all backends already running; ignored", "by", by)
		return
	}
	i.bg.Add(1)
	go func() {
		defer i.bg.Done()
		defer i.restartAll.Store(false)
		i.log.Info("restarting all backends, one at a time", "by", by)
		results, err := i.set.RestartAll(context.Background())
		if err != nil {
			i.log.Error("restart of all backends failed", "err", err)
			return
		}
		i.log.Info("restarted all backends", "count", len(results))
	}()
}

// shutdown drains after Exit: stop accepting, let the next generation go,
// finish connections up to drain_timeout, finish owned backend restarts,
// and exit 0.
func (i *instance) shutdown() int {
	mt := i.mtab.Load()
	mt.Draining()
	final := i.h.Stopping()
	if i.admin != nil && !final {
		// Replaced: the new generation answers on the admin listener.
		i.admin.close()
	}
	if final && i.cfg.Admin.StopDelay > 0 {
		// /readyz says 503 already; keep serving while the balancer in
		// front notices.
		i.log.Info("stopping: still accepting while /readyz says 503", "stop_delay", i.cfg.Admin.StopDelay)
		t := time.NewTimer(i.cfg.Admin.StopDelay)
		<-t.C
	}
	drainers := make([]handoff.Drainer, 0, len(i.servers)+1)
	for _, s := range i.servers {
		drainers = append(drainers, s)
	}
	if i.ctl != nil {
		drainers = append(drainers, i.ctl)
	}
	// At the drain deadline, before the servers close what is left: note
	// it (so that the observer counts the requests cut from then on) and
	// how many requests are in flight.
	var once sync.Once
	var inFlight atomic.Int64
	inFlight.Store(-1)
	at := func() {
		i.cuts.deadline.Store(true)
		inFlight.Store(i.inFlight())
	}
	for k, d := range drainers {
		drainers[k] = deadlineWatch{Drainer: d, once: &once, at: at}
	}
	t := time.Now()
	stopWatch := i.watchStops()
	err := i.h.Shutdown(drainers...)
	stopWatch()
	if inFlight.Load() > 0 {
		// The net/http plane's handlers see their connection closed
		// after Drain returns: let them end their requests (observed,
		// and in the access log) before counting.
		i.settleRequests(2 * time.Second)
	}
	var errs []error
	var me *multierror.Error
	if errors.As(err, &me) {
		errs = me.Errors
	} else if err != nil {
		errs = []error{err}
	}
	for _, e := range errs {
		if !onlyDeadline(e) {
			i.log.Warn("drain", "err", e)
			continue
		}
		switch cut, n := i.cuts.n.Load(), inFlight.Load(); {
		case i.px.Observing() && cut > 0:
			i.log.Warn("drain", "err", e, "requests_cut", cut)
		case !i.px.Observing() && n > 0:
			// How they ended is not known: each may have been a stream
			// that ended by itself before long_drain_timeout.
			i.log.Warn("drain", "err", e, "requests_in_flight_at_deadline", n)
		default:
			// Issue 16: an upgrade keeps idle keep-alive connections
			// until the deadline by design (closing one races with a
			// request the client may be sending), and a long-lived
			// response that ended by itself before long_drain_timeout
			// was not cut: that is no warning.
			i.log.Info("drain deadline: closed connections with no request in flight", "err", e)
		}
	}
	i.log.Info("connections drained", "took", time.Since(t).Round(time.Millisecond))
	if err := i.set.WaitRestarts(context.Background()); err != nil {
		i.log.Warn("waiting for backend restarts", "err", err)
	}
	i.set.Close()
	if i.alog != nil {
		i.alog.Close() // after the drain: lines of requests it finished included
	}
	if i.admin != nil && final {
		i.admin.close()
	}
	i.bg.Wait()
	mt.Leave()
	i.log.Info("exiting")
	return 0
}

// listeners reports the addresses served.
func (i *instance) listeners() []string { return i.addrs }

func (i *instance) connections() int {
	n := 0
	for _, s := range i.servers {
		n += s.Connections()
	}
	return n
}

// inFlight is the number of requests in flight in this process: at a
// backend or held for one.
func (i *instance) inFlight() int64 {
	n := i.px.Stats().Held
	for _, st := range i.set.Status() {
		n += st.InFlightHere
	}
	return n
}

// settleRequests waits, at most d, until no request is in flight in this
// process.
func (i *instance) settleRequests(d time.Duration) {
	deadline := time.Now().Add(d)
	for i.inFlight() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// deadlineWatch is a handoff.Drainer that, when the drain deadline
// comes, calls at (once for all the drainers sharing once) before d
// closes what is left.
type deadlineWatch struct {
	handoff.Drainer
	once *sync.Once
	at   func()
}

func (w deadlineWatch) Drain(ctx context.Context) error {
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		w.once.Do(w.at)
		cancel()
	})
	defer stop()
	return w.Drainer.Drain(inner)
}

// CloseIdle passes a final stop's CloseIdle on (handoff.Shutdown looks
// for it).
func (w deadlineWatch) CloseIdle() {
	if c, ok := w.Drainer.(interface{ CloseIdle() }); ok {
		c.CloseIdle()
	}
}

// onlyDeadline reports whether err is only drain deadline errors (of
// either plane): connections closed at the deadline.
func onlyDeadline(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if e != nil && !onlyDeadline(e) {
				return false
			}
		}
		return true
	}
	var hd *handoff.DeadlineError
	var ed *epoll.DeadlineError
	return errors.As(err, &hd) || errors.As(err, &ed)
}
