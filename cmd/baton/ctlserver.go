package main

import (
	"context"
	"os"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/control"
)

// handleControl answers one control request.
func (i *instance) handleControl(ctx context.Context, req control.Request) control.Response {
	switch req.Cmd {
	case control.CmdStatus:
		st := i.status()
		return control.Response{OK: true, Status: &st}
	case control.CmdUpgrade:
		res, err := i.h.Upgrade(ctx)
		if err != nil {
			return control.Errorf("%v", err)
		}
		return control.Response{OK: true, Upgrade: &res}
	case control.CmdStop:
		i.log.Info("stop requested on the control socket")
		i.h.Stop()
		return control.Response{OK: true}
	case control.CmdRestart:
		switch {
		case req.All && req.Backend != "":
			return control.Errorf("restart: give a backend name or all, not both")
		case req.All:
			if !i.restartAll.CompareAndSwap(false, true) {
				return control.Errorf("restart --all is already running")
			}
			defer i.restartAll.Store(false)
			results, err := i.set.RestartAll(ctx)
			if err != nil {
				return control.Response{Error: err.Error(), Restarts: results}
			}
			return control.Response{OK: true, Restarts: results}
		case req.Backend == "":
			return control.Errorf("restart: which backend? (give its name, or all)")
		}
		r, err := i.set.Restart(ctx, req.Backend)
		if err != nil {
			resp := control.Response{Error: err.Error()}
			if r.Backend != "" && !r.At.IsZero() {
				resp.Restarts = []backends.RestartResult{r}
			}
			return resp
		}
		return control.Response{OK: true, Restarts: []backends.RestartResult{r}}
	case control.CmdDrain:
		if req.Backend == "" {
			return control.Errorf("drain: which backend?")
		}
		r, err := i.set.Drain(ctx, req.Backend)
		if err != nil {
			return control.Errorf("%v", err)
		}
		return control.Response{OK: true, Drain: &r}
	case control.CmdUndrain:
		if req.Backend == "" {
			return control.Errorf("undrain: which backend?")
		}
		st, err := i.set.Undrain(req.Backend)
		if err != nil {
			return control.Errorf("%v", err)
		}
		return control.Response{OK: true, Backend: &st}
	case control.CmdReopenLogs:
		// Older generations still draining see the epoch move and
		// reopen within a quarter of a second; this one does it now.
		i.mtab.Load().BumpReopen()
		if i.alog != nil {
			if err := i.alog.Reopen(); err != nil {
				return control.Errorf("reopen-logs: %v", err)
			}
			i.log.Info("access log reopened", "path", i.cfg.AccessLog)
		}
		return control.Response{OK: true}
	case "":
		return control.Errorf("missing \"cmd\" (want status, upgrade, stop, restart, drain, undrain or reopen-logs)")
	default:
		return control.Errorf("unknown command %q (want status, upgrade, stop, restart, drain, undrain or reopen-logs)", req.Cmd)
	}
}

func (i *instance) status() control.Status {
	st := control.Status{
		PID:              os.Getpid(),
		Generation:       i.h.Generation(),
		Version:          versionString(),
		Started:          i.h.Started(),
		UptimeSeconds:    time.Since(i.h.Started()).Seconds(),
		Config:           i.cfg.Path,
		Listeners:        i.listeners(),
		Admin:            i.adminAddr(),
		Engine:           i.cfg.Engine,
		ControlSocket:    i.cfg.ControlSocket,
		Upgrading:        i.h.Upgrading(),
		Draining:         i.h.Draining(),
		LastUpgradeError: i.h.LastUpgradeError(),
		Connections:      i.connections(),
		Proxy:            i.px.Stats(),
		Backends:         i.set.Status(),
		Queued:           i.set.Queued(),
		Generations:      i.mtab.Load().Generations(),
	}
	for _, b := range st.Backends {
		if b.State == "draining" || b.State == "restarting" || b.State == "starting" {
			st.Restarting = append(st.Restarting, b.Name)
		}
	}
	return st
}
