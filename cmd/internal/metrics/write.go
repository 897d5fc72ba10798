package metrics

import (
	"io"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// Live is what the caller samples at scrape time: gauges that describe
// the present rather than count the past.
type Live struct {
	Generation int
	Version    string
	GoVersion  string
	Started    time.Time
	Held       int64 // requests waiting for a backend in this process
	Draining   bool  // this process is stopping
	Backends   []BackendLive
	// Process is the serving process's process_* metrics; nil leaves
	// them out.
	Process *Process
	// Certificates are the certificates the serving process serves.
	Certificates []CertLive
}

// CertLive is one served certificate.
type CertLive struct {
	File     string // the cert_file it was read from
	Subject  string // its subject's common name (or first DNS name)
	NotAfter time.Time
}

// BackendLive is one backend's present state.
type BackendLive struct {
	Name     string
	State    string // up, down, drained, draining, restarting, starting
	InFlight int64  // all generations
}

// BackendStates are the values of baton_backend_state's state label.
var BackendStates = [...]string{"up", "down", "drained", "draining", "restarting", "starting"}

// ContentType is the exposition format's media type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Write renders the table and live in the Prometheus text format.
func (t *Table) Write(w io.Writer, live Live) error {
	b := make([]byte, 0, 32<<10)
	p := &printer{b: b}

	p.help("baton_requests_total", "counter", "Requests proxied, by backend and status class, all generations.")
	for _, n := range t.order {
		s := t.slots[n]
		for c := range s.requests {
			class := "none"
			if c > 0 {
				class = strconv.Itoa(c) + "xx"
			}
			p.sample("baton_requests_total", load(&s.requests[c]), "backend", n, "code", class)
		}
	}
	p.help("baton_requests_terminated_total", "counter", "Requests by how they ended (HAProxy-style termination cause).")
	for i := proxy.TermOK; i <= proxy.TermUpgraded; i++ {
		p.sample("baton_requests_terminated_total", load(&t.g.terms[i]), "cause", i.String())
	}
	p.help("baton_request_bytes_total", "counter", "Request body bytes read from clients, by backend.")
	for _, n := range t.order {
		p.sample("baton_request_bytes_total", load(&t.slots[n].bytesIn), "backend", n)
	}
	p.help("baton_response_bytes_total", "counter", "Response body bytes written to clients, by backend.")
	for _, n := range t.order {
		p.sample("baton_response_bytes_total", load(&t.slots[n].bytesOut), "backend", n)
	}
	p.help("baton_request_duration_seconds", "histogram", "Time from a request's header to the end of its response.")
	p.hist("baton_request_duration_seconds", &t.g.total)
	p.help("baton_upstream_duration_seconds", "histogram", "Time from sending a request to a backend to its response header, by backend.")
	for _, n := range t.order {
		if n != NoBackend {
			p.hist("baton_upstream_duration_seconds", &t.slots[n].upstream, "backend", n)
		}
	}
	p.help("baton_hold_duration_seconds", "histogram", "Time requests were held waiting for a ready backend (held requests only).")
	p.hist("baton_hold_duration_seconds", &t.g.hold)
	p.help("baton_held_requests", "gauge", "Requests waiting for a ready backend now (serving process).")
	p.sample("baton_held_requests", uint64(max(live.Held, 0)))
	p.help("baton_retries_total", "counter", "Requests sent again to a backend, by reason.")
	for i, r := range retryNames {
		p.sample("baton_retries_total", load(&t.g.retries[i]), "reason", r)
	}

	p.help("baton_backend_up", "gauge", "1 if the backend takes requests (healthy, not drained, not restarting).")
	for _, be := range live.Backends {
		p.sample("baton_backend_up", b2u(be.State == "up"), "backend", be.Name)
	}
	p.help("baton_backend_state", "gauge", "1 for the backend's current state.")
	for _, be := range live.Backends {
		for _, st := range BackendStates {
			p.sample("baton_backend_state", b2u(be.State == st), "backend", be.Name, "state", st)
		}
	}
	p.help("baton_backend_in_flight_requests", "gauge", "Requests in flight to the backend, all generations.")
	for _, be := range live.Backends {
		p.sample("baton_backend_in_flight_requests", uint64(max(be.InFlight, 0)), "backend", be.Name)
	}
	p.help("baton_backend_restarts_total", "counter", "Backend restarts, by result.")
	for _, n := range t.order {
		if n == NoBackend {
			continue
		}
		s := t.slots[n]
		p.sample("baton_backend_restarts_total", load(&s.restarts[1]), "backend", n, "result", "ok")
		p.sample("baton_backend_restarts_total", load(&s.restarts[0]), "backend", n, "result", "failed")
	}
	p.help("baton_backend_restart_step_duration_seconds", "histogram", "Duration of each step of backend restarts.")
	for _, n := range t.order {
		if n == NoBackend {
			continue
		}
		for k, sn := range stepNames {
			p.hist("baton_backend_restart_step_duration_seconds", &t.slots[n].steps[k], "backend", n, "step", sn)
		}
	}

	p.help("baton_upgrades_total", "counter", "Self-upgrades, by result.")
	p.sample("baton_upgrades_total", load(&t.g.upgradesOK), "result", "ok")
	p.sample("baton_upgrades_total", load(&t.g.upgradesFailed), "result", "failed")
	p.help("baton_upgrade_duration_seconds", "histogram", "Time from an upgrade request to the new process being ready.")
	p.hist("baton_upgrade_duration_seconds", &t.g.upgradeTook)
	p.help("baton_generation", "gauge", "The serving process's generation (1 at a fresh start, +1 per upgrade).")
	p.sample("baton_generation", uint64(live.Generation))
	gens := t.Generations()
	draining := 0
	for _, g := range gens {
		if g.State == "draining" {
			draining++
		}
	}
	p.help("baton_generations", "gauge", "Live baton processes, by state.")
	p.sample("baton_generations", uint64(len(gens)-draining), "state", "serving")
	p.sample("baton_generations", uint64(draining), "state", "draining")
	p.help("baton_process_start_time_seconds", "gauge", "Start time of the serving process, in unix seconds.")
	p.float("baton_process_start_time_seconds", float64(live.Started.UnixNano())/1e9)
	p.help("baton_build_info", "gauge", "Always 1; the labels say which baton runs.")
	p.sample("baton_build_info", 1, "version", live.Version, "goversion", live.GoVersion)

	p.help("baton_tls_handshakes_total", "counter", "TLS handshakes done, full or resumed (session tickets), both planes, all generations.")
	p.sample("baton_tls_handshakes_total", load(&t.g.tlsHandshakes[0]), "type", "full")
	p.sample("baton_tls_handshakes_total", load(&t.g.tlsHandshakes[1]), "type", "resumed")
	p.help("baton_tls_handshake_failures_total", "counter", "TLS handshakes that failed, by reason, all generations.")
	for i, r := range TLSReasonNames {
		p.sample("baton_tls_handshake_failures_total", load(&t.g.tlsFailures[i]), "reason", r)
	}
	if len(live.Certificates) > 0 {
		p.help("baton_tls_certificate_expiry_seconds", "gauge", "Seconds until the certificate's NotAfter (negative once expired), per certificate served.")
		now := time.Now()
		for _, c := range live.Certificates {
			p.float("baton_tls_certificate_expiry_seconds", c.NotAfter.Sub(now).Seconds(), "cert_file", c.File, "subject", c.Subject)
		}
	}

	if pr := live.Process; pr != nil {
		p.help("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds (serving process).")
		p.float("process_cpu_seconds_total", pr.CPUSeconds)
		p.help("process_resident_memory_bytes", "gauge", "Resident memory size in bytes (serving process).")
		p.sample("process_resident_memory_bytes", pr.RSS)
		p.help("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes (serving process).")
		p.sample("process_virtual_memory_bytes", pr.VMS)
		p.help("process_open_fds", "gauge", "Number of open file descriptors (serving process).")
		p.sample("process_open_fds", pr.OpenFDs)
		p.help("process_max_fds", "gauge", "Maximum number of open file descriptors (serving process).")
		p.sample("process_max_fds", pr.MaxFDs)
		p.help("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds (serving process).")
		p.float("process_start_time_seconds", float64(pr.Start.UnixNano())/1e9)
	}

	p.help("baton_access_log_lines_total", "counter", "Access log lines written.")
	p.sample("baton_access_log_lines_total", load(&t.g.logLines))
	p.help("baton_access_log_dropped_total", "counter", "Access log lines dropped (queue full or write error); requests are never.")
	p.sample("baton_access_log_dropped_total", load(&t.g.logDropped))

	_, err := w.Write(p.b)
	return err
}

func load(p *uint64) uint64 { return atomic.LoadUint64(p) }

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

type printer struct{ b []byte }

func (p *printer) help(name, typ, help string) {
	p.b = append(p.b, "# HELP "...)
	p.b = append(p.b, name...)
	p.b = append(p.b, ' ')
	p.b = append(p.b, help...)
	p.b = append(p.b, "\n# TYPE "...)
	p.b = append(p.b, name...)
	p.b = append(p.b, ' ')
	p.b = append(p.b, typ...)
	p.b = append(p.b, '\n')
}

func (p *printer) labels(kv []string, extraK, extraV string) {
	if len(kv) == 0 && extraK == "" {
		return
	}
	p.b = append(p.b, '{')
	first := true
	put := func(k, v string) {
		if !first {
			p.b = append(p.b, ',')
		}
		first = false
		p.b = append(p.b, k...)
		p.b = append(p.b, `="`...)
		for i := 0; i < len(v); i++ {
			switch c := v[i]; c {
			case '\\':
				p.b = append(p.b, `\\`...)
			case '"':
				p.b = append(p.b, `\"`...)
			case '\n':
				p.b = append(p.b, `\n`...)
			default:
				p.b = append(p.b, c)
			}
		}
		p.b = append(p.b, '"')
	}
	for i := 0; i+1 < len(kv); i += 2 {
		put(kv[i], kv[i+1])
	}
	if extraK != "" {
		put(extraK, extraV)
	}
	p.b = append(p.b, '}')
}

func (p *printer) sample(name string, v uint64, kv ...string) {
	p.b = append(p.b, name...)
	p.labels(kv, "", "")
	p.b = append(p.b, ' ')
	p.b = strconv.AppendUint(p.b, v, 10)
	p.b = append(p.b, '\n')
}

func (p *printer) float(name string, v float64, kv ...string) {
	p.b = append(p.b, name...)
	p.labels(kv, "", "")
	p.b = append(p.b, ' ')
	p.b = strconv.AppendFloat(p.b, v, 'g', -1, 64)
	p.b = append(p.b, '\n')
}

// hist writes a histogram's cumulative buckets, sum and count. Buckets
// are read one by one while others add to them, so the count is taken as
// the sum of the buckets read, which keeps +Inf equal to _count.
func (p *printer) hist(name string, h *hist, kv ...string) {
	var cum uint64
	for i := 0; i <= len(Bounds); i++ {
		cum += load(&h.buckets[i])
		le := "+Inf"
		if i < len(Bounds) {
			le = strconv.FormatFloat(Bounds[i], 'g', -1, 64)
		}
		p.b = append(p.b, name...)
		p.b = append(p.b, "_bucket"...)
		p.labels(kv, "le", le)
		p.b = append(p.b, ' ')
		p.b = strconv.AppendUint(p.b, cum, 10)
		p.b = append(p.b, '\n')
	}
	p.b = append(p.b, name...)
	p.b = append(p.b, "_sum"...)
	p.labels(kv, "", "")
	p.b = append(p.b, ' ')
	sum := float64(load(&h.sum)) / 1e9
	if math.IsNaN(sum) {
		sum = 0
	}
	p.b = strconv.AppendFloat(p.b, sum, 'g', -1, 64)
	p.b = append(p.b, '\n')
	p.b = append(p.b, name...)
	p.b = append(p.b, "_count"...)
	p.labels(kv, "", "")
	p.b = append(p.b, ' ')
	p.b = strconv.AppendUint(p.b, cum, 10)
	p.b = append(p.b, '\n')
}
