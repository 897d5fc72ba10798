package epoll

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/internal/tlstest"
	"github.com/batonproxy/baton/proxy"
)

// onePool always picks the same upstream.
type onePool struct{ up *testUpstream }

func (p onePool) Pick(proxy.Upstream) (proxy.Upstream, error) { return p.up, nil }
func (p onePool) Wait(context.Context) error                  { return nil }
func (p onePool) Unavailable() string                         { return "" }

type testUpstream struct{ addr string }

func (u *testUpstream) Name() string                     { return "b" }
func (u *testUpstream) Addr() string                     { return u.addr }
func (u *testUpstream) Transport(bool) http.RoundTripper { return http.DefaultTransport }
func (u *testUpstream) Done(error)                       {}
func (u *testUpstream) Options() proxy.UpstreamOptions   { return proxy.UpstreamOptions{} }

// clientKeys collects a crypto/tls client's traffic secrets.
type clientKeys struct{ client, server []byte }

func (k *clientKeys) Write(line []byte) (int, error) {
	f := strings.Fields(string(line))
	if len(f) == 3 {
		sec, _ := hex.DecodeString(f[2])
		switch f[0] {
		case "CLIENT_TRAFFIC_SECRET_0":
			k.client = sec
		case "SERVER_TRAFFIC_SECRET_0":
			k.server = sec
		}
	}
	return len(line), nil
}

// TestTLSKeyUpdate speaks TLS 1.3 records by hand after a crypto/tls
// handshake: a client KeyUpdate that asks for one in return gets it, and
// requests and responses go on under the new keys on both sides.
func TestTLSKeyUpdate(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	t.Cleanup(be.Close)
	ca := tlstest.NewCA(t)
	pair := ca.Issue(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "localhost")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Handler:   proxy.New(onePool{&testUpstream{be.Listener.Addr().String()}}, proxy.Config{}),
		Loops:     1,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair.Certificate(t)}, NextProtos: []string{"http/1.1"}},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Drain(ctx)
		<-done
	})

	keys := &clientKeys{}
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", KeyLogWriter: keys,
		MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	suite, ok := loopSuite(tc.ConnectionState().CipherSuite)
	if !ok {
		t.Skipf("suite %x is not served in the loop", tc.ConnectionState().CipherSuite)
	}
	wr, err := newHalfConn(suite, keys.client, 0)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := newHalfConn(suite, keys.server, 0)
	if err != nil {
		t.Fatal(err)
	}
	// From here on the test is the client's record layer.
	send := func(p []byte, typ byte) {
		t.Helper()
		if _, err := raw.Write(wr.seal(nil, p, typ)); err != nil {
			t.Fatal(err)
		}
	}
	var buf []byte
	var serverUpdated bool
	readResponse := func() string {
		t.Helper()
		var body []byte
		for {
			for len(buf) >= recordHeader && len(buf) >= recordHeader+int(binary.BigEndian.Uint16(buf[3:5])) {
				n := recordHeader + int(binary.BigEndian.Uint16(buf[3:5]))
				var nonce [12]byte
				rd.nonce(&nonce)
				pt, err := rd.aead.Open(nil, nonce[:], buf[recordHeader:n], buf[:recordHeader])
				if err != nil {
					t.Fatalf("opening a server record: %v", err)
				}
				buf = buf[n:]
				i := len(pt) - 1
				for pt[i] == 0 {
					i--
				}
				switch typ, msg := pt[i], pt[:i]; {
				case typ == recordHandshake && msg[0] == 4: // NewSessionTicket
				case typ == recordHandshake && msg[0] == typeKeyUpdate:
					if msg[4] != 0 {
						t.Fatalf("server KeyUpdate asks for one: %x", msg)
					}
					serverUpdated = true
					if err := rd.update(); err != nil {
						t.Fatal(err)
					}
				case typ == recordAppData:
					body = append(body, msg...)
				default:
					t.Fatalf("unexpected record type %d: %x", typ, msg)
				}
			}
			if bytes.Contains(body, []byte("hello /")) {
				return string(body)
			}
			tmp := make([]byte, 4096)
			n, err := raw.Read(tmp)
			if err != nil {
				t.Fatalf("reading: %v (so far %q)", err, body)
			}
			buf = append(buf, tmp[:n]...)
		}
	}

	send([]byte("GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n"), recordAppData)
	if got := readResponse(); !strings.HasSuffix(got, "hello /a") {
		t.Fatalf("first response: %q", got)
	}
	send([]byte{typeKeyUpdate, 0, 0, 1, 1}, recordHandshake) // update_requested
	if err := wr.update(); err != nil {
		t.Fatal(err)
	}
	send([]byte("GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n"), recordAppData)
	if got := readResponse(); !strings.HasSuffix(got, "hello /b") {
		t.Fatalf("after KeyUpdate: %q", got)
	}
	if !serverUpdated {
		t.Error("the server sent no KeyUpdate in return")
	}
	// close_notify: the server answers with its own and closes.
	send([]byte{1, alertCloseNotify}, recordAlert)
	rest, _ := io.ReadAll(raw)
	if len(rest) == 0 {
		t.Error("no close_notify in return")
	}
}
