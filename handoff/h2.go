package handoff

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// DefaultGoAwayDelay is how long an HTTP/2 connection has between the
// graceful GOAWAY and the final one when the server drains.
const DefaultGoAwayDelay = time.Second

// h2Server serves the HTTP/2 connections that a Server's TLS listener
// negotiates by ALPN, and drains them the way RFC 9113 §6.8 describes:
// first a GOAWAY with the largest stream ID and NO_ERROR (the client stops
// opening streams here and moves to a new connection, which the next
// generation accepts), then, once that has had time to arrive, the final
// GOAWAY naming the last stream the server will process. Streams in flight
// finish; the connection closes when none is left.
//
// http.Server.Shutdown would send the final GOAWAY too, but it also closes
// idle HTTP/1 keep-alive connections at once, which Server avoids; so the
// h2 connections are served by an http2.Server configured on a private
// http.Server that never serves and whose Shutdown reaches only them.
type h2Server struct {
	srv   *http2.Server
	shut  *http.Server // its Shutdown sends the final GOAWAY on every h2 connection
	delay time.Duration

	mu       sync.Mutex
	conns    map[*h2Conn]struct{}
	draining bool
	final    *time.Timer
	wg       sync.WaitGroup // GOAWAY writes waiting for a frame boundary
}

func newH2Server(s *Server) *h2Server {
	h := &h2Server{
		srv: &http2.Server{
			IdleTimeout: orDefault(s.IdleTimeout, DefaultIdleTimeout),
		},
		shut:  &http.Server{},
		delay: orDefault(s.GoAwayDelay, DefaultGoAwayDelay),
		conns: map[*h2Conn]struct{}{},
	}
	// Cannot fail: shut has no TLS configuration of its own.
	_ = http2.ConfigureServer(h.shut, h.srv)
	return h
}

// serve is the http.Server's TLSNextProto["h2"].
func (h *h2Server) serve(hs *http.Server, c *tls.Conn, handler http.Handler) {
	hc := &h2Conn{Conn: c}
	h.mu.Lock()
	h.conns[hc] = struct{}{}
	late := h.draining
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.conns, hc)
		h.mu.Unlock()
	}()
	if late {
		// Its handshake finished after the drain began.
		h.goAway(hc)
		h.finalGoAwayAfter(h.delay)
	}
	var ctx context.Context
	if bc, ok := handler.(interface{ BaseContext() context.Context }); ok {
		ctx = bc.BaseContext() // net/http's per-connection context, as http2.ConfigureServer does
	}
	h.srv.ServeConn(hc, &http2.ServeConnOpts{Context: ctx, BaseConfig: hs, Handler: handler})
}

// drain sends the graceful GOAWAY on every h2 connection and the final one
// after the delay.
func (h *h2Server) drain() {
	h.mu.Lock()
	if h.draining {
		h.mu.Unlock()
		return
	}
	h.draining = true
	conns := make([]*h2Conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		h.goAway(c)
	}
	h.finalGoAwayAfter(h.delay)
}

func (h *h2Server) goAway(c *h2Conn) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		c.inject(gracefulGoAway)
	}()
}

func (h *h2Server) finalGoAwayAfter(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.final != nil && h.final.Stop() {
		h.final.Reset(d)
		return
	}
	h.final = time.AfterFunc(d, func() {
		// Returns at once: shut has no connections of its own; it only
		// runs http2's shutdown hook, which sends the GOAWAYs.
		_ = h.shut.Shutdown(context.Background())
	})
}

// close stops the timer and waits for GOAWAY writes; call it once the
// connections are closed.
func (h *h2Server) close() {
	h.mu.Lock()
	if h.final != nil {
		h.final.Stop()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// gracefulGoAway is a GOAWAY frame with last stream ID 2^31-1 and
// NO_ERROR: "the server is shutting down, open no more streams".
var gracefulGoAway = []byte{
	0, 0, 8, // length
	0x7,        // type GOAWAY
	0,          // flags
	0, 0, 0, 0, // stream 0
	0x7f, 0xff, 0xff, 0xff, // last stream ID
	0, 0, 0, 0, // NO_ERROR
}

// h2Conn is a TLS connection served by http2.Server that can have frames
// written between the server's own. It follows the frame boundaries in
// what the server writes (the server writes frames only, starting with
// SETTINGS) and writes an injected frame only at a boundary.
type h2Conn struct {
	*tls.Conn

	mu      sync.Mutex
	started bool    // the server's SETTINGS frame has been written
	hdr     [9]byte // header of the frame being written
	nhdr    int
	left    int    // payload bytes of that frame not written yet
	pending []byte // to write at the next boundary
}

func (c *h2Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.track(p[:n])
	if err == nil && len(c.pending) > 0 && c.atBoundaryLocked() {
		_, err = c.Conn.Write(c.pending)
		c.pending = nil
	}
	return n, err
}

// inject writes frame now if no frame is half-written, else after the
// one being written. It blocks while the server writes.
func (c *h2Conn) inject(frame []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.atBoundaryLocked() {
		_, _ = c.Conn.Write(frame)
		return
	}
	c.pending = append(slices.Clip(c.pending), frame...)
}

func (c *h2Conn) atBoundaryLocked() bool { return c.started && c.nhdr == 0 && c.left == 0 }

func (c *h2Conn) track(p []byte) {
	for len(p) > 0 {
		if c.left > 0 {
			k := min(c.left, len(p))
			c.left -= k
			p = p[k:]
			continue
		}
		k := copy(c.hdr[c.nhdr:], p)
		c.nhdr += k
		p = p[k:]
		if c.nhdr == len(c.hdr) {
			c.left = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
			c.nhdr = 0
			c.started = true
		}
	}
}

// NetConn is the TCP connection under the TLS one.
func (c *h2Conn) NetConn() net.Conn { return c.Conn.NetConn() }

// serveTLSLocked sets up s.srv for TLS: HTTP/2 through h2Server when the
// configuration offers it, none otherwise (a non-nil TLSNextProto keeps
// net/http from adding its own).
func (s *Server) serveTLSLocked() {
	s.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	if slices.Contains(s.TLSConfig.NextProtos, http2.NextProtoTLS) {
		s.h2 = newH2Server(s)
		s.srv.TLSNextProto[http2.NextProtoTLS] = s.h2.serve
	}
}
