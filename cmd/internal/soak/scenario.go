package soak

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Scenario is a soak described in a TOML file (`baton soak --scenario`):
// load shape, targets, timed events, pass criteria. It is decoded
// strictly: an unknown key is an error naming it. Relative paths are
// relative to the file.
type Scenario struct {
	Path    string   // the file it came from
	Options Options  // ready for Run, but for Backends (from baton's configuration)
	Socket  string   // [baton] socket
	Config  string   // [baton] config: baton's configuration file
	Direct  []string // [compare] direct: the servers' URLs, for a run without baton first
}

type scenarioFile struct {
	TargetsFile string `toml:"targets_file"`
	Baton       struct {
		Socket string `toml:"socket"`
		Config string `toml:"config"`
	} `toml:"baton"`
	Load struct {
		Rate       *int   `toml:"rate"`
		RampTo     int    `toml:"ramp_to"`
		Workers    int    `toml:"workers"`
		MaxWorkers int    `toml:"max_workers"`
		Duration   string `toml:"duration"`
		Timeout    string `toml:"timeout"`
	} `toml:"load"`
	Targets []struct {
		URL      string            `toml:"url"`
		Method   string            `toml:"method"`
		Headers  map[string]string `toml:"headers"`
		Body     string            `toml:"body"`
		BodyFile string            `toml:"body_file"`
		Weight   int               `toml:"weight"`
	} `toml:"target"`
	Events []struct {
		At         string   `toml:"at"`
		Kind       string   `toml:"kind"`
		Backend    string   `toml:"backend"`
		Command    []string `toml:"command"`
		StartAfter string   `toml:"start_after"`
		PIDFile    string   `toml:"pid_file"`
		Timeout    string   `toml:"timeout"`
	} `toml:"event"`
	Pass struct {
		MaxFailed *int   `toml:"max_failed"`
		MaxP99    string `toml:"max_p99"`
		MaxHold   string `toml:"max_hold"`
	} `toml:"pass"`
	Compare struct {
		Direct []string `toml:"direct"`
	} `toml:"compare"`
}

// LoadScenario reads and checks a scenario file. Errors read
// "FILE: KEY: reason".
func LoadScenario(path string) (*Scenario, error) {
	var f scenarioFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("%s: %s: unknown key", path, und[0])
	}
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	errAt := func(key, format string, args ...any) error {
		return fmt.Errorf("%s: %s: %s", path, key, fmt.Sprintf(format, args...))
	}
	dur := func(key, s string, dst *time.Duration) error {
		if s == "" {
			return nil
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return errAt(key, "%q is not a duration (want e.g. \"10s\", \"500ms\")", s)
		}
		*dst = d
		return nil
	}

	sc := &Scenario{Path: path, Socket: rel(f.Baton.Socket), Config: rel(f.Baton.Config), Direct: f.Compare.Direct}
	o := &sc.Options
	o.Rate = DefaultRate
	if f.Load.Rate != nil {
		o.Rate = *f.Load.Rate
	}
	o.RampTo, o.Workers, o.MaxWorkers = f.Load.RampTo, f.Load.Workers, f.Load.MaxWorkers
	switch {
	case o.Rate < 0:
		return nil, errAt("load.rate", "must not be negative (0: as fast as the workers go)")
	case o.RampTo < 0:
		return nil, errAt("load.ramp_to", "must not be negative")
	case o.RampTo > 0 && o.Rate == 0:
		return nil, errAt("load.ramp_to", "a ramp starts at load.rate, which must be above 0")
	case o.Workers < 0:
		return nil, errAt("load.workers", "must not be negative")
	case o.MaxWorkers < 0:
		return nil, errAt("load.max_workers", "must not be negative")
	}
	if err := dur("load.duration", f.Load.Duration, &o.Duration); err != nil {
		return nil, err
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if err := dur("load.timeout", f.Load.Timeout, &o.Timeout); err != nil {
		return nil, err
	}

	if f.TargetsFile != "" {
		file, err := os.Open(rel(f.TargetsFile))
		if err != nil {
			return nil, errAt("targets_file", "%v", err)
		}
		ts, err := vegeta.ReadAllTargets(vegeta.NewHTTPTargeter(file, nil, http.Header{}))
		file.Close()
		if err != nil {
			return nil, errAt("targets_file", "%v", err)
		}
		o.Targets = append(o.Targets, ts...)
	}
	for i, t := range f.Targets {
		key := func(k string) string { return fmt.Sprintf("target[%d].%s", i, k) }
		u, err := url.Parse(t.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errAt(key("url"), "%q: want http://host:port/path", t.URL)
		}
		vt := vegeta.Target{Method: strings.ToUpper(t.Method), URL: t.URL, Header: http.Header{}}
		if vt.Method == "" {
			vt.Method = http.MethodGet
		}
		for k, v := range t.Headers {
			vt.Header.Add(k, v)
		}
		switch {
		case t.Body != "" && t.BodyFile != "":
			return nil, errAt(key("body_file"), "give body or body_file, not both")
		case t.BodyFile != "":
			if vt.Body, err = os.ReadFile(rel(t.BodyFile)); err != nil {
				return nil, errAt(key("body_file"), "%v", err)
			}
		case t.Body != "":
			vt.Body = []byte(t.Body)
		}
		if t.Weight < 0 || t.Weight > 1000 {
			return nil, errAt(key("weight"), "want 1 to 1000, got %d", t.Weight)
		}
		for range max(t.Weight, 1) {
			c := vt
			c.Header, c.Body = vt.Header.Clone(), bytes.Clone(vt.Body)
			o.Targets = append(o.Targets, c)
		}
	}
	if len(o.Targets) == 0 {
		return nil, errAt("target", "no [[target]] and no targets_file")
	}

	for i, e := range f.Events {
		key := func(k string) string { return fmt.Sprintf("event[%d].%s", i, k) }
		spec := EventSpec{Kind: e.Kind, Backend: e.Backend, Command: e.Command, PIDFile: rel(e.PIDFile)}
		if e.At == "" {
			return nil, errAt(key("at"), "missing (e.g. at = \"2s\")")
		}
		if err := dur(key("at"), e.At, &spec.At); err != nil {
			return nil, err
		}
		if !slices.Contains(EventKinds, e.Kind) {
			return nil, errAt(key("kind"), "unknown kind %q (want one of %s)", e.Kind, strings.Join(EventKinds, ", "))
		}
		if spec.At >= o.Duration {
			return nil, errAt(key("at"), "%s is past the load's duration %s", spec.At, o.Duration)
		}
		if err := dur(key("start_after"), e.StartAfter, &spec.StartAfter); err != nil {
			return nil, err
		}
		if err := dur(key("timeout"), e.Timeout, &spec.Timeout); err != nil {
			return nil, err
		}
		o.Events = append(o.Events, spec)
	}

	if f.Pass.MaxFailed != nil {
		if *f.Pass.MaxFailed < 0 {
			return nil, errAt("pass.max_failed", "must not be negative")
		}
		o.Pass.MaxFailed = *f.Pass.MaxFailed
	}
	if err := dur("pass.max_p99", f.Pass.MaxP99, &o.Pass.MaxP99); err != nil {
		return nil, err
	}
	if err := dur("pass.max_hold", f.Pass.MaxHold, &o.Pass.MaxHold); err != nil {
		return nil, err
	}
	for i, d := range sc.Direct {
		if u, err := url.Parse(d); err != nil || u.Scheme == "" || u.Host == "" {
			return nil, errAt(fmt.Sprintf("compare.direct[%d]", i), "%q: want http://host:port", d)
		}
	}
	return sc, nil
}
