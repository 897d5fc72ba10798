package h2

import (
	"fmt"
)

// Drain begins a graceful shutdown (RFC 9113 §6.8): a GOAWAY naming
// 2^31-1, so the client opens its next streams elsewhere, and a PING;
// once the PING's answer comes (or DrainTimeout passes: Tick), the final
// GOAWAY names the last stream the connection takes. Streams up to it
// finish; later ones are ignored; the connection is Closed when none is
// left. Calling it again does nothing.
func (c *Conn) Drain() {
	if c.closed || c.state != stateActive {
		return
	}
	c.state = stateGraceful
	c.writeGoAway(1<<31-1, codeNo)
	c.drainPingAt = c.stamp()
	copy(c.drainPing[:], "baton:dr")
	c.writePing(false, c.drainPing[:])
}

// Draining reports whether Drain began.
func (c *Conn) Draining() bool { return c.state != stateActive }

// finalGoAway sends the GOAWAY that names the last stream taken.
func (c *Conn) finalGoAway() {
	if c.closed || c.state == stateFinal {
		return
	}
	c.state = stateFinal
	c.writeGoAway(c.maxID, codeNo)
	if len(c.streams) == 0 {
		c.end()
	}
}

// Deadline is when the connection next needs Tick (Clock ns), 0 if
// never: the loop owns the timer. It covers the preface and header
// block bound (ReadHeaderTimeout), the idle bound (IdleTimeout), the
// drain's PING (DrainTimeout), and responses and output that cannot move
// (WriteTimeout).
func (c *Conn) Deadline() int64 {
	if c.closed {
		return 0
	}
	var d int64
	at := func(t int64, after int64) {
		if t == 0 {
			return
		}
		if t += after; d == 0 || t < d {
			d = t
		}
	}
	rh, wt := int64(c.cfg.ReadHeaderTimeout), int64(c.cfg.WriteTimeout)
	if !c.gotSettings {
		at(c.started, rh)
	}
	if c.hb.active {
		at(c.hb.started, rh)
	}
	if len(c.streams) == 0 {
		at(c.idleSince, int64(c.cfg.IdleTimeout))
	}
	if c.state == stateGraceful {
		at(c.drainPingAt, int64(c.cfg.DrainTimeout))
	}
	at(c.outSince, wt)
	for _, s := range c.streams {
		at(s.waitSince, wt)
	}
	return d
}

// Tick applies the timeouts due at now (Clock ns): a connection over its
// header, idle or output bound ends (Closed); a stream whose response
// could not move for WriteTimeout is reset (EventReset, TimedOut); a
// drain's final GOAWAY goes.
func (c *Conn) Tick(now int64) {
	if c.closed {
		return
	}
	rh, wt := int64(c.cfg.ReadHeaderTimeout), int64(c.cfg.WriteTimeout)
	switch {
	case !c.gotSettings && now-c.started >= rh:
		c.timeout("no client preface")
		return
	case c.hb.active && now-c.hb.started >= rh:
		c.timeout("header block not finished")
		return
	case c.outSince != 0 && now-c.outSince >= wt:
		// The client does not read at all: nothing more can be sent.
		c.out, c.outR = c.out[:0], 0
		c.timeout("client reads nothing")
		return
	case len(c.streams) == 0 && c.idleSince != 0 && now-c.idleSince >= int64(c.cfg.IdleTimeout):
		c.writeGoAway(c.maxID, codeNo)
		c.end()
		return
	}
	if c.state == stateGraceful && now-c.drainPingAt >= int64(c.cfg.DrainTimeout) {
		c.finalGoAway()
		if c.closed {
			return
		}
	}
	for i := 0; i < len(c.streams); {
		s := c.streams[i]
		if s.waitSince != 0 && now-s.waitSince >= wt {
			s.timedOut = true
			s.abort(codeInternal, true) // as net/http's server on its WriteTimeout
			continue                    // s left c.streams
		}
		i++
	}
}

// timeout ends the connection for a timeout.
func (c *Conn) timeout(why string) {
	c.err = fmt.Errorf("%w: %s", ErrTimeout, why)
	c.end()
}
