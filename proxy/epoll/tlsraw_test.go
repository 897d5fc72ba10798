package epoll_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// rawTLS is a TLS 1.3 client whose handshake is crypto/tls's and whose
// records after it are the test's own (RFC 8446, section 5.2, written here
// apart from the package's record layer), so that a test can send what
// crypto/tls's client never sends: KeyUpdates on demand, records split,
// padded or empty, alerts.
type rawTLS struct {
	t      testing.TB
	nc     net.Conn
	wr, rd *rawHalf
	in     []byte // ciphertext read, not opened yet

	keyUpdates int // KeyUpdates the server sent
	tickets    int // NewSessionTickets the server sent
}

// rawKeys collects the application traffic secrets crypto/tls logs.
type rawKeys struct {
	mu             sync.Mutex
	client, server []byte
}

func (k *rawKeys) Write(line []byte) (int, error) {
	f := strings.Fields(string(line))
	if len(f) == 3 {
		sec, _ := hex.DecodeString(f[2])
		k.mu.Lock()
		switch f[0] {
		case "CLIENT_TRAFFIC_SECRET_0":
			k.client = sec
		case "SERVER_TRAFFIC_SECRET_0":
			k.server = sec
		}
		k.mu.Unlock()
	}
	return len(line), nil
}

// oneRecordConn gives crypto/tls no byte beyond the record it reads, so
// that what the server sends after its Finished (the session ticket) stays
// for the test's own record layer.
type oneRecordConn struct {
	net.Conn
	left int // bytes of the current record not given yet
	hdr  []byte
}

func (c *oneRecordConn) Read(p []byte) (int, error) {
	if len(c.hdr) > 0 {
		n := copy(p, c.hdr)
		c.hdr = c.hdr[n:]
		return n, nil
	}
	if c.left == 0 {
		var h [5]byte
		if _, err := io.ReadFull(c.Conn, h[:]); err != nil {
			return 0, err
		}
		c.left = int(binary.BigEndian.Uint16(h[3:]))
		c.hdr = h[:]
		n := copy(p, c.hdr)
		c.hdr = c.hdr[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

// dialRawTLS makes a TLS 1.3 HTTP/1.1 connection to addr with crypto/tls
// and takes its records over.
func dialRawTLS(t testing.TB, addr string, cc *tls.Config) *rawTLS {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	keys := &rawKeys{}
	cfg := cc.Clone()
	cfg.MinVersion, cfg.NextProtos, cfg.KeyLogWriter = tls.VersionTLS13, []string{"http/1.1"}, keys
	tc := tls.Client(&oneRecordConn{Conn: nc}, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	suite := tc.ConnectionState().CipherSuite
	keys.mu.Lock()
	defer keys.mu.Unlock()
	c := &rawTLS{t: t, nc: nc}
	if c.wr, err = newRawHalf(suite, keys.client); err != nil {
		t.Fatal(err)
	}
	if c.rd, err = newRawHalf(suite, keys.server); err != nil {
		t.Fatal(err)
	}
	return c
}

// rawHalf is one direction's AEAD state.
type rawHalf struct {
	hash   func() hash.Hash
	keyLen int
	chacha bool
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64
}

func newRawHalf(suite uint16, secret []byte) (*rawHalf, error) {
	h := &rawHalf{}
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		h.hash, h.keyLen = sha256.New, 16
	case tls.TLS_AES_256_GCM_SHA384:
		h.hash, h.keyLen = sha512.New384, 32
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		h.hash, h.keyLen, h.chacha = sha256.New, 32, true
	default:
		return nil, fmt.Errorf("suite %#x", suite)
	}
	return h, h.set(secret)
}

func rawExpand(h func() hash.Hash, secret []byte, label string, n int) []byte {
	info := binary.BigEndian.AppendUint16(nil, uint16(n))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "+label...)
	info = append(info, 0)
	out, err := hkdf.Expand(h, secret, string(info), n)
	if err != nil {
		panic(err)
	}
	return out
}

func (h *rawHalf) set(secret []byte) error {
	key := rawExpand(h.hash, secret, "key", h.keyLen)
	h.iv = rawExpand(h.hash, secret, "iv", 12)
	h.secret, h.seq = secret, 0
	var err error
	if h.chacha {
		h.aead, err = chacha20poly1305.New(key)
		return err
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	h.aead, err = cipher.NewGCM(b)
	return err
}

func (h *rawHalf) update() {
	if err := h.set(rawExpand(h.hash, h.secret, "traffic upd", h.hash().Size())); err != nil {
		panic(err)
	}
}

func (h *rawHalf) nonce() []byte {
	n := append([]byte(nil), h.iv...)
	for i := 0; i < 8; i++ {
		n[4+i] ^= byte(h.seq >> (56 - 8*i))
	}
	h.seq++
	return n
}

// record seals inner (content, content type, padding) as one record.
func (h *rawHalf) record(inner []byte) []byte {
	n := len(inner) + h.aead.Overhead()
	hdr := []byte{23, 3, 3, byte(n >> 8), byte(n)}
	return h.aead.Seal(hdr, h.nonce(), inner, hdr)
}

// seal is the record of p with content type typ.
func (c *rawTLS) seal(typ byte, p []byte) []byte {
	return c.wr.record(append(append([]byte(nil), p...), typ))
}

// keyUpdate is a KeyUpdate record; the client's keys move on after it.
func (c *rawTLS) keyUpdate(requested bool) []byte {
	req := byte(0)
	if requested {
		req = 1
	}
	rec := c.seal(22, []byte{24, 0, 0, 1, req})
	c.wr.update()
	return rec
}

func (c *rawTLS) write(b []byte) error {
	_, err := c.nc.Write(b)
	return err
}

// next returns the next record the server sent other than a KeyUpdate
// (after which it moves its read keys on) or a NewSessionTicket.
func (c *rawTLS) next() (typ byte, data []byte, err error) {
	for {
		for len(c.in) >= 5 && len(c.in) >= 5+int(binary.BigEndian.Uint16(c.in[3:5])) {
			n := 5 + int(binary.BigEndian.Uint16(c.in[3:5]))
			pt, err := c.rd.aead.Open(nil, c.rd.nonce(), c.in[5:n], c.in[:5])
			if err != nil {
				return 0, nil, fmt.Errorf("opening a server record: %w", err)
			}
			c.in = c.in[n:]
			i := len(pt) - 1
			for i >= 0 && pt[i] == 0 {
				i--
			}
			if i < 0 {
				return 0, nil, errors.New("a server record without a content type")
			}
			typ, msg := pt[i], pt[:i]
			switch {
			case typ == 22 && len(msg) == 5 && msg[0] == 24:
				if msg[4] != 0 {
					return 0, nil, fmt.Errorf("server KeyUpdate asks for one: %x", msg)
				}
				c.keyUpdates++
				c.rd.update()
			case typ == 22 && len(msg) > 0 && msg[0] == 4:
				c.tickets++
			default:
				return typ, msg, nil
			}
		}
		buf := make([]byte, 64<<10)
		n, err := c.nc.Read(buf)
		c.in = append(c.in, buf[:n]...)
		if err != nil && n == 0 {
			return 0, nil, err
		}
	}
}

// alertAndEOF reads what the server sends until the connection ends and
// returns the alert that came last (-1: none), the application data before
// it, and how the connection ended.
func (c *rawTLS) alertAndEOF() (alert int, data []byte, err error) {
	alert = -1
	for {
		typ, p, err := c.next()
		if err != nil {
			return alert, data, err
		}
		switch typ {
		case 21:
			if len(p) == 2 {
				alert = int(p[1])
			}
		case 23:
			data = append(data, p...)
		}
	}
}
