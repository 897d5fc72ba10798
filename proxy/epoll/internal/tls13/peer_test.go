package tls13

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batonproxy/baton/internal/tlstest"
)

// The tests speak to crypto/tls: a crypto/tls client and server make a
// TLS 1.3 connection over loopback TCP, and the test then takes one side's
// records over, with the secrets crypto/tls logged.

// certs is a server certificate and the pool that trusts it.
type certs struct {
	cert tls.Certificate
	ca   *tlstest.CA
}

func newCerts(t testing.TB) certs {
	ca := tlstest.NewCA(t)
	pair := ca.Issue(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "localhost")
	return certs{pair.Certificate(t), ca}
}

// secrets collects the application traffic secrets of a key log.
type secrets struct {
	mu             sync.Mutex
	client, server []byte
}

func (k *secrets) Write(line []byte) (int, error) {
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

// oneRecordConn gives crypto/tls no byte beyond the record it reads: what
// comes after the handshake stays in the socket for the test.
type oneRecordConn struct {
	net.Conn
	left int
	hdr  []byte
}

func (c *oneRecordConn) Read(p []byte) (int, error) {
	if len(c.hdr) == 0 && c.left == 0 {
		var h [HeaderLen]byte
		if _, err := io.ReadFull(c.Conn, h[:]); err != nil {
			return 0, err
		}
		c.left = int(binary.BigEndian.Uint16(h[3:]))
		c.hdr = h[:]
	}
	if len(c.hdr) > 0 {
		n := copy(p, c.hdr)
		c.hdr = c.hdr[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

// session is a TLS 1.3 connection between crypto/tls's client and server.
type session struct {
	suite          Suite
	client, server []byte // application traffic secrets
	cli, srv       *tls.Conn
	cliRaw, srvRaw net.Conn // their TCP connections
}

// newSession makes a connection; neither side has read beyond the
// handshake. tickets: the server sends its session ticket (in its first
// flight, protected with its application secret from sequence number 0).
func newSession(t testing.TB, c certs, tickets bool) *session {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		raw net.Conn
		tc  *tls.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(&oneRecordConn{Conn: raw}, &tls.Config{Certificates: []tls.Certificate{c.cert},
			MinVersion: tls.VersionTLS13, SessionTicketsDisabled: !tickets})
		done <- result{raw, tc, tc.Handshake()}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	keys := &secrets{}
	cli := tls.Client(&oneRecordConn{Conn: raw}, &tls.Config{RootCAs: c.ca.Pool(), ServerName: "localhost",
		MinVersion: tls.VersionTLS13, KeyLogWriter: keys})
	if err := cli.Handshake(); err != nil {
		raw.Close()
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		raw.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		raw.Close()
		r.raw.Close()
	})
	suite, ok := SuiteByID(cli.ConnectionState().CipherSuite)
	if !ok {
		t.Fatalf("suite %#x", cli.ConnectionState().CipherSuite)
	}
	if want := os.Getenv("TLS13_WANT_SUITE"); want != "" && tls.CipherSuiteName(suite.ID()) != want {
		t.Fatalf("negotiated %s, want %s", tls.CipherSuiteName(suite.ID()), want)
	}
	keys.mu.Lock()
	defer keys.mu.Unlock()
	return &session{suite: suite, client: keys.client, server: keys.server, cli: cli, srv: r.tc, cliRaw: raw, srvRaw: r.raw}
}

// peerRecords opens a stream of records as the other end would, with
// keys for secret from sequence number 0: it follows KeyUpdates and skips
// session tickets, and returns the application data, the alerts, how
// many KeyUpdates asked for one in return, and the rest it could not
// open.
type peerRecords struct {
	data    []byte
	alerts  []Alert
	asked   int
	updates int
	rest    []byte
}

func openPeer(s Suite, secret, stream []byte) (peerRecords, error) {
	var out peerRecords
	k := keys{suite: s}
	if err := k.set(secret); err != nil {
		return out, err
	}
	for {
		n := RecordLen(stream)
		if n == 0 || len(stream) < n {
			out.rest = stream
			return out, nil
		}
		var nonce [12]byte
		k.nonce(&nonce)
		pt, err := k.aead.Open(nil, nonce[:], stream[HeaderLen:n], stream[:HeaderLen])
		if err != nil {
			out.rest = stream
			return out, fmt.Errorf("record %x...: %w", stream[:HeaderLen], err)
		}
		stream = stream[n:]
		i := len(pt) - 1
		for i >= 0 && pt[i] == 0 {
			i--
		}
		if i < 0 {
			return out, errors.New("record without a content type")
		}
		typ, msg := pt[i], pt[:i]
		switch typ {
		case typeAppData:
			out.data = append(out.data, msg...)
		case typeAlert:
			if len(msg) == 2 {
				out.alerts = append(out.alerts, Alert(msg[1]))
			}
		case typeHandshake:
			for len(msg) >= 4 {
				m := msg[:4+int(msg[1])<<16|int(msg[2])<<8|int(msg[3])]
				msg = msg[len(m):]
				if m[0] == msgKeyUpdate {
					out.updates++
					if m[4] == 1 {
						out.asked++
					}
					if err := k.next(); err != nil {
						return out, err
					}
				}
			}
		}
	}
}

// readAll reads r until it fails.
func readAll(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(r)
	return b.Bytes(), err
}

// inner is a record's plaintext before protection: content, content
// type, padding.
func inner(content []byte, typ byte, padding int) []byte {
	p := append(append([]byte(nil), content...), typ)
	return append(p, make([]byte, padding)...)
}

// sealer protects whole inner plaintexts, for records no Writer makes.
type sealer struct{ k keys }

func newSealer(t testing.TB, s Suite, secret []byte) *sealer {
	t.Helper()
	z := &sealer{k: keys{suite: s}}
	if err := z.k.set(secret); err != nil {
		t.Fatal(err)
	}
	return z
}

// seal is the record of in with outer type typ.
func (z *sealer) seal(typ byte, in []byte) []byte {
	n := len(in) + z.k.aead.Overhead()
	hdr := []byte{typ, 3, 3, byte(n >> 8), byte(n)}
	var nonce [12]byte
	z.k.nonce(&nonce)
	return z.k.aead.Seal(hdr, nonce[:], in, hdr)
}

// keyUpdate is a KeyUpdate record; the keys move on after it.
func (z *sealer) keyUpdate(request byte) []byte {
	r := z.seal(typeAppData, inner([]byte{msgKeyUpdate, 0, 0, 1, request}, typeHandshake, 0))
	if err := z.k.next(); err != nil {
		panic(err)
	}
	return r
}

// outcome is how one side took a stream of client records: the
// application data and how it ended.
type outcome struct {
	data   []byte
	end    string // "eof", "alert <name>" (sent), "remote <name>" (received), "truncated" (the stream ends in a record)
	detail error
}

func endOf(err error) string {
	var e *Error
	var ra RemoteAlert
	switch {
	case err == nil:
		return "open"
	case err == io.EOF:
		return "eof"
	case errors.As(err, &e):
		return "alert " + e.Alert.String()
	case errors.As(err, &ra):
		return "remote " + Alert(ra).String()
	}
	return "error"
}

// viaReader feeds stream to a Reader in chunks of the sizes split gives,
// as a loop's reads come, answering each KeyUpdate that asks for one.
func viaReader(t testing.TB, s *session, stream []byte, split func() int) (outcome, *Writer) {
	t.Helper()
	r, err := NewReader(s.suite, s.client)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(s.suite, s.server, 1)
	if err != nil {
		t.Fatal(err)
	}
	var out outcome
	var buf, sent []byte
	for {
		n, data, asked, err := r.Open(buf)
		if err != nil {
			out.end, out.detail = endOf(err), err
			return out, w
		}
		if asked {
			sent = w.Answer(sent)
		}
		if n > 0 {
			if len(data) > 0 && &data[0] != &buf[HeaderLen] {
				t.Fatal("data not decrypted in place")
			}
			out.data = append(out.data, data...)
			buf = buf[n:]
			continue
		}
		if len(stream) == 0 {
			// The end without close_notify: taken as crypto/tls takes it.
			out.end = "eof"
			if len(buf) > 0 {
				out.end = "truncated"
			}
			return out, w
		}
		k := min(max(1, split()), len(stream))
		buf = append(buf, stream[:k]...)
		stream = stream[k:]
	}
}

// viaCryptoTLS sends stream to crypto/tls's server as the session's
// client and reads until it fails; what the server sent back tells which
// alert it sent.
func viaCryptoTLS(t testing.TB, s *session, stream []byte) (outcome, peerRecords) {
	t.Helper()
	back := make(chan []byte, 1)
	go func() {
		b, _ := readAll(s.cliRaw)
		back <- b
	}()
	wrote := make(chan error, 1)
	go func() {
		_, err := s.cliRaw.Write(stream)
		s.cliRaw.(*net.TCPConn).CloseWrite() // the end of the stream, if it has no close_notify
		wrote <- err
	}()
	var out outcome
	data, err := readAll(s.srv)
	out.data = data
	var op *net.OpError
	switch {
	case err == nil || err == io.EOF:
		out.end = "eof" // close_notify, or the end at a record boundary
	case err == io.ErrUnexpectedEOF:
		out.end = "truncated"
	case errors.As(err, &op) && op.Op == "remote error":
		var code uint8
		fmt.Sscanf(fmt.Sprintf("%d", op.Err), "%d", &code) // crypto/tls's alert type is not exported
		out.end = "remote " + Alert(code).String()
	default:
		out.end = "error"
	}
	out.detail = err
	// Not srv.Close: that would send a close_notify of its own. And the
	// rest of the stream is read first: a close with unread data resets
	// the connection, which may lose what the server sent last.
	<-wrote
	_, _ = io.Copy(io.Discard, s.srvRaw)
	s.srvRaw.Close()
	got, perr := openPeer(s.suite, s.server, <-back)
	if perr != nil {
		t.Fatalf("opening what crypto/tls's server sent: %v", perr)
	}
	if out.end == "error" {
		for _, a := range got.alerts {
			if a != AlertCloseNotify {
				out.end = "alert " + a.String()
			}
		}
	}
	return out, got
}
