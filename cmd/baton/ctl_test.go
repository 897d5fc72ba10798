package main

import (
	"testing"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/cmd/internal/control"
	"github.com/batonproxy/baton/handoff"
)

// TestCtlTimeout: `baton ctl` waits by command (it used to wait 10 minutes
// for anything), longer when the configuration bounds a command by more.
func TestCtlTimeout(t *testing.T) {
	cfg := &config.Config{
		Handoff: handoff.Options{UpgradeTimeout: 5 * time.Minute},
		Backends: []backends.Config{
			{Name: "a", Kind: backends.KindApache, RestartTimeout: 3 * time.Minute, DrainTimeout: 10 * time.Second},
			{Name: "b", Kind: backends.KindLighttpd, RestartTimeout: 5 * time.Minute, DrainTimeout: 2 * time.Minute},
			{Name: "c", Kind: backends.KindNone, RestartTimeout: time.Hour},
		},
	}
	for _, tc := range []struct {
		name string
		req  control.Request
		cfg  *config.Config
		want time.Duration
	}{
		{"status", control.Request{Cmd: control.CmdStatus}, nil, 10 * time.Second},
		{"status with config", control.Request{Cmd: control.CmdStatus}, cfg, 10 * time.Second},
		{"upgrade", control.Request{Cmd: control.CmdUpgrade}, nil, time.Minute},
		{"upgrade, long upgrade_timeout", control.Request{Cmd: control.CmdUpgrade}, cfg, 5*time.Minute + 30*time.Second},
		{"stop", control.Request{Cmd: control.CmdStop}, cfg, time.Minute},
		{"drain", control.Request{Cmd: control.CmdDrain, Backend: "a"}, cfg, time.Minute},
		{"drain, long drain_timeout", control.Request{Cmd: control.CmdDrain, Backend: "b"}, cfg, 2*time.Minute + 30*time.Second},
		{"undrain", control.Request{Cmd: control.CmdUndrain, Backend: "b"}, cfg, time.Minute},
		{"restart", control.Request{Cmd: control.CmdRestart, Backend: "a"}, nil, 2 * time.Minute},
		{"restart, long restart_timeout", control.Request{Cmd: control.CmdRestart, Backend: "a"}, cfg, 3*time.Minute + 30*time.Second},
		{"restart --all", control.Request{Cmd: control.CmdRestart, All: true}, nil, 10 * time.Minute},
		{"restart --all, restartable only", control.Request{Cmd: control.CmdRestart, All: true}, cfg, 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if g, e := ctlTimeout(tc.req, tc.cfg), tc.want; g != e {
				t.Errorf("ctlTimeout = %s, want %s", g, e)
			}
		})
	}
}
