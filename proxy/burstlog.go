package proxy

import (
	"log/slog"
	"sync"
	"time"
)

// burstLog logs the first error of a kind and counts the repeats that
// follow within the interval, so a dead backend gives one line every few
// seconds instead of one per request.
type burstLog struct {
	log      *slog.Logger
	interval time.Duration

	mu     sync.Mutex
	bursts map[string]*burst
}

type burst struct {
	logged     time.Time
	suppressed int
}

func newBurstLog(log *slog.Logger, interval time.Duration) *burstLog {
	return &burstLog{log: log, interval: interval, bursts: map[string]*burst{}}
}

func (l *burstLog) note(key string, code int, method, uri string, msg string) {
	now := time.Now()
	l.mu.Lock()
	b := l.bursts[key]
	if b == nil {
		b = &burst{}
		l.bursts[key] = b
	}
	if !b.logged.IsZero() && now.Sub(b.logged) < l.interval {
		b.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := b.suppressed
	b.logged, b.suppressed = now, 0
	if len(l.bursts) > 1000 {
		// Keys are per backend and kind, so this only trims stale bursts.
		for k, v := range l.bursts {
			if now.Sub(v.logged) > l.interval {
				delete(l.bursts, k)
			}
		}
	}
	l.mu.Unlock()
	args := []any{"status", code, "method", method, "uri", uri, "err", msg}
	if suppressed > 0 {
		args = append(args, "similar_since_last_log", suppressed)
	}
	if code < 500 {
		// The client's fault, not baton's nor the backend's.
		l.log.Info("client error", args...)
		return
	}
	l.log.Warn("proxy error", args...)
}
