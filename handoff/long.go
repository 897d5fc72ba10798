package handoff

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults for long-lived connections.
const (
	// DefaultLongDrainTimeout bounds how long an old process keeps
	// WebSockets, other Upgrade connections and streaming responses
	// (server-sent events) after it stopped accepting.
	DefaultLongDrainTimeout = time.Hour
	// DefaultCloseLinger is how long a WebSocket that baton closes may take
	// to answer the close frame before its connection is closed.
	DefaultCloseLinger = time.Second
)

// WebSocket close codes baton sends (RFC 6455 §7.4).
const (
	CloseGoingAway      = 1001 // this process is going away (long drain deadline)
	CloseServiceRestart = 1012 // the backend ended the connection without a close frame
)

// isWebSocket reports whether r asks to upgrade to a WebSocket.
func isWebSocket(r *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "websocket") &&
		httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade")
}

// isStream reports whether a response with header h is a stream of events.
func isStream(h http.Header) bool {
	return strings.HasPrefix(strings.ToLower(h.Get("Content-Type")), "text/event-stream")
}

// markLong counts one more long-lived response on c.
func (s *Server) markLong(c net.Conn) {
	s.mu.Lock()
	s.long[c]++
	s.mu.Unlock()
}

func (s *Server) unmarkLong(c net.Conn) {
	s.mu.Lock()
	if s.long[c]--; s.long[c] <= 0 {
		delete(s.long, c)
	}
	s.mu.Unlock()
}

// wsConn is the client side of a WebSocket after the 101 answer, as the
// handler (a reverse proxy) sees it. It follows the frames the handler
// writes to the client, so that baton can end the WebSocket with a close
// frame of its own, between two frames, instead of a bare TCP close: at
// the long drain deadline (1001), and when the handler closes the
// connection without the backend having sent a close frame (1012: the
// backend went away, e.g. restarted). After its own close frame it drops
// what the handler writes.
type wsConn struct {
	net.Conn
	linger       time.Duration
	writeTimeout time.Duration // a client that reads nothing for this long is dropped

	pending atomic.Int32 // a close code goAway could not write at once

	mu       sync.Mutex
	inHTTP   bool   // still writing the 101 response header
	tail     uint32 // last bytes written in the header, to find CRLFCRLF
	hdr      [14]byte
	nhdr     int
	need     int    // header bytes of the frame being written; 0 before its second byte
	left     uint64 // payload bytes of that frame not written yet
	sawClose bool   // a close frame went to the client
	closing  int    // the close code baton wrote or will write at the next boundary; 0: none
	sent     bool   // baton's close frame is written
	once     sync.Once
}

// hijackWS wraps a hijacked connection and its buffered writer so that
// every byte to the client passes through a wsConn.
func hijackWS(c net.Conn, brw *bufio.ReadWriter, linger, writeTimeout time.Duration) (*wsConn, *bufio.ReadWriter) {
	ws := &wsConn{Conn: c, linger: linger, writeTimeout: writeTimeout, inHTTP: true}
	return ws, bufio.NewReadWriter(brw.Reader, bufio.NewWriter(ws))
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sent {
		return len(p), nil // the client has been told goodbye
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	n, err := c.Conn.Write(p)
	c.track(p[:n])
	if code := c.pending.Load(); code != 0 && c.closing == 0 && !c.sawClose {
		c.closing = int(code)
	}
	if err == nil && c.closing != 0 && c.atBoundaryLocked() {
		err = c.writeCloseLocked()
	}
	return n, err
}

func (c *wsConn) atBoundaryLocked() bool { return !c.inHTTP && c.nhdr == 0 && c.left == 0 }

func (c *wsConn) track(p []byte) {
	for len(p) > 0 {
		if c.inHTTP {
			b := p[0]
			p = p[1:]
			c.tail = c.tail<<8 | uint32(b)
			if c.tail == 0x0d0a0d0a {
				c.inHTTP = false
			}
			continue
		}
		if c.left > 0 {
			k := uint64(len(p))
			if k > c.left {
				k = c.left
			}
			c.left -= k
			p = p[k:]
			continue
		}
		c.hdr[c.nhdr] = p[0]
		c.nhdr++
		p = p[1:]
		if c.nhdr == 2 {
			c.need = 2
			switch c.hdr[1] & 0x7f {
			case 126:
				c.need += 2
			case 127:
				c.need += 8
			}
			if c.hdr[1]&0x80 != 0 {
				c.need += 4
			}
		}
		if c.nhdr < 2 || c.nhdr < c.need {
			continue
		}
		switch l := c.hdr[1] & 0x7f; l {
		case 126:
			c.left = uint64(binary.BigEndian.Uint16(c.hdr[2:]))
		case 127:
			c.left = binary.BigEndian.Uint64(c.hdr[2:])
		default:
			c.left = uint64(l)
		}
		if c.hdr[0]&0x0f == 0x8 {
			c.sawClose = true
		}
		c.nhdr, c.need = 0, 0
	}
}

func (c *wsConn) writeCloseLocked() error {
	c.sent = true
	frame := []byte{0x88, 2, byte(c.closing >> 8), byte(c.closing)}
	_, err := c.Conn.Write(frame)
	return err
}

// goAway sends a close frame with code now, or after the frame being
// written; it does nothing if a close frame went to the client already.
// It never waits for a write in progress (a client that does not read
// would block it): that write sends the close frame when it is done.
func (c *wsConn) goAway(code int) {
	if !c.mu.TryLock() {
		c.pending.Store(int32(code))
		return
	}
	defer c.mu.Unlock()
	if c.sawClose || c.closing != 0 {
		return
	}
	c.closing = code
	if c.atBoundaryLocked() {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.linger))
		_ = c.writeCloseLocked()
	}
}

// Close ends the WebSocket. If no close frame has gone to the client, the
// backend went away without one: the client gets 1012, and its answer is
// awaited (up to linger) so that closing does not reset the connection.
func (c *wsConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		wrote := false
		if !c.sawClose && !c.sent && !c.inHTTP && c.atBoundaryLocked() {
			if c.closing == 0 {
				c.closing = CloseServiceRestart
			}
			_ = c.Conn.SetWriteDeadline(time.Now().Add(c.linger))
			wrote = c.writeCloseLocked() == nil
		}
		c.mu.Unlock()
		if wrote {
			c.awaitClose()
		}
	})
	return c.Conn.Close()
}

// awaitClose reads the client's frames until its close frame, EOF or the
// linger deadline.
func (c *wsConn) awaitClose() {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.linger))
	r := bufio.NewReader(c.Conn)
	var h [2]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126, 127:
			ext := make([]byte, map[uint64]int{126: 2, 127: 8}[n])
			if _, err := io.ReadFull(r, ext); err != nil {
				return
			}
			if n == 126 {
				n = uint64(binary.BigEndian.Uint16(ext))
			} else {
				n = binary.BigEndian.Uint64(ext)
			}
		}
		if h[1]&0x80 != 0 {
			n += 4
		}
		if _, err := io.CopyN(io.Discard, r, int64(min(n, 1<<40))); err != nil {
			return
		}
		if h[0]&0x0f == 0x8 {
			return
		}
	}
}
