package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/control"
	"github.com/batonproxy/baton/cmd/internal/metrics"
)

//go:embed status.html
var statusPage []byte

// adminServer serves /metrics, /healthz, /readyz, the status page (/) and
// its data (/status.json) on the admin listener, which survives upgrades
// like the proxy's: after an upgrade only the serving generation answers
// on it (older ones close their copy at once); at a final stop it answers
// until the drain is over, /readyz saying 503.
type adminServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	stopping atomic.Bool // close has closed ln: Serve's accept error is expected

	mu      sync.Mutex
	open    int           // connections accepted and not closed
	closing bool          // close has begun
	emptyC  chan struct{} // closed once closing and no connection is open
	emptied bool
}

// connState counts open connections, so that close can wait for them.
func (a *adminServer) connState(_ net.Conn, st http.ConnState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch st {
	case http.StateNew:
		a.open++
	case http.StateClosed, http.StateHijacked:
		a.open--
	}
	a.checkEmptyLocked()
}

func (a *adminServer) checkEmptyLocked() {
	if a.closing && a.open <= 0 && !a.emptied {
		a.emptied = true
		close(a.emptyC)
	}
}

func (i *instance) startAdmin(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", i.serveMetrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", i.serveReady)
	mux.HandleFunc("GET /status.json", i.serveStatusJSON)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(statusPage)
	})
	a := &adminServer{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second,
			ErrorLog: nil},
		ln: ln, done: make(chan struct{}), emptyC: make(chan struct{}),
	}
	a.srv.ConnState = a.connState
	i.admin = a
	i.bg.Add(1)
	go func() {
		defer i.bg.Done()
		defer close(a.done)
		err := a.srv.Serve(ln)
		// close closes ln itself (see there), so Serve ends with the
		// accept error of a closed listener, not ErrServerClosed.
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !(a.stopping.Load() && errors.Is(err, net.ErrClosed)) {
			i.log.Error("admin listener", "err", err)
		}
	}()
}

// close stops the admin server: it stops accepting and lets requests
// already sent finish (up to two seconds), then closes what is left.
// http.Server.Shutdown would not do: a connection accepted just before
// it, whose request is read after it began, is closed unanswered (a /readyz
// probe during an upgrade saw EOF).
func (a *adminServer) close() {
	a.srv.SetKeepAlivesEnabled(false) // closes idle ones; the rest close after their answer
	a.stopping.Store(true)
	_ = a.ln.Close()
	<-a.done // Serve returned: every accepted connection is counted
	a.mu.Lock()
	a.closing = true
	a.checkEmptyLocked()
	a.mu.Unlock()
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-a.emptyC:
	case <-t.C:
	}
	_ = a.srv.Close()
}

// serveReady answers 200 while baton serves (ready, degraded, holding
// requests for a backend that restarts) and 503 when no backend can take
// requests or a final stop has begun; the body's first word is the
// readiness state, then the reason.
func (i *instance) serveReady(w http.ResponseWriter, r *http.Request) {
	st, detail := readiness(i.h.Stopping(), i.set.Status())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !servesState(st) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(st + ": " + detail + "\n"))
}

func (i *instance) serveMetrics(w http.ResponseWriter, r *http.Request) {
	live := metrics.Live{
		Generation: i.h.Generation(), Version: versionString(), GoVersion: runtime.Version(),
		Started: i.h.Started(), Held: i.px.Stats().Held, Draining: i.h.Draining(),
		Certificates: certificates(i.cfg),
	}
	if p, err := metrics.ReadProcess(); err == nil {
		live.Process = &p
	} else {
		i.log.Debug("process metrics", "err", err)
	}
	for _, st := range i.set.Status() {
		live.Backends = append(live.Backends, metrics.BackendLive{Name: st.Name, State: st.State, InFlight: st.InFlight})
	}
	w.Header().Set("Content-Type", metrics.ContentType)
	_ = i.mtab.Load().Write(w, live)
}

// pageStatus is what the status page shows.
type pageStatus struct {
	control.Status
	Ready        bool                              `json:"ready"`     // what /readyz says
	Readiness    string                            `json:"readiness"` // ready, degraded, holding, not-serving, stopping
	ReadyDetail  string                            `json:"readiness_detail"`
	Rates        *pageRates                        `json:"rates,omitempty"`         // nil until a second of samples
	LastRestarts map[string]backends.RestartResult `json:"last_restarts,omitempty"` // run by this process
	Events       []event                           `json:"events"`
	AccessLog    string                            `json:"access_log,omitempty"`
	Now          time.Time                         `json:"now"`
}

func (i *instance) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	ps := pageStatus{Status: i.status(), Events: i.events.list(), AccessLog: i.cfg.AccessLog, Now: time.Now()}
	ps.Readiness, ps.ReadyDetail = readiness(i.h.Stopping(), ps.Backends)
	ps.Ready = servesState(ps.Readiness)
	ps.Rates = i.rates.over(i.rateSample())
	i.restartsMu.Lock()
	if len(i.lastRestarts) > 0 {
		ps.LastRestarts = make(map[string]backends.RestartResult, len(i.lastRestarts))
		for k, v := range i.lastRestarts {
			ps.LastRestarts[k] = v
		}
	}
	i.restartsMu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(ps)
}

// adminAddr is the admin listener's address, or "".
func (i *instance) adminAddr() string {
	if i.admin == nil {
		return ""
	}
	return i.admin.ln.Addr().String()
}

// rateSample reads the shared request counters.
func (i *instance) rateSample() rateSample {
	req, errs := i.mtab.Load().Totals()
	return rateSample{t: time.Now(), requests: req, errs: errs}
}

// runRates samples the request counters every second for the status
// page's rates, until ctx ends.
func (i *instance) runRates(ctx context.Context) {
	if i.admin == nil {
		return
	}
	i.bg.Add(1)
	go func() {
		defer i.bg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			i.rates.add(i.rateSample())
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}
