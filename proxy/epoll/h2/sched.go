package h2

// Scheduling of response DATA. Streams write into the one output buffer
// directly (a copy from the loop's backend buffer, none in between);
// what bounds them:
//   - the client's windows, the connection's and the stream's;
//   - the output room: MaxOutput less what waits to be written;
//   - a fair share of it: while several responses send bodies, each
//     takes at most MaxOutput/n (a frame at least) between two flushes.
//
// A stream that could not place all it was offered waits in FIFO order;
// when room, window or share come back, the waiting streams that can send
// get EventWritable in that order, and one that is still short goes to the
// back: round-robin, one flush cycle at a time.

// room is how many output bytes s may take now.
func (c *Conn) room(s *Stream) int {
	r := c.cfg.MaxOutput - c.pending()
	if r <= 0 || c.nactive <= 1 {
		return r
	}
	share := max(int(c.peerMaxFrame), c.cfg.MaxOutput/c.nactive)
	if s.cycle != c.cycle {
		s.cycle, s.cycleBytes = c.cycle, 0
	}
	return min(r, share-s.cycleBytes)
}

// took counts output taken by s in this cycle.
func (c *Conn) took(s *Stream, n int) {
	if s.cycle != c.cycle {
		s.cycle, s.cycleBytes = c.cycle, 0
	}
	s.cycleBytes += n
}

func (c *Conn) canSend(s *Stream) bool {
	return s.sendWin > 0 && c.sendWin > 0 && c.room(s) > 0
}

// wait queues s until it can send.
func (c *Conn) wait(s *Stream) {
	if s.waitSince == 0 {
		s.waitSince = c.stamp()
	}
	if s.waiting {
		return
	}
	s.waiting = true
	s.wprev, s.wnext = c.waitTail, nil
	if c.waitTail == nil {
		c.waitHead = s
	} else {
		c.waitTail.wnext = s
	}
	c.waitTail = s
}

func (c *Conn) unwait(s *Stream) {
	if !s.waiting {
		return
	}
	if s.wprev == nil {
		c.waitHead = s.wnext
	} else {
		s.wprev.wnext = s.wnext
	}
	if s.wnext == nil {
		c.waitTail = s.wprev
	} else {
		s.wnext.wprev = s.wprev
	}
	s.wprev, s.wnext, s.waiting = nil, nil, false
}

// wakeWriters tells the waiting streams that can send now, in order.
func (c *Conn) wakeWriters() {
	for s := c.waitHead; s != nil; {
		next := s.wnext
		if c.canSend(s) {
			c.unwait(s)
			s.event(EventWritable)
		}
		s = next
	}
}

// wakeAll is wakeWriters after a window grew.
func (c *Conn) wakeAll() { c.wakeWriters() }

// wake tells s, if it waits, that it can send.
func (s *Stream) wake() {
	if s.waiting && s.c.canSend(s) {
		s.c.unwait(s)
		s.event(EventWritable)
	}
}
