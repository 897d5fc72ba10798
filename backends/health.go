package backends

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

// healthRequest is the health check: GET HealthPath.
func (b *Backend) healthRequest(ctx context.Context) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+b.cfg.HealthPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "baton-health-check")
	return req, nil
}

// restartProbeTimeout bounds the first check while a restart waits for the
// server (later ones get twice as long each, up to health_timeout).
const restartProbeTimeout = 250 * time.Millisecond

func (b *Backend) probeWithin(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := b.healthRequest(ctx)
	if err != nil {
		return err
	}
	resp, err := b.probeT.RoundTrip(req)
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

// sentinelConn is a keep-alive connection to the backend, left idle after
// one request, to watch for the server closing it.
type sentinelConn struct {
	c net.Conn
}

// openSentinel opens a connection, sends one health check on it with
// keep-alive and reads the answer; it returns nil if the server would not
// keep the connection open (then there is nothing to watch).
func (b *Backend) openSentinel(ctx context.Context) *sentinelConn {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.HealthTimeout)
	defer cancel()
	dial := b.dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, "tcp", b.addr)
	if err != nil {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req, err := b.healthRequest(ctx)
	if err != nil {
		c.Close()
		return nil
	}
	br := bufio.NewReader(c)
	if err := req.Write(c); err != nil {
		c.Close()
		return nil
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		return nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.Close || br.Buffered() > 0 {
		c.Close()
		return nil
	}
	_ = c.SetDeadline(time.Time{})
	return &sentinelConn{c: c}
}

// waitClosed waits until the server closes the connection, then closes
// our end.
func (s *sentinelConn) waitClosed(ctx context.Context) error {
	defer s.c.Close()
	stop := context.AfterFunc(ctx, func() { _ = s.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var b [1]byte
	_, err := s.c.Read(b[:])
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		return errors.New("the server sent data on an idle connection")
	}
	return nil // EOF or reset: closed
}

func (s *sentinelConn) close() {
	if s != nil {
		s.c.Close()
	}
}
