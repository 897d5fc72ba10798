package backends

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// fastProbeInterval is the health check interval for a down backend while
// requests are held waiting for one.
const fastProbeInterval = 100 * time.Millisecond

// CheckResult is the outcome of a backend's last health check, for status.
type CheckResult struct {
	At     time.Time     `json:"at"`
	OK     bool          `json:"ok"`
	Status int           `json:"status,omitempty"` // the response's code, 0 if none came
	Took   time.Duration `json:"took_ns"`
	Reason string        `json:"reason,omitempty"` // why it failed
}

// probe sends one health check on a new connection: health_method
// health_path with health_host, healthy on a health_status code with
// health_body in the body.
func (b *Backend) probe(ctx context.Context) error {
	return b.probeWithin(ctx, b.cfg.HealthTimeout)
}

// healthRequest is the health check: health_method health_path, with
// health_host as the Host header.
func (b *Backend) healthRequest(ctx context.Context) (*http.Request, error) {
	method := b.cfg.HealthMethod
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+b.addr+b.cfg.HealthPath, nil)
	if err != nil {
		return nil, err
	}
	if b.cfg.HealthHost != "" {
		req.Host = b.cfg.HealthHost
	}
	req.Header.Set("User-Agent", "baton-health-check")
	return req, nil
}

// healthBodyMax bounds how much of a check's body is searched for
// health_body.
const healthBodyMax = 256 << 10

// restartProbeTimeout bounds the first check while a restart waits for the
// server (later ones get twice as long each, up to health_timeout).
const restartProbeTimeout = 250 * time.Millisecond

func (b *Backend) probeWithin(ctx context.Context, timeout time.Duration) error {
	r := b.check(ctx, timeout)
	if r.OK {
		return nil
	}
	return errors.New(r.Reason)
}

// check runs one health check and says how it went.
func (b *Backend) check(ctx context.Context, timeout time.Duration) CheckResult {
	start := time.Now()
	r := CheckResult{At: start}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fail := func(format string, args ...any) CheckResult {
		r.Took, r.Reason = time.Since(start), fmt.Sprintf(format, args...)
		return r
	}
	req, err := b.healthRequest(ctx)
	if err != nil {
		return fail("%v", err)
	}
	resp, err := b.probeT.RoundTrip(req)
	if err != nil {
		return fail("%v", err)
	}
	defer resp.Body.Close()
	r.Status = resp.StatusCode
	ok := b.statusOK
	if ok == nil {
		ok = func(c int) bool { return c >= 200 && c < 400 }
	}
	if !ok(resp.StatusCode) {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return fail("%s %s: status %d", req.Method, b.cfg.HealthPath, resp.StatusCode)
	}
	if b.cfg.HealthBody == "" {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	} else {
		body, err := io.ReadAll(io.LimitReader(resp.Body, healthBodyMax))
		if err != nil {
			return fail("%s %s: reading the body: %v", req.Method, b.cfg.HealthPath, err)
		}
		if !strings.Contains(string(body), b.cfg.HealthBody) {
			return fail("%s %s: status %d but the body lacks %q", req.Method, b.cfg.HealthPath, resp.StatusCode, b.cfg.HealthBody)
		}
	}
	r.OK, r.Took = true, time.Since(start)
	return r
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
		res := b.check(ctx, b.cfg.HealthTimeout)
		if ctx.Err() != nil {
			return
		}
		b.lastCheck.Store(&res)
		var err error
		if !res.OK {
			err = errors.New(res.Reason)
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
