package tls13

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"slices"

	"golang.org/x/crypto/chacha20poly1305"
)

// Record layer sizes (RFC 8446, section 5).
const (
	HeaderLen     = 5                  // a record's header
	MaxPlaintext  = 1 << 14            // data in one record
	MaxCiphertext = MaxPlaintext + 256 // a record's body
)

// Content types.
const (
	typeChangeCipherSpec = 20
	typeAlert            = 21
	typeHandshake        = 22
	typeAppData          = 23
	msgKeyUpdate         = 24 // handshake message type
)

// MaxUseless is how many records in a row that carry no application data
// a Reader takes (KeyUpdates, empty records, user_canceled alerts,
// change_cipher_spec): crypto/tls's maxUselessRecords. The next one is a
// protocol error.
const MaxUseless = 16

// DefaultRekeyAfter is how many records a Writer protects with one key
// before it moves to the next with a KeyUpdate of its own: RFC 8446,
// section 5.5 allows 2^24.5 full-size records per AES-GCM key (and more
// for ChaCha20-Poly1305, whose sequence number would wrap first).
const DefaultRekeyAfter = 1 << 24

// Alert is a TLS alert description.
type Alert uint8

// Alerts a Reader or Writer sends or recognises.
const (
	AlertCloseNotify       Alert = 0
	AlertUnexpectedMessage Alert = 10
	AlertBadRecordMAC      Alert = 20
	AlertRecordOverflow    Alert = 22
	AlertDecodeError       Alert = 50
	AlertProtocolVersion   Alert = 70
	AlertInternalError     Alert = 80
	AlertUserCanceled      Alert = 90
)

func (a Alert) String() string {
	switch a {
	case AlertCloseNotify:
		return "close_notify"
	case AlertUnexpectedMessage:
		return "unexpected_message"
	case AlertBadRecordMAC:
		return "bad_record_mac"
	case AlertRecordOverflow:
		return "record_overflow"
	case AlertDecodeError:
		return "decode_error"
	case AlertProtocolVersion:
		return "protocol_version"
	case AlertInternalError:
		return "internal_error"
	case AlertUserCanceled:
		return "user_canceled"
	}
	return fmt.Sprintf("alert %d", uint8(a))
}

// Error is a protocol error of the peer's: its Reader reads nothing more,
// and the connection is to end with Alert (Writer.Alert).
type Error struct {
	Alert Alert
	Msg   string
}

func (e *Error) Error() string { return "tls: " + e.Msg + " (" + e.Alert.String() + ")" }

// RemoteAlert is a fatal alert the peer sent: its Reader reads nothing
// more.
type RemoteAlert Alert

func (a RemoteAlert) Error() string { return "tls: peer sent alert " + Alert(a).String() }

// Suite is a TLS 1.3 cipher suite the record layer protects records with.
type Suite struct {
	id     uint16
	keyLen int
	hash   func() hash.Hash
	aead   func(key []byte) (cipher.AEAD, error)
}

// ID is the suite's TLS identifier.
func (s Suite) ID() uint16 { return s.id }

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// SuiteByID returns the TLS 1.3 suite id, false for one that is not TLS
// 1.3's.
func SuiteByID(id uint16) (Suite, bool) {
	switch id {
	case tls.TLS_AES_128_GCM_SHA256:
		return Suite{id, 16, sha256.New, newGCM}, true
	case tls.TLS_AES_256_GCM_SHA384:
		return Suite{id, 32, sha512.New384, newGCM}, true
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		return Suite{id, chacha20poly1305.KeySize, sha256.New, chacha20poly1305.New}, true
	}
	return Suite{}, false
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

// keys protects one direction: the traffic secret, its AEAD and IV, and
// the sequence number of the next record.
type keys struct {
	suite  Suite
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	seq    uint64
}

func (k *keys) set(secret []byte) error {
	key, err := expandLabel(k.suite.hash, secret, "key", k.suite.keyLen)
	if err != nil {
		return fmt.Errorf("tls: key: %w", err)
	}
	iv, err := expandLabel(k.suite.hash, secret, "iv", 12)
	if err != nil {
		return fmt.Errorf("tls: iv: %w", err)
	}
	aead, err := k.suite.aead(key)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	k.secret, k.aead, k.seq = secret, aead, 0
	copy(k.iv[:], iv)
	return nil
}

// next moves to the next traffic secret (KeyUpdate, RFC 8446 section 7.2).
func (k *keys) next() error {
	s, err := expandLabel(k.suite.hash, k.secret, "traffic upd", k.suite.hash().Size())
	if err != nil {
		return fmt.Errorf("tls: key update: %w", err)
	}
	return k.set(s)
}

// nonce is the per-record nonce (RFC 8446, section 5.3); it uses up a
// sequence number.
func (k *keys) nonce(n *[12]byte) {
	*n = k.iv
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], k.seq)
	for i := range s {
		n[4+i] ^= s[i]
	}
	k.seq++
}

// RecordLen is the length of the record at the start of b, header
// included, as its header says; 0 if b holds less than a header.
func RecordLen(b []byte) int {
	if len(b) < HeaderLen {
		return 0
	}
	return HeaderLen + int(binary.BigEndian.Uint16(b[3:5]))
}

// Reader opens the records a peer sends after the handshake. Its rules are
// crypto/tls's for a TLS 1.3 server (Conn.readRecordOrCCS and
// handlePostHandshakeMessage) but for one: the only handshake message a
// client may send after the handshake is a KeyUpdate (the server asks for
// no certificate and takes no session ticket), so any other is an
// unexpected_message as soon as its type is read, and a KeyUpdate of
// another length a decode_error as soon as its length is, where crypto/tls
// reads the whole message first; and a record whose plaintext has no
// content type byte at all is an unexpected_message (RFC 8446 section
// 5.4), where crypto/tls takes an empty one for an empty data record.
type Reader struct {
	k       keys
	hand    [5]byte // a KeyUpdate message in part, split across records
	handN   int
	useless int   // records in a row that carried no application data
	err     error // the end: io.EOF after close_notify, or the error
}

// NewReader opens records protected with secret, from sequence number 0.
func NewReader(s Suite, secret []byte) (*Reader, error) {
	r := &Reader{k: keys{suite: s}}
	if err := r.k.set(secret); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reader) fail(a Alert, msg string) error {
	r.err = &Error{a, msg}
	return r.err
}

// Open opens the record at the start of b if b holds all of it. n is the
// bytes of b it used (0: the record is incomplete, and nothing changed);
// data is the record's application data, decrypted in place within b,
// and empty for records that carry none. askedUpdate reports a KeyUpdate
// that asks for one in return, which the caller answers with
// Writer.Answer. err is io.EOF after the peer's close_notify, a *Error
// for a protocol error (answer it with its alert) or a RemoteAlert; it is
// returned again by every later call.
func (r *Reader) Open(b []byte) (n int, data []byte, askedUpdate bool, err error) {
	if r.err != nil {
		return 0, nil, false, r.err
	}
	if len(b) < HeaderLen {
		return 0, nil, false, nil
	}
	if b[1] != 3 || b[2] != 3 {
		return 0, nil, false, r.fail(AlertProtocolVersion, fmt.Sprintf("record version %#x", binary.BigEndian.Uint16(b[1:3])))
	}
	n = RecordLen(b)
	if n-HeaderLen > MaxCiphertext {
		return 0, nil, false, r.fail(AlertRecordOverflow, fmt.Sprintf("record of %d bytes", n-HeaderLen))
	}
	if len(b) < n {
		return 0, nil, false, nil
	}
	typ := b[0]
	body := b[HeaderLen:n]
	if typ == typeChangeCipherSpec {
		// Not protected; ignored (RFC 8446, appendix D.4), as crypto/tls
		// does after the handshake too.
		data = body
	} else {
		if r.k.seq == 1<<64-1 {
			return 0, nil, false, r.fail(AlertInternalError, "sequence number exhausted")
		}
		var nonce [12]byte
		r.k.nonce(&nonce)
		pt, err := r.k.aead.Open(body[:0], nonce[:], body, b[:HeaderLen])
		if err != nil {
			return 0, nil, false, r.fail(AlertBadRecordMAC, "record authentication failed")
		}
		if typ != typeAppData {
			return 0, nil, false, r.fail(AlertUnexpectedMessage, fmt.Sprintf("protected record of type %d", typ))
		}
		if len(pt) > MaxPlaintext+1 {
			return 0, nil, false, r.fail(AlertRecordOverflow, "plaintext too large")
		}
		i := len(pt) - 1
		for i >= 0 && pt[i] == 0 {
			i--
		}
		if i < 0 {
			return 0, nil, false, r.fail(AlertUnexpectedMessage, "record without a content type")
		}
		typ, data = pt[i], pt[:i]
	}
	if typ == typeAppData && len(data) > 0 {
		r.useless = 0
	}
	if r.handN > 0 && typ != typeHandshake {
		return 0, nil, false, r.fail(AlertUnexpectedMessage, "record inside a handshake message")
	}
	switch typ {
	case typeAppData:
		if len(data) == 0 {
			if err := r.uselessRecord(); err != nil {
				return 0, nil, false, err
			}
		}
		return n, data, false, nil
	case typeAlert:
		if len(data) != 2 {
			return 0, nil, false, r.fail(AlertUnexpectedMessage, "malformed alert")
		}
		switch Alert(data[1]) {
		case AlertCloseNotify:
			r.err = io.EOF
			return n, nil, false, r.err
		case AlertUserCanceled:
			// Ignored, as a warning, as crypto/tls and most stacks do.
			if err := r.uselessRecord(); err != nil {
				return 0, nil, false, err
			}
			return n, nil, false, nil
		}
		r.err = RemoteAlert(data[1])
		return 0, nil, false, r.err
	case typeChangeCipherSpec:
		if len(data) != 1 || data[0] != 1 {
			return 0, nil, false, r.fail(AlertDecodeError, "malformed change_cipher_spec")
		}
		if err := r.uselessRecord(); err != nil {
			return 0, nil, false, err
		}
		return n, nil, false, nil
	case typeHandshake:
		if len(data) == 0 {
			return 0, nil, false, r.fail(AlertUnexpectedMessage, "empty handshake record")
		}
		asked, err := r.handshake(data)
		if err != nil {
			return 0, nil, false, err
		}
		return n, nil, asked, nil
	}
	return 0, nil, false, r.fail(AlertUnexpectedMessage, fmt.Sprintf("record of content type %d", typ))
}

func (r *Reader) uselessRecord() error {
	if r.useless++; r.useless > MaxUseless {
		return r.fail(AlertUnexpectedMessage, "too many records without data")
	}
	return nil
}

// handshake takes the handshake message bytes of one record: parts of
// KeyUpdate messages, each of which must end its record (a key change is
// at a record boundary, RFC 8446 section 5.1).
func (r *Reader) handshake(p []byte) (asked bool, err error) {
	for _, c := range p {
		if r.handN == 5 {
			return false, r.fail(AlertUnexpectedMessage, "handshake message after a KeyUpdate in its record")
		}
		r.hand[r.handN] = c
		r.handN++
		switch r.handN {
		case 1:
			if c != msgKeyUpdate {
				return false, r.fail(AlertUnexpectedMessage, fmt.Sprintf("handshake message of type %d after the handshake", c))
			}
		case 4:
			if r.hand[1] != 0 || r.hand[2] != 0 || r.hand[3] != 1 {
				return false, r.fail(AlertDecodeError, "KeyUpdate of a wrong length")
			}
		case 5:
			if c > 1 {
				return false, r.fail(AlertDecodeError, "KeyUpdate with a bad request_update")
			}
		}
	}
	if r.handN < 5 {
		return false, nil // the message goes on in the next record
	}
	if err := r.uselessRecord(); err != nil {
		return false, err
	}
	asked = r.hand[4] == 1
	r.handN = 0
	if err := r.k.next(); err != nil {
		r.err = err
		return false, err
	}
	return asked, nil
}

// Writer protects the records sent after the handshake.
type Writer struct {
	k          keys
	rekeyAfter uint64
	answered   bool // a KeyUpdate went since the last application data
	updates    int
}

// NewWriter protects records with secret, from sequence number seq (the
// records already protected with it).
func NewWriter(s Suite, secret []byte, seq uint64) (*Writer, error) {
	w := &Writer{k: keys{suite: s}, rekeyAfter: DefaultRekeyAfter}
	if err := w.k.set(secret); err != nil {
		return nil, err
	}
	w.k.seq = seq
	return w, nil
}

// SealedBy counts the records at the end of sent that secret's key
// opens with sequence numbers from 0 (the records a server protected
// with its application traffic secret during its handshake: session
// tickets); false if any come before one it does not open.
func SealedBy(s Suite, secret []byte, sent [][]byte) (uint64, bool) {
	k := keys{suite: s}
	if err := k.set(secret); err != nil {
		return 0, false
	}
	var seq uint64
	var nonce [12]byte
	for _, rec := range sent {
		if len(rec) < HeaderLen {
			return 0, false
		}
		k.seq = seq
		k.nonce(&nonce)
		if _, err := k.aead.Open(nil, nonce[:], rec[HeaderLen:], rec[:HeaderLen]); err != nil {
			if seq > 0 {
				return 0, false
			}
			continue
		}
		seq++
	}
	return seq, true
}

// Updates is how many KeyUpdates w sent.
func (w *Writer) Updates() int { return w.updates }

func (w *Writer) record(dst, p []byte, typ byte) []byte {
	var nonce [12]byte
	n := len(p) + 1 + w.k.aead.Overhead()
	start := len(dst)
	dst = slices.Grow(dst, HeaderLen+n)
	dst = append(dst, typeAppData, 3, 3, byte(n>>8), byte(n))
	dst = append(dst, p...)
	dst = append(dst, typ)
	w.k.nonce(&nonce)
	body := dst[start+HeaderLen:]
	out := w.k.aead.Seal(body[:0], nonce[:], body, dst[start:start+HeaderLen])
	return dst[:start+HeaderLen+len(out)]
}

// Seal appends to dst the records that protect p, application data of at
// most MaxPlaintext each. A key that has protected its share of records
// (DefaultRekeyAfter) is replaced first, with a KeyUpdate.
func (w *Writer) Seal(dst, p []byte) []byte {
	for len(p) > 0 {
		if w.k.seq+1 >= w.rekeyAfter {
			dst = w.Update(dst, false)
		}
		chunk := p[:min(len(p), MaxPlaintext)]
		p = p[len(chunk):]
		dst = w.record(dst, chunk, typeAppData)
		w.answered = false
	}
	return dst
}

// Update appends to dst a KeyUpdate (asking for one in return if
// request) and moves to the next key: what is sealed after it is
// protected with the new one.
func (w *Writer) Update(dst []byte, request bool) []byte {
	req := byte(0)
	if request {
		req = 1
	}
	dst = w.record(dst, []byte{msgKeyUpdate, 0, 0, 1, req}, typeHandshake)
	if err := w.k.next(); err != nil {
		// HKDF-Expand of a hash's size cannot fail.
		panic(err)
	}
	w.updates++
	w.answered = true
	return dst
}

// Answer answers a KeyUpdate that asked for one (Reader.Open): it
// appends a KeyUpdate to dst, unless one went since the last application
// data, which answers it already (RFC 8446, section 4.6.3: a peer that
// gets several while it is silent answers once).
func (w *Writer) Answer(dst []byte) []byte {
	if w.answered {
		return dst
	}
	return w.Update(dst, false)
}

// Alert appends alert a to dst: close_notify as a warning, any other as
// fatal.
func (w *Writer) Alert(dst []byte, a Alert) []byte {
	level := byte(2)
	if a == AlertCloseNotify || a == AlertUserCanceled {
		level = 1
	}
	return w.record(dst, []byte{level, byte(a)}, typeAlert)
}
