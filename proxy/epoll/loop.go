package epoll

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/batonproxy/baton/proxy"
)

// Commands posted to a loop (bits, so several coalesce into one wake-up).
const (
	cmdStopAccepting uint32 = 1 << iota
	cmdCloseIdle
	cmdExit
	cmdPoolReady
)

const (
	evRead  = unix.EPOLLIN | unix.EPOLLRDHUP
	evConn  = uint32(unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP) | unix.EPOLLET
	maxWait = 256
	// acceptPause is how long accepting pauses when the process is out of
	// file descriptors or at MaxConns (sooner if one of this loop's
	// connections closes).
	acceptPause = 50 * time.Millisecond
	// epochInterval is how often a loop with idle backend connections
	// looks for backends whose restart began (their epoch moved).
	epochInterval = 10 * time.Millisecond
	smallBuf      = 8 << 10  // client reads, outgoing requests, held responses
	bigBuf        = 32 << 10 // backend reads: a 16 KiB response in one read
)

// pollable is anything registered in a loop's epoll set.
type pollable interface {
	handle(ev uint32)
}

// timed is anything with a deadline in a loop's timer heap.
type timed interface {
	tm() *timer
	expire(now int64)
}

// timer is a deadline (loop time, ns; 0: none) and the earliest one queued
// in the heap for it. Moving a deadline later queues nothing: the queued
// entry fires early and is queued again for the new deadline.
type timer struct {
	deadline int64
	queued   int64
}

type timerEntry struct {
	at int64
	t  timed
}

// loop is one event loop: an epoll set, a thread, its connections.
type loop struct {
	s     *Server
	h     *proxy.Handler
	pool  proxy.Pool
	cfg   proxy.Config
	epfd  int
	evfd  int
	lnfd  int // -1 once accepting stopped
	excl  bool
	base  time.Time
	now   int64
	objs  []pollable // by fd
	seqs  []int32    // by fd: registration number, against stale events
	seq   int32
	heap  []timerEntry
	pools map[proxy.Upstream]*bpool
	nidle int // idle backend connections in pools
	epoch int64
	addrs map[string]unix.Sockaddr

	small, big [][]byte // free buffers

	cmds     atomic.Uint32
	evmu     sync.Mutex // orders posts against closing evfd; guards adoptQ
	evclosed bool
	adoptQ   []adoption // TLS connections handed in by the front

	acceptPaused bool
	resumeAt     int64
	stopAccept   bool
	closeIdle    bool

	held       []*conn
	nheld      int
	waiting    bool // a waiter goroutine is in Pool.Wait
	waitCancel context.CancelFunc
	waitWG     sync.WaitGroup

	nconns int // client connections of this loop

	date    []byte // the Date header's value, for this second
	dateSec int64
}

// appendDate appends a Date header line (net/http sends one on every
// response; the loop does on its own error answers).
func (l *loop) appendDate(b []byte) []byte {
	if now := time.Now(); now.Unix() != l.dateSec || l.date == nil {
		l.dateSec = now.Unix()
		l.date = now.UTC().AppendFormat(l.date[:0], http.TimeFormat)
	}
	b = append(b, "Date: "...)
	b = append(b, l.date...)
	return append(b, crlf...)
}

func newLoop(s *Server, ln net.Listener, exclusive bool) (*loop, error) {
	l := &loop{s: s, h: s.Handler, pool: s.Handler.Pool(), cfg: s.Handler.Config(), epfd: -1, evfd: -1, lnfd: -1,
		excl: exclusive, base: time.Now(), pools: map[proxy.Upstream]*bpool{}, addrs: map[string]unix.Sockaddr{}}
	var err error
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, errors.Join(errors.New("epoll: epoll_create"), err)
	}
	if l.evfd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		l.closeFds()
		return nil, errors.Join(errors.New("epoll: eventfd"), err)
	}
	if err = l.register(l.evfd, eventfd{l}, uint32(unix.EPOLLIN)); err != nil {
		l.closeFds()
		return nil, err
	}
	if ln == nil {
		return l, nil // a TLS front hands connections in
	}
	if l.lnfd, err = dupListener(ln); err != nil {
		l.closeFds()
		return nil, err
	}
	if err = l.listen(); err != nil {
		l.closeFds()
		return nil, err
	}
	return l, nil
}

// listen (re)registers the listener, level-triggered, exclusively when
// several loops share it (one wakes per connection, not all).
func (l *loop) listen() error {
	ev := uint32(unix.EPOLLIN)
	if l.excl {
		ev |= unix.EPOLLEXCLUSIVE
	}
	return l.register(l.lnfd, listener{l}, ev)
}

func (l *loop) closeFds() {
	for _, fd := range []*int{&l.lnfd, &l.epfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	l.evmu.Lock()
	if l.evfd >= 0 {
		unix.Close(l.evfd)
		l.evfd = -1
	}
	l.evclosed = true
	l.evmu.Unlock()
}

// post asks the loop to run cmd; it does not block.
func (l *loop) post(cmd uint32) {
	l.cmds.Or(cmd)
	l.evmu.Lock()
	defer l.evmu.Unlock()
	if l.evclosed {
		return
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(l.evfd, one[:])
}

func (l *loop) register(fd int, p pollable, events uint32) error {
	if fd >= len(l.objs) {
		n := max(fd+1, 2*len(l.objs), 64)
		objs := make([]pollable, n)
		copy(objs, l.objs)
		seqs := make([]int32, n)
		copy(seqs, l.seqs)
		l.objs, l.seqs = objs, seqs
	}
	l.seq++
	l.objs[fd], l.seqs[fd] = p, l.seq
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: l.seq}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.objs[fd] = nil
		return errors.Join(errors.New("epoll: epoll_ctl"), err)
	}
	return nil
}

// forget drops fd from the table; closing it removes it from the set.
func (l *loop) forget(fd int) {
	if fd >= 0 && fd < len(l.objs) {
		l.objs[fd] = nil
	}
}

func (l *loop) clock() int64 {
	l.now = int64(time.Since(l.base))
	return l.now
}

// run is the loop; it returns after cmdExit, having closed everything.
func (l *loop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var events [maxWait]unix.EpollEvent
	for {
		// Busy, the next events are usually there already: take them
		// without the scheduler's system-call bookkeeping; else wait.
		n := sysEpollPoll(l.epfd, events[:])
		if n == 0 {
			var err error
			n, err = unix.EpollWait(l.epfd, events[:], l.waitMillis())
			if err != nil && err != unix.EINTR {
				// Cannot happen with valid arguments; do not spin.
				time.Sleep(time.Millisecond)
			}
		}
		l.clock()
		for i := 0; i < n; i++ {
			ev := &events[i]
			fd := int(ev.Fd)
			if fd < len(l.objs) && l.objs[fd] != nil && l.seqs[fd] == ev.Pad {
				l.objs[fd].handle(ev.Events)
			}
		}
		l.runTimers()
		if l.acceptPaused && l.resumeAt != 0 && l.now >= l.resumeAt {
			l.resumeAccept()
		}
		if l.nidle > 0 && l.now >= l.epoch {
			l.checkEpochs()
		}
		if c := l.cmds.Swap(0); c != 0 {
			if l.command(c) {
				return
			}
		}
	}
}

// waitMillis is epoll_wait's timeout: until the next deadline.
func (l *loop) waitMillis() int {
	next := int64(-1)
	if len(l.heap) > 0 {
		next = l.heap[0].at
	}
	if l.acceptPaused && l.resumeAt != 0 && (next < 0 || l.resumeAt < next) {
		next = l.resumeAt
	}
	if l.nidle > 0 && (next < 0 || l.epoch < next) {
		next = l.epoch
	}
	if next < 0 {
		return -1
	}
	d := next - l.clock()
	if d <= 0 {
		return 0
	}
	return int((d + int64(time.Millisecond) - 1) / int64(time.Millisecond))
}

func (l *loop) command(c uint32) (exit bool) {
	if c&cmdPoolReady != 0 {
		l.poolReady()
	}
	if c&cmdAdopt != 0 {
		l.takeAdopted()
	}
	if c&cmdStopAccepting != 0 && !l.stopAccept {
		l.stopAccept = true
		if l.lnfd >= 0 {
			l.forget(l.lnfd)
			unix.Close(l.lnfd)
			l.lnfd = -1
		}
	}
	if c&cmdCloseIdle != 0 {
		l.closeIdle = true
		for _, p := range l.objs {
			if c, ok := p.(*conn); ok && c.idle() {
				c.close()
			}
		}
	}
	if c&cmdExit != 0 {
		l.exit()
		return true
	}
	return false
}

// exit closes every connection (the drain deadline, or nothing was left)
// and the loop's descriptors.
func (l *loop) exit() {
	for _, p := range l.objs {
		if c, ok := p.(*conn); ok {
			c.close()
		}
	}
	for _, p := range l.pools {
		for len(p.idle) > 0 {
			p.idle[len(p.idle)-1].close()
		}
	}
	if l.waitCancel != nil {
		l.waitCancel()
	}
	l.waitWG.Wait()
	l.closeFds()
	l.dropAdopted()
}

// schedule sets t's deadline (0: none).
func (l *loop) schedule(t timed, at int64) {
	tm := t.tm()
	tm.deadline = at
	if at == 0 || tm.queued != 0 && tm.queued <= at {
		return
	}
	tm.queued = at
	l.push(timerEntry{at, t})
}

func (l *loop) runTimers() {
	for len(l.heap) > 0 && l.heap[0].at <= l.now {
		e := l.pop()
		tm := e.t.tm()
		if e.at != tm.queued {
			continue // superseded by an earlier entry
		}
		tm.queued = 0
		switch {
		case tm.deadline == 0:
		case tm.deadline > l.now:
			tm.queued = tm.deadline
			l.push(timerEntry{tm.deadline, e.t})
		default:
			tm.deadline = 0
			e.t.expire(l.now)
		}
	}
}

func (l *loop) push(e timerEntry) {
	h := append(l.heap, e)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if h[p].at <= h[i].at {
			break
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
	l.heap = h
}

func (l *loop) pop() timerEntry {
	h := l.heap
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h[n] = timerEntry{}
	h = h[:n]
	i := 0
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if c+1 < n && h[c+1].at < h[c].at {
			c++
		}
		if h[i].at <= h[c].at {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	l.heap = h
	return top
}

func (l *loop) getSmall() []byte {
	if n := len(l.small); n > 0 {
		b := l.small[n-1]
		l.small = l.small[:n-1]
		return b[:cap(b)]
	}
	return make([]byte, smallBuf)
}

func (l *loop) putSmall(b []byte) {
	if cap(b) == smallBuf && len(l.small) < 1024 {
		l.small = append(l.small, b[:0])
	}
}

func (l *loop) getBig() []byte {
	if n := len(l.big); n > 0 {
		b := l.big[n-1]
		l.big = l.big[:n-1]
		return b[:cap(b)]
	}
	return make([]byte, bigBuf)
}

func (l *loop) putBig(b []byte) {
	if cap(b) == bigBuf && len(l.big) < 256 {
		l.big = append(l.big, b[:0])
	}
}

// eventfd wakes the loop for posted commands.
type eventfd struct{ l *loop }

func (e eventfd) handle(uint32) {
	var b [8]byte
	_, _ = unix.Read(e.l.evfd, b[:])
}

// listener accepts connections.
type listener struct{ l *loop }

func (a listener) handle(uint32) { a.l.accept() }

func (l *loop) accept() {
	for i := 0; i < 64 && l.lnfd >= 0 && !l.acceptPaused; i++ {
		if m := l.s.MaxConns; m > 0 && l.s.conns.Load() >= int64(m) {
			l.pauseAccept()
			return
		}
		fd, sa, err := unix.Accept4(l.lnfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch err {
			case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
				if err == unix.EAGAIN {
					return
				}
				continue
			}
			// EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits in
			// the backlog; pause rather than spin on it.
			l.pauseAccept()
			return
		}
		l.s.conns.Add(1)
		l.nconns++
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &conn{l: l, fd: fd, sa: sa, first: true, idleTimed: true}
		if err := l.register(fd, c, evConn); err != nil {
			unix.Close(fd)
			l.nconns--
			l.s.connClosed()
			continue
		}
		l.schedule(c, l.now+int64(l.s.ReadHeaderTimeout))
	}
}

func (l *loop) pauseAccept() {
	if l.acceptPaused || l.lnfd < 0 {
		return
	}
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, l.lnfd, nil)
	l.forget(l.lnfd)
	l.acceptPaused = true
	l.resumeAt = l.clock() + int64(acceptPause)
}

func (l *loop) resumeAccept() {
	if !l.acceptPaused {
		return
	}
	l.acceptPaused, l.resumeAt = false, 0
	if l.lnfd >= 0 && !l.stopAccept {
		if err := l.listen(); err != nil {
			l.acceptPaused, l.resumeAt = true, l.clock()+int64(acceptPause)
		}
	}
}

// connGone notes that one of this loop's client connections closed.
func (l *loop) connGone() {
	l.nconns--
	l.s.connClosed()
	if l.acceptPaused {
		l.resumeAccept()
	}
}

// hold parks c's request until the pool may have an upstream again, up to
// the hold deadline; one goroutine per loop waits in Pool.Wait.
func (l *loop) hold(c *conn) {
	x := &c.x
	now := time.Now()
	if x.holdUntil.IsZero() {
		x.holdUntil = now.Add(l.cfg.HoldTimeout)
	}
	if now.After(x.holdUntil) {
		l.endHold(c, true)
		c.fail(l.h.HoldTimeoutError(x.lastErr, x.lastUp))
		return
	}
	if x.holdStart.IsZero() {
		// Counted once per request, however often it wakes and waits
		// again (max_conns reached again by others).
		start, err := l.h.BeginHold()
		if err != nil {
			c.fail(err)
			return
		}
		x.holdStart = start
	}
	c.state = stHeld
	l.held = append(l.held, c)
	l.nheld++
	l.schedule(c, l.now+int64(x.holdUntil.Sub(now)))
	if !l.waiting {
		l.waiting = true
		ctx, cancel := context.WithCancel(context.Background())
		l.waitCancel = cancel
		l.waitWG.Add(1)
		go func() {
			defer l.waitWG.Done()
			_ = l.pool.Wait(ctx)
			cancel()
			l.post(cmdPoolReady)
		}()
	}
}

// unhold ends c's wait; timedOut says the hold deadline passed.
func (l *loop) unhold(c *conn, timedOut bool) {
	l.dequeue(c)
	l.endHold(c, timedOut)
}

// dequeue takes c off the held list (it tries again or goes away).
func (l *loop) dequeue(c *conn) {
	c.state = stProxy
	l.schedule(c, 0)
	if l.nheld--; l.nheld == 0 && l.waitCancel != nil {
		l.waitCancel() // nobody waits: let the waiter go
	}
}

// endHold ends the hold begun by c's first wait, if any.
func (l *loop) endHold(c *conn, timedOut bool) {
	x := &c.x
	if x.holdStart.IsZero() {
		return
	}
	l.h.EndHold(x.holdStart, timedOut)
	x.held += time.Since(x.holdStart)
	x.holdStart = time.Time{}
}

// poolReady tries the held requests again, oldest first.
func (l *loop) poolReady() {
	l.waiting = false
	held := l.held
	l.held = nil
	for _, c := range held {
		if c.state == stHeld {
			l.dequeue(c)
			l.attempt(c)
		}
	}
}

// attempt sends c's request to an upstream, or holds it.
func (l *loop) attempt(c *conn) {
	x := &c.x
	up, err := l.pool.Pick(x.avoid)
	if err != nil {
		l.hold(c)
		return
	}
	l.endHold(c, false)
	x.up = up
	if l.s.Handler.Observing() {
		x.ex.Backend, x.ex.Attempts = up.Name(), x.attempt
	}
	x.redialed, x.answered = false, false
	if p := l.poolFor(up); p.pp != nil {
		be, err := l.dial(p)
		if err != nil {
			c.attemptFailed(err)
			return
		}
		be.startProxied(c)
		return
	}
	// Like the net/http plane: a request that is not replayable goes on a
	// fresh connection (a pooled one may be closing as idle just now).
	be, err := l.conn(up, x.replay)
	if err != nil {
		c.attemptFailed(err)
		return
	}
	be.start(c)
}

// checkEpochs closes idle backend connections to servers whose restart
// began since they were made.
func (l *loop) checkEpochs() {
	l.epoch = l.now + int64(epochInterval)
	for _, p := range l.pools {
		if len(p.idle) == 0 {
			continue
		}
		if cu, ok := p.up.(proxy.ConnUpstream); ok && cu.Epoch() != p.epoch {
			p.epoch = cu.Epoch()
			p.closeIdle()
		}
	}
}

// sockaddr resolves addr once per loop (an IP address needs no lookup;
// a name is looked up the first time, blocking this loop once).
func (l *loop) sockaddr(addr string) (unix.Sockaddr, error) {
	if sa, ok := l.addrs[addr]; ok {
		return sa, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ta, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			return nil, err
		}
		ip = ta.IP
	}
	var sa unix.Sockaddr
	if ip4 := ip.To4(); ip4 != nil {
		s4 := &unix.SockaddrInet4{Port: p}
		copy(s4.Addr[:], ip4)
		sa = s4
	} else {
		s6 := &unix.SockaddrInet6{Port: p}
		copy(s6.Addr[:], ip.To16())
		sa = s6
	}
	l.addrs[addr] = sa
	return sa, nil
}
