package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/control"
)

const ctlUsage = `usage: baton ctl [--socket PATH | --config FILE] [--json] [--timeout D] [--if-running] CMD [ARGS]

With neither --socket nor --config: the control socket of
/etc/baton/baton.toml if that file exists, else /run/baton/baton.sock.

commands:
  status              process, listeners and backends
  upgrade             start a new baton process from the binary and config on disk;
                      exit 0 once it serves, 1 with the reason if it does not
  stop                drain and stop
  restart NAME        drain NAME, restart it gracefully, readmit it once healthy
  restart --all       the same for every restartable backend, one at a time
  drain NAME          take NAME out of rotation (in-flight requests finish)
  undrain NAME        put NAME back into rotation (once healthy)
  reopen-logs         reopen the access log in every live generation (after logrotate)

ctl waits for the answer up to --timeout; by default 10s for status, 1m for
upgrade, stop, drain and undrain, 2m for restart and 10m for restart --all
(with a configuration, at least the configured upgrade, drain or restart
timeout plus 30s). No answer in time: exit 1 and a message.

--if-running: when no baton runs at the socket (it does not exist, or
nothing accepts on it), exit 0 without a word, for scripts such as
logrotate's postrotate; every other failure still fails.
`

func cmdCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton ctl", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage); fs.PrintDefaults() }
	socket := fs.String("socket", "", "control socket `path`")
	cfgPath := configFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON response")
	timeout := fs.Duration("timeout", 0, "give up waiting after this long (default: by command, see above)")
	ifRunning := fs.Bool("if-running", false, "exit 0 when no baton runs at the socket")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	sock, cfg, where, ok := ctlTarget(*socket, *cfgPath, stderr)
	if !ok {
		return 1
	}
	*socket = sock
	// Flags after the command word are accepted too: ctl restart web1 --json.
	var words []string
	for _, a := range rest {
		if a == "--json" || a == "-json" {
			*asJSON = true
			continue
		}
		words = append(words, a)
	}
	rest = words
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	req := control.Request{Cmd: rest[0]}
	switch req.Cmd {
	case control.CmdRestart, control.CmdDrain, control.CmdUndrain:
		for _, a := range rest[1:] {
			switch {
			case req.Cmd == control.CmdRestart && (a == "--all" || a == "-all" || a == "-a"):
				req.All = true
			case strings.HasPrefix(a, "-"):
				fmt.Fprintf(stderr, "baton ctl %s: unknown flag %s\n", req.Cmd, a)
				return 2
			case req.Backend == "":
				req.Backend = a
			default:
				fmt.Fprintf(stderr, "baton ctl %s: one backend at a time (got %q and %q)\n", req.Cmd, req.Backend, a)
				return 2
			}
		}
		if req.Backend == "" && !req.All {
			fmt.Fprintf(stderr, "baton ctl %s: which backend?\n", req.Cmd)
			return 2
		}
	default:
		if len(rest) > 1 {
			fmt.Fprintf(stderr, "baton ctl %s: unexpected arguments %q\n", req.Cmd, rest[1:])
			return 2
		}
	}
	if *timeout <= 0 {
		*timeout = ctlTimeout(req, cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	resp, err := control.Do(ctx, *socket, req)
	if err != nil {
		if *ifRunning && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) {
			return 0 // no baton: nothing to do
		}
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			fmt.Fprintf(stderr, "baton ctl: no answer from baton at %s within %s (is it stuck? see its log)\n", *socket, *timeout)
			if req.Cmd != control.CmdStatus {
				fmt.Fprintf(stderr, "baton ctl: the %s may still be running: `baton ctl status` shows it; --timeout waits longer\n", req.Cmd)
			}
		} else {
			fmt.Fprintf(stderr, "baton ctl: %v\n", err)
		}
		if where != "" {
			fmt.Fprintf(stderr, "baton ctl: %s is %s; --socket PATH or --config FILE to choose another\n", *socket, where)
		}
		return 1
	}
	if *asJSON {
		b, _ := json.MarshalIndent(resp, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		printResponse(stdout, req, resp)
	}
	if !resp.OK {
		fmt.Fprintf(stderr, "baton ctl %s: %s\n", req.Cmd, resp.Error)
		return 1
	}
	return 0
}

// ctlTarget is the control socket ctl talks to, the configuration it came
// from (nil without one) and, unless --socket named it, where it came
// from, for error messages. With neither --socket nor --config it is the
// socket of defaultConfig if that file exists, else defaultSocket. false:
// it said why there is none.
func ctlTarget(socket, cfgPath string, stderr io.Writer) (string, *config.Config, string, bool) {
	if socket != "" {
		return socket, nil, "", true
	}
	where := ""
	if cfgPath == "" {
		_, err := os.Stat(defaultConfig)
		if errors.Is(err, fs.ErrNotExist) {
			return defaultSocket, nil, "the default socket (" + defaultConfig + " does not exist)", true
		}
		cfgPath = defaultConfig
		where = "control.socket in " + defaultConfig + ", the default configuration"
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "baton ctl: %v\n", err)
		if where != "" {
			fmt.Fprintf(stderr, "baton ctl: (%s is the default configuration; --socket PATH reaches baton without it)\n", cfgPath)
		}
		return "", nil, "", false
	}
	if cfg.ControlSocket == "" {
		fmt.Fprintf(stderr, "baton ctl: %s has no [control] socket\n", cfg.Path)
		return "", nil, "", false
	}
	if where == "" {
		where = "control.socket in " + cfg.Path
	}
	return cfg.ControlSocket, cfg, where, true
}

// How long `baton ctl` waits for an answer when --timeout is not given:
// long enough for the command to finish by baton's own bounds, short
// enough that a person is told soon when baton does not answer at all.
const (
	ctlTimeoutStatus     = 10 * time.Second
	ctlTimeoutCommand    = time.Minute // upgrade, stop, drain, undrain
	ctlTimeoutRestart    = 2 * time.Minute
	ctlTimeoutRestartAll = 10 * time.Minute
	ctlTimeoutMargin     = 30 * time.Second // over a bound from the configuration
)

// ctlTimeout is the default wait for req. With the configuration at hand
// (--config), a command bounded by a longer configured timeout
// (upgrade_timeout, drain_timeout, restart_timeout) gets that bound plus a
// margin.
func ctlTimeout(req control.Request, cfg *config.Config) time.Duration {
	var d, bound time.Duration
	switch {
	case req.Cmd == control.CmdStatus:
		return ctlTimeoutStatus
	case req.Cmd == control.CmdRestart && req.All:
		d = ctlTimeoutRestartAll
		if cfg != nil {
			for _, b := range cfg.Backends {
				if b.Restartable() {
					bound += b.RestartTimeout
				}
			}
		}
	case req.Cmd == control.CmdRestart:
		d = ctlTimeoutRestart
		if cfg != nil {
			for _, b := range cfg.Backends {
				if b.Name == req.Backend {
					bound = b.RestartTimeout
				}
			}
		}
	default:
		d = ctlTimeoutCommand
		if cfg != nil {
			switch req.Cmd {
			case control.CmdUpgrade:
				bound = cfg.Handoff.UpgradeTimeout
			case control.CmdDrain:
				for _, b := range cfg.Backends {
					if b.Name == req.Backend {
						bound = b.DrainTimeout
					}
				}
			}
		}
	}
	if bound > 0 {
		d = max(d, bound+ctlTimeoutMargin)
	}
	return d
}

func printResponse(w io.Writer, req control.Request, r control.Response) {
	switch {
	case r.Status != nil:
		printStatus(w, r.Status)
	case r.Upgrade != nil:
		u := r.Upgrade
		fmt.Fprintf(w, "upgraded: pid %d (generation %d) serves; took %s", u.PID, u.Generation, u.Took.Round(time.Microsecond))
		if u.Waited > time.Millisecond {
			fmt.Fprintf(w, ", of which %s waiting for the previous generation to let go", u.Waited.Round(time.Millisecond))
		}
		if u.Coalesced > 0 {
			fmt.Fprintf(w, "; %d SIGHUP(s) folded in", u.Coalesced)
		}
		fmt.Fprintln(w)
	case len(r.Restarts) > 0:
		for _, res := range r.Restarts {
			printRestart(w, res)
		}
	case r.Drain != nil:
		d := r.Drain
		state := "drained"
		if d.Already {
			state = "already drained"
		}
		fmt.Fprintf(w, "%s %s; waited %s, %d request(s) still in flight\n", d.Backend, state, d.Waited.Round(time.Millisecond), d.InFlight)
	case r.Backend != nil:
		fmt.Fprintf(w, "%s undrained: %s\n", r.Backend.Name, r.Backend.State)
	case r.OK && req.Cmd == control.CmdStop:
		fmt.Fprintln(w, "stopping: draining connections")
	case r.OK && req.Cmd == control.CmdReopenLogs:
		fmt.Fprintln(w, "logs reopened")
	}
}

func printRestart(w io.Writer, r backends.RestartResult) {
	verdict := "restarted"
	if !r.OK {
		verdict = "FAILED to restart"
	}
	fmt.Fprintf(w, "%s %s in %s", verdict, r.Backend, r.Duration.Round(time.Millisecond))
	if r.OldPID != 0 || r.NewPID != 0 {
		fmt.Fprintf(w, " (pid %d -> %d)", r.OldPID, r.NewPID)
	}
	fmt.Fprintln(w)
	for _, s := range r.Steps {
		fmt.Fprintf(w, "  %-8s %10s  %s\n", s.Name, s.Duration.Round(time.Microsecond), s.Detail)
	}
}

func printStatus(w io.Writer, s *control.Status) {
	state := "serving"
	switch {
	case s.Draining:
		state = "draining (replaced or stopping)"
	case s.Upgrading:
		state = "serving, upgrade in progress"
	}
	if len(s.Restarting) > 0 {
		state += "; restarting " + strings.Join(s.Restarting, ", ")
	}
	fmt.Fprintf(w, "baton %s  pid %d  generation %d  up %s\n", s.Version, s.PID, s.Generation,
		(time.Duration(s.UptimeSeconds * float64(time.Second))).Round(time.Second))
	fmt.Fprintf(w, "state      %s\n", state)
	fmt.Fprintf(w, "config     %s\n", s.Config)
	fmt.Fprintf(w, "listen     %s (%d connections)\n", strings.Join(s.Listeners, ", "), s.Connections)
	fmt.Fprintf(w, "control    %s\n", s.ControlSocket)
	if s.Admin != "" {
		fmt.Fprintf(w, "admin      http://%s/\n", s.Admin)
	}
	if len(s.Generations) > 1 {
		var gs []string
		for _, g := range s.Generations {
			gs = append(gs, fmt.Sprintf("%d (pid %d, %s)", g.Generation, g.PID, g.State))
		}
		fmt.Fprintf(w, "processes  %s\n", strings.Join(gs, ", "))
	}
	if s.LastUpgradeError != "" {
		fmt.Fprintf(w, "last upgrade failed: %s\n", s.LastUpgradeError)
	}
	p := s.Proxy
	fmt.Fprintf(w, "held       %d now (%d queued for a backend at its limit or down), %d in all, longest %s, %d gave up; %d retries\n",
		p.Held, s.Queued, p.HeldTotal, p.MaxHold.Round(time.Millisecond), p.HoldTimeouts, p.Retries)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tSTATE\tIN-FLIGHT\tQUEUED\tKIND\tURL\tLAST CHECK\tLAST RESTART")
	for _, b := range s.Backends {
		last := "-"
		if r := b.LastRestart; r != nil {
			last = fmt.Sprintf("ok, %s ago, took %s", time.Since(r.At).Round(time.Second), r.Duration.Round(time.Millisecond))
			if !r.OK {
				last = fmt.Sprintf("FAILED %s ago: %s", time.Since(r.At).Round(time.Second), r.Error)
			}
		}
		st := b.State
		if b.RestartOwner != 0 && b.PhaseSince != nil {
			st = fmt.Sprintf("%s %s (pid %d)", st, time.Since(*b.PhaseSince).Round(time.Millisecond), b.RestartOwner)
		}
		kind := string(b.Kind)
		if b.Restart != "" {
			kind += "/" + string(b.Restart)
		}
		inflight := strconv.FormatInt(b.InFlight, 10)
		if b.MaxConns > 0 {
			inflight += "/" + strconv.Itoa(b.MaxConns)
			if b.Limit < int64(b.MaxConns) {
				inflight += fmt.Sprintf(" (slow start: %d)", b.Limit)
			}
		}
		if b.Backup {
			st += " (backup)"
		}
		check := "-"
		if c := b.LastCheck; c != nil {
			check = fmt.Sprintf("ok %d, %s ago", c.Status, time.Since(c.At).Round(time.Second))
			if !c.OK {
				check = fmt.Sprintf("FAILED %s ago: %s", time.Since(c.At).Round(time.Second), c.Reason)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", b.Name, st, inflight, b.Queued, kind, b.URL, check, last)
	}
	tw.Flush()
}
