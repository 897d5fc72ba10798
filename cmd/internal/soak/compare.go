package soak

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// DefaultSettle bounds the wait, between the two runs of Compare, for
// baton to see every backend up again.
const DefaultSettle = time.Minute

// Compare runs the soak twice: first straight to the servers at direct
// (every target's scheme and host replaced by each of them in turn, events
// done as one would without baton; see EventSpec), then through baton as o
// says. Both are checked before either starts. It returns baton's report
// with the direct run in Direct; directOut, if not nil, gets the direct
// run's results in vegeta's encoding. If ctx ends during the direct run,
// the baton run does not start.
func Compare(ctx context.Context, o Options, direct []string, directOut io.Writer) (*Report, error) {
	d := o
	d.Mode, d.Output = ModeDirect, directOut
	d.UpgradeEvery = 0 // nothing to upgrade without baton
	var err error
	if d.Targets, err = retarget(o.Targets, direct); err != nil {
		return nil, err
	}
	o.Mode = ModeBaton
	if err := Check(ctx, &o); err != nil {
		return nil, err
	}
	d.Restart = o.Restart
	if err := Check(ctx, &d); err != nil {
		return nil, err
	}
	if d.Progress != nil {
		fmt.Fprintf(d.Progress, "1/2: straight to the servers (%s), without baton\n", strings.Join(direct, ", "))
	}
	rd, err := Run(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("soak: direct run: %w", err)
	}
	empty := func() *Report {
		return &Report{Schema: SchemaVersion, Mode: ModeBaton, Start: time.Now(), Interrupted: true, ByKind: map[string]int{},
			Criteria: []Criterion{{Name: "completed", Limit: "yes", Value: "no", Detail: "did not run"}}, Direct: rd}
	}
	if ctx.Err() != nil {
		return empty(), nil
	}
	if o.Socket != "" {
		if err := waitBackendsUp(ctx, o.Socket, DefaultSettle); err != nil {
			rep := empty()
			rep.Interrupted = ctx.Err() != nil
			rep.Criteria[0].Detail = err.Error()
			return rep, nil
		}
	}
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "2/2: through baton\n")
	}
	rb, err := Run(ctx, o)
	if rb != nil {
		rb.Direct = rd
	}
	return rb, err
}

// retarget makes, for every target, one copy per direct base URL (in turn,
// so the load spreads over the servers as baton would spread it).
func retarget(ts []vegeta.Target, direct []string) ([]vegeta.Target, error) {
	if len(direct) == 0 {
		return nil, fmt.Errorf("soak: no direct URL to compare with")
	}
	var bases []*url.URL
	for _, d := range direct {
		u, err := url.Parse(d)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("soak: --compare-direct %q: want http://host:port", d)
		}
		bases = append(bases, u)
	}
	var out []vegeta.Target
	for _, t := range ts {
		for _, b := range bases {
			u, err := url.Parse(t.URL)
			if err != nil {
				return nil, fmt.Errorf("soak: target %q: %w", t.URL, err)
			}
			u.Scheme, u.Host = b.Scheme, b.Host
			c := t
			c.URL = u.String()
			if t.Header != nil {
				c.Header = t.Header.Clone()
			} else {
				c.Header = http.Header{}
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// waitBackendsUp polls baton's status until every backend is up.
func waitBackendsUp(ctx context.Context, socket string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last string
	for {
		bs, err := statusBackends(ctx, socket)
		if err == nil {
			var down []string
			for _, b := range bs {
				if b.State != "up" {
					down = append(down, b.Name+" "+b.State)
				}
			}
			if len(down) == 0 {
				return nil
			}
			last = strings.Join(down, ", ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("soak: after the direct run, baton's backends are not all up after %s: %s", limit, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
