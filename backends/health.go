package backends

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// fastProbeInterval is the health check interval for a down backend while
// requests are held waiting for one.
const fastProbeInterval = 100 * time.Millisecond

// probe sends one health check on a new connection: GET HealthPath, healthy
// on 2xx or 3xx.
func (b *Backend) probe(ctx context.Context) error {
	return b.probeWithin(ctx, b.cfg.HealthTimeout)
}

// restartProbeTimeout bounds the first check while a restart waits for the
// server (later ones get twice as long each, up to health_timeout).
const restartProbeTimeout = 250 * time.Millisecond

func (b *Backend) probeWithin(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+b.cfg.HealthPath, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "baton-health-check")
	resp, err := b.fresh.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: status %d", b.cfg.HealthPath, resp.StatusCode)
	}
	return nil
}

// healthLoop checks b every HealthInterval, and every fastProbeInterval
// while it is down and requests are held. It marks b down after MaxFails
// consecutive failures and up after one success, except while a restart
// owns b.
func (s *Set) healthLoop(ctx context.Context, b *Backend) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-b.kickC:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		err := b.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		s.adoptOrphan(b)
		if err == nil {
			b.noteHealthy()
		} else if b.slot.load().phase() == PhaseNone {
			b.noteFailure(err, "health check")
		}
		next := b.cfg.HealthInterval
		if b.slot.load().down() && s.waiters.Load() > 0 && fastProbeInterval < next {
			next = fastProbeInterval
		}
		timer.Reset(next)
	}
}

// kickHealth asks b's health loop for a check now.
func (s *Set) kickHealth(b *Backend) {
	select {
	case b.kickC <- struct{}{}:
	default:
	}
}
