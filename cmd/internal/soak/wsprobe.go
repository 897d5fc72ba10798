package soak

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/batonproxy/baton/internal/wstest"
)

// WSProbes is what the long-lived WebSocket probes saw: each keeps a
// WebSocket to an echo endpoint open for the whole soak, sends a numbered
// message and waits for its echo, over and over. A close frame from the
// server ends a connection cleanly (answered, then the probe reconnects);
// anything else that ends one is unexpected.
type WSProbes struct {
	URL        string         `json:"url"`
	Probes     int            `json:"probes"`
	Echoed     int            `json:"echoed"`
	Lost       int            `json:"lost"`       // sent on a connection that stayed open, never echoed
	InFlight   int            `json:"in_flight"`  // sent just before a close frame: ended with the connection
	Closes     map[string]int `json:"closes"`     // close frames received, by code
	Unexpected []string       `json:"unexpected"` // resets, EOF without a close frame, wrong echoes (first 20)
	Reconnects int            `json:"reconnects"`
}

// Failed reports whether a message was lost or a connection ended badly.
func (p *WSProbes) Failed() bool { return p != nil && (p.Lost > 0 || len(p.Unexpected) > 0) }

// wsURL is the WebSocket URL for path on the first target's host.
func wsURL(target, path string) (*url.URL, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	u = &url.URL{Scheme: map[string]string{"https": "wss", "http": "ws"}[u.Scheme], Host: u.Host, Path: path}
	if u.Scheme == "" {
		return nil, fmt.Errorf("soak: WebSocket probes need an http:// or https:// target, not %s", target)
	}
	return u, nil
}

// runWSProbes runs n probes until ctx ends and then closes them (1000).
func runWSProbes(ctx context.Context, u *url.URL, n int, tc *tls.Config) *WSProbes {
	res := &WSProbes{URL: u.String(), Probes: n, Closes: map[string]int{}}
	var mu sync.Mutex
	note := func(f func()) {
		mu.Lock()
		defer mu.Unlock()
		f()
	}
	unexpected := func(format string, args ...any) {
		note(func() {
			if len(res.Unexpected) < 20 {
				res.Unexpected = append(res.Unexpected, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
			}
		})
	}
	dial := func() (net.Conn, error) {
		d := &net.Dialer{Timeout: 5 * time.Second}
		if u.Scheme == "wss" {
			c := tc.Clone()
			if c == nil {
				c = &tls.Config{}
			}
			c.NextProtos = []string{"http/1.1"}
			return tls.DialWithDialer(d, "tcp", u.Host, c)
		}
		return d.Dial("tcp", u.Host)
	}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probe(ctx, i, u, dial, res, note, unexpected)
		}()
	}
	wg.Wait()
	return res
}

// probe is one probe's life: connect, echo until ctx ends or a close
// frame comes (then reconnect), close cleanly at the end.
func probe(ctx context.Context, id int, u *url.URL, dial func() (net.Conn, error), res *WSProbes, note func(func()), unexpected func(string, ...any)) {
	backoff := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
			return true
		}
	}
	for seq, first := 0, true; ctx.Err() == nil; first = false {
		if !first {
			note(func() { res.Reconnects++ })
		}
		conn, err := dial()
		if err != nil {
			unexpected("probe %d: dial: %v", id, err)
			if !backoff() {
				return
			}
			continue
		}
		ws, err := wstest.Client(conn, u.Host, u.Path)
		if err != nil {
			conn.Close()
			unexpected("probe %d: handshake: %v", id, err)
			if !backoff() {
				return
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
		seq = probeConn(ctx, id, seq, ws, res, note, unexpected)
		stop()
		conn.Close()
	}
}

// probeConn echoes on one connection and returns the next sequence number.
func probeConn(ctx context.Context, id, seq int, ws *wstest.Conn, res *WSProbes, note func(func()), unexpected func(string, ...any)) int {
	for {
		if ctx.Err() != nil {
			_ = ws.C.SetDeadline(time.Now().Add(5 * time.Second))
			_ = ws.CloseFrame(1000)
			return seq
		}
		seq++
		msg := fmt.Sprintf("probe %d message %d", id, seq)
		_ = ws.C.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteText(msg); err != nil {
			unexpected("probe %d: send: %v", id, err)
			return seq
		}
		_ = ws.C.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			op, p, err := ws.Read()
			if err != nil {
				if ctx.Err() != nil {
					// Stopped while waiting: not a loss.
					_ = ws.C.SetDeadline(time.Now().Add(2 * time.Second))
					_ = ws.CloseFrame(1000)
					return seq
				}
				note(func() { res.Lost++ })
				unexpected("probe %d: waiting for message %d: %v (no close frame)", id, seq, err)
				return seq
			}
			switch {
			case op == wstest.OpClose:
				code := wstest.CloseCode(p)
				_ = ws.CloseFrame(code)
				_, _, err := ws.Read()
				note(func() {
					res.Closes[fmt.Sprint(code)]++
					res.InFlight++
				})
				if !errors.Is(err, io.EOF) {
					unexpected("probe %d: after close frame %d: %v, want EOF", id, code, err)
				}
				return seq
			case op == wstest.OpText && string(p) == msg:
				note(func() { res.Echoed++ })
			case op == wstest.OpText:
				unexpected("probe %d: sent %q, got %q", id, msg, p)
				return seq
			default:
				continue // ping, pong
			}
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writeWSSummary prints the probes' lines of the summary.
func (p *WSProbes) writeSummary(w io.Writer) {
	if p == nil {
		return
	}
	codes := make([]string, 0, len(p.Closes))
	for c, n := range p.Closes {
		codes = append(codes, fmt.Sprintf("%s×%d", c, n))
	}
	sort.Strings(codes)
	fmt.Fprintf(w, "websockets %d probes on %s: %d echoed, %d lost, %d reconnects, close frames [%s], %d unexpected ends\n",
		p.Probes, p.URL, p.Echoed, p.Lost, p.Reconnects, strings.Join(codes, " "), len(p.Unexpected))
	for _, u := range p.Unexpected {
		fmt.Fprintf(w, "  %s\n", u)
	}
}
