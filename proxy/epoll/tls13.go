package epoll

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
)

// TLS 1.3 record protection (RFC 8446, section 5) for the connections a
// loop serves over TLS. crypto/tls does the handshake (tlsfront.go); the
// loop then protects the application data itself with the traffic
// secrets of that handshake, so that a TLS request takes the same path
// through the loop as a plain one. Only what a TLS 1.3 server must handle
// after its handshake is accepted: application data, alerts and KeyUpdate.
// Anything else is a protocol error that ends the connection with an
// alert, as crypto/tls would.

// TLS record content types and limits.
const (
	recordAlert       = 21
	recordHandshake   = 22
	recordAppData     = 23
	recordHeader      = 5
	maxPlaintext      = 16384
	maxCiphertext     = maxPlaintext + 256
	typeKeyUpdate     = 24
	alertCloseNotify  = 0
	alertUnexpected   = 10
	alertBadRecordMAC = 20
	alertOverflow     = 22
	alertDecodeError  = 50
)

// tlsSuite is a TLS 1.3 cipher suite the loop protects records with.
type tlsSuite struct {
	keyLen int
	hash   func() hash.Hash
}

// loopSuite returns the suite for id, false for one the loop leaves to
// crypto/tls (ChaCha20-Poly1305: the standard library does not export it).
func loopSuite(id uint16) (tlsSuite, bool) {
	switch id {
	case tls.TLS_AES_128_GCM_SHA256:
		return tlsSuite{16, sha256.New}, true
	case tls.TLS_AES_256_GCM_SHA384:
		return tlsSuite{32, sha512.New384}, true
	}
	return tlsSuite{}, false
}

// expandLabel is HKDF-Expand-Label with an empty context (RFC 8446,
// section 7.1).
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	info := make([]byte, 0, 4+6+len(label))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

// halfConn protects one direction of a connection: an AEAD, its IV and
// the record sequence number.
type halfConn struct {
	suite  tlsSuite
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	seq    uint64
}

// newHalfConn derives the keys of a traffic secret; seq is the number of
// records already protected with it.
func newHalfConn(s tlsSuite, secret []byte, seq uint64) (*halfConn, error) {
	h := &halfConn{suite: s, seq: seq}
	if err := h.setSecret(secret); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *halfConn) setSecret(secret []byte) error {
	key, err := expandLabel(h.suite.hash, secret, "key", h.suite.keyLen)
	if err != nil {
		return fmt.Errorf("tls: key: %w", err)
	}
	iv, err := expandLabel(h.suite.hash, secret, "iv", 12)
	if err != nil {
		return fmt.Errorf("tls: iv: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	h.secret, h.aead, h.seq = secret, aead, 0
	copy(h.iv[:], iv)
	return nil
}

// update moves to the next traffic secret (KeyUpdate).
func (h *halfConn) update() error {
	next, err := expandLabel(h.suite.hash, h.secret, "traffic upd", h.suite.hash().Size())
	if err != nil {
		return fmt.Errorf("tls: key update: %w", err)
	}
	return h.setSecret(next)
}

func (h *halfConn) nonce(n *[12]byte) {
	*n = h.iv
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], h.seq)
	for i := range s {
		n[4+i] ^= s[i]
	}
	h.seq++
}

// seal appends to dst the records protecting p as content type typ.
func (h *halfConn) seal(dst, p []byte, typ byte) []byte {
	var nonce [12]byte
	over := h.aead.Overhead()
	for len(p) > 0 {
		chunk := p[:min(len(p), maxPlaintext)]
		p = p[len(chunk):]
		n := len(chunk) + 1 + over
		start := len(dst)
		dst = slices.Grow(dst, recordHeader+n)
		dst = append(dst, recordAppData, 3, 3, byte(n>>8), byte(n))
		dst = append(dst, chunk...)
		dst = append(dst, typ)
		h.nonce(&nonce)
		body := dst[start+recordHeader:]
		out := h.aead.Seal(body[:0], nonce[:], body, dst[start:start+recordHeader])
		dst = dst[:start+recordHeader+len(out)]
	}
	return dst
}

// tlsAlert is a protocol error to answer with an alert before closing.
type tlsAlert struct {
	desc byte
	msg  string
}

func (a *tlsAlert) Error() string { return "tls: " + a.msg }

// errCloseNotify reports the peer's close_notify alert: the end of its data.
var errCloseNotify = errors.New("tls: close_notify")

// opened is a record openRecord took off a ciphertext stream.
type opened struct {
	typ       byte
	data      []byte // application data (within the ciphertext buffer)
	keyUpdate bool   // the peer asks for a KeyUpdate in return
}

// openRecord opens the record at the start of b, if complete; it returns
// how many bytes it used (0: incomplete) and the plaintext, which is
// decrypted in place within b. Protocol errors are *tlsAlert.
func (h *halfConn) openRecord(b []byte) (int, opened, error) {
	if len(b) < recordHeader {
		return 0, opened{}, nil
	}
	if b[0] != recordAppData {
		return 0, opened{}, &tlsAlert{alertUnexpected, fmt.Sprintf("unexpected record type %d after the handshake", b[0])}
	}
	if b[1] != 3 || b[2] != 3 {
		return 0, opened{}, &tlsAlert{alertDecodeError, "bad record version"}
	}
	n := int(binary.BigEndian.Uint16(b[3:5]))
	if n > maxCiphertext {
		return 0, opened{}, &tlsAlert{alertOverflow, "record too large"}
	}
	if len(b) < recordHeader+n {
		return 0, opened{}, nil
	}
	var nonce [12]byte
	h.nonce(&nonce)
	ct := b[recordHeader : recordHeader+n]
	pt, err := h.aead.Open(ct[:0], nonce[:], ct, b[:recordHeader])
	if err != nil {
		return 0, opened{}, &tlsAlert{alertBadRecordMAC, "record authentication failed"}
	}
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 {
		return 0, opened{}, &tlsAlert{alertUnexpected, "record without a content type"}
	}
	o := opened{typ: pt[i], data: pt[:i]}
	if len(o.data) > maxPlaintext {
		return 0, opened{}, &tlsAlert{alertOverflow, "plaintext too large"}
	}
	switch o.typ {
	case recordAppData:
	case recordAlert:
		if len(o.data) != 2 {
			return 0, opened{}, &tlsAlert{alertDecodeError, "bad alert"}
		}
		if o.data[1] == alertCloseNotify {
			return recordHeader + n, o, errCloseNotify
		}
		return 0, opened{}, fmt.Errorf("tls: peer sent alert %d", o.data[1])
	case recordHandshake:
		// After the handshake a client may only send KeyUpdate (no
		// certificate was asked for, no ticket is the client's to send).
		m := o.data
		if len(m) != 5 || m[0] != typeKeyUpdate || m[1] != 0 || m[2] != 0 || m[3] != 1 || m[4] > 1 {
			return 0, opened{}, &tlsAlert{alertUnexpected, "unexpected handshake message after the handshake"}
		}
		if err := h.update(); err != nil {
			return 0, opened{}, err
		}
		o.keyUpdate = m[4] == 1
		o.data = nil
	default:
		return 0, opened{}, &tlsAlert{alertUnexpected, fmt.Sprintf("unexpected inner content type %d", o.typ)}
	}
	return recordHeader + n, o, nil
}

// keyUpdateMsg is a KeyUpdate handshake message that asks for nothing.
var keyUpdateMsg = []byte{typeKeyUpdate, 0, 0, 1, 0}

// alertRecord appends a fatal alert (or close_notify, a warning) to dst.
func (h *halfConn) alertRecord(dst []byte, desc byte) []byte {
	level := byte(2)
	if desc == alertCloseNotify {
		level = 1
	}
	return h.seal(dst, []byte{level, desc}, recordAlert)
}
