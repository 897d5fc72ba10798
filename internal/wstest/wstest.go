// Package wstest is a minimal RFC 6455 WebSocket client and echo server
// for tests: enough framing to send text, read frames, see close codes.
package wstest

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// Opcodes.
const (
	OpText  = 0x1
	OpClose = 0x8
	OpPing  = 0x9
	OpPong  = 0xa
)

const guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Conn is one side of a WebSocket.
type Conn struct {
	C      net.Conn
	r      *bufio.Reader
	client bool // masks what it sends
}

// Client does the opening handshake on c (already connected, TLS or not)
// for path with Host host.
func Client(c net.Conn, host, path string) (*Conn, error) {
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return nil, fmt.Errorf("wstest: status %d: %s", resp.StatusCode, b)
	}
	if g, e := resp.Header.Get("Sec-WebSocket-Accept"), accept(key); g != e {
		return nil, fmt.Errorf("wstest: Sec-WebSocket-Accept %q, want %q (answer %v)", g, e, resp.Header)
	}
	return &Conn{C: c, r: r, client: true}, nil
}

func accept(key string) string {
	h := sha1.Sum([]byte(key + guid))
	return base64.StdEncoding.EncodeToString(h[:])
}

// Write sends one frame.
func (c *Conn) Write(op byte, payload []byte) error {
	b := []byte{0x80 | op}
	mask := byte(0)
	if c.client {
		mask = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, mask|byte(n))
	case n < 1<<16:
		b = append(b, mask|126, byte(n>>8), byte(n))
	default:
		b = append(b, mask|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if c.client {
		var m [4]byte
		_, _ = rand.Read(m[:])
		b = append(b, m[:]...)
		for i, x := range payload {
			b = append(b, x^m[i%4])
		}
	} else {
		b = append(b, payload...)
	}
	_, err := c.C.Write(b)
	return err
}

// WriteText sends a text frame.
func (c *Conn) WriteText(s string) error { return c.Write(OpText, []byte(s)) }

// CloseFrame sends a close frame with code.
func (c *Conn) CloseFrame(code int) error {
	return c.Write(OpClose, []byte{byte(code >> 8), byte(code)})
}

// Read reads one frame (unfragmented frames only).
func (c *Conn) Read() (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(c.r, e[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(c.r, e[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if n > 1<<24 {
		return 0, nil, fmt.Errorf("wstest: frame of %d bytes", n)
	}
	var m [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(c.r, m[:]); err != nil {
			return 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.r, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= m[i%4]
		}
	}
	return h[0] & 0x0f, payload, nil
}

// CloseCode is the status code of a close frame's payload, or 1005.
func CloseCode(payload []byte) int {
	if len(payload) < 2 {
		return 1005
	}
	return int(binary.BigEndian.Uint16(payload))
}

// Echo is a WebSocket echo server: it answers text with the same text, a
// close frame with a close frame (then closes), and the text "die" by
// closing the connection without a close frame, as a server that is
// stopped would. Other requests get 200 "not a websocket".
var Echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		_, _ = io.WriteString(w, "not a websocket\n")
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+accept(key)+"\r\n\r\n")
	ws := &Conn{C: c, r: brw.Reader}
	for {
		op, p, err := ws.Read()
		if err != nil {
			return
		}
		switch {
		case op == OpClose:
			_ = ws.Write(OpClose, p)
			return
		case op == OpPing:
			_ = ws.Write(OpPong, p)
		case string(p) == "die":
			return
		default:
			_ = ws.Write(op, p)
		}
	}
})
