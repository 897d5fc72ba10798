package metrics

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "site.test"}, DNSNames: []string{"site.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTLSReason: the errors crypto/tls's server handshake returns for
// each kind of failing client, classified.
func TestTLSReason(t *testing.T) {
	cert := testCert(t)
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	roots := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	roots.AddCert(leaf)
	good := func() *tls.Config { return &tls.Config{ServerName: "site.test", RootCAs: roots} }
	for _, tc := range []struct {
		name   string
		client func(c net.Conn)
		want   int
	}{
		{"plain HTTP", func(c net.Conn) { io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); io.Copy(io.Discard, c) }, TLSNotTLS},
		{"closes", func(c net.Conn) { c.Write([]byte{0x16, 3, 1, 0, 80}); c.Close() }, TLSEOF},
		{"TLS 1.0", func(c net.Conn) {
			cfg := good()
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
			tls.Client(c, cfg).Handshake()
		}, TLSProtocolVersion},
		{"no common cipher", func(c net.Conn) {
			cfg := good()
			cfg.MaxVersion, cfg.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
			tls.Client(c, cfg).Handshake()
		}, TLSNoSharedCipher},
		{"unknown ALPN", func(c net.Conn) {
			cfg := good()
			cfg.NextProtos = []string{"spdy/1"}
			tls.Client(c, cfg).Handshake()
		}, TLSNoALPN},
		{"untrusted, TLS 1.2", func(c net.Conn) {
			tls.Client(c, &tls.Config{ServerName: "site.test", MaxVersion: tls.VersionTLS12}).Handshake()
		}, TLSBadCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, sc := net.Pipe()
			done := make(chan struct{})
			go func() {
				defer close(done)
				tc.client(cc)
				cc.Close()
			}()
			sc.SetDeadline(time.Now().Add(5 * time.Second))
			err := tls.Server(sc, srvCfg).Handshake()
			sc.Close()
			<-done
			if err == nil {
				t.Fatal("the handshake succeeded")
			}
			if got := TLSReason(err); got != tc.want {
				t.Errorf("%v: got %s, want %s", err, TLSReasonNames[got], TLSReasonNames[tc.want])
			}
		})
	}
	for _, tc := range []struct {
		err  error
		want int
	}{
		{os.ErrDeadlineExceeded, TLSTimeout},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, TLSTimeout},
		{fmt.Errorf("x: %w", io.ErrUnexpectedEOF), TLSEOF},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: unknown certificate authority")}, TLSUnknownCA},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: handshake failure")}, TLSOther},
		{errors.New("local error: tls: bad record MAC"), TLSOther},
	} {
		if got := TLSReason(tc.err); got != tc.want {
			t.Errorf("%v: got %s, want %s", tc.err, TLSReasonNames[got], TLSReasonNames[tc.want])
		}
	}
	for desc, want := range map[uint8]int{48: TLSUnknownCA, 42: TLSBadCertificate, 45: TLSBadCertificate, 70: TLSProtocolVersion, 120: TLSNoALPN, 90: TLSEOF, 40: TLSOther} {
		if got := TLSAlertReason(desc); got != want {
			t.Errorf("alert %d: got %s, want %s", desc, TLSReasonNames[got], TLSReasonNames[want])
		}
	}
}

// TestExposition: the whole of Write, TLS and process metrics included,
// passes Prometheus's own parser, and the new families are there.
func TestExposition(t *testing.T) {
	tb := newTable(t)
	tb.RecordHandshake(false)
	tb.RecordHandshake(true)
	tb.RecordHandshake(true)
	tb.RecordHandshakeFailure(TLSUnknownCA)
	tb.RecordHandshakeFailure(99) // out of range: other
	p, err := ReadProcess()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tb.Write(&b, Live{Generation: 1, Version: `v"1`, Process: &p,
		Certificates: []CertLive{{File: `/etc/ssl/a "b".crt`, Subject: "site.test", NotAfter: time.Now().Add(time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatalf("not valid text format: %v\n%s", err, b.String())
	}
	for _, n := range []string{"baton_tls_handshakes_total", "baton_tls_handshake_failures_total", "baton_tls_certificate_expiry_seconds",
		"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds", "process_max_fds", "process_start_time_seconds"} {
		if mfs[n] == nil {
			t.Errorf("no %s", n)
		}
	}
	text := b.String()
	has(t, text, `baton_tls_handshakes_total{type="full"} 1`, `baton_tls_handshakes_total{type="resumed"} 2`,
		`baton_tls_handshake_failures_total{reason="unknown_ca"} 1`, `baton_tls_handshake_failures_total{reason="other"} 1`)
	if !strings.Contains(text, `baton_tls_certificate_expiry_seconds{cert_file="/etc/ssl/a \"b\".crt",subject="site.test"} 3`) {
		t.Errorf("expiry sample missing or wrong:\n%s", text)
	}
	if p.Start.After(time.Now()) || time.Since(p.Start) > time.Hour || p.RSS == 0 || p.OpenFDs == 0 || p.MaxFDs == 0 {
		t.Errorf("process: %+v", p)
	}
}

// TestParseStat: a command name with spaces and parentheses does not
// shift the fields.
func TestParseStat(t *testing.T) {
	line := "1234 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 888 999 20 21\n"
	st, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.startTicks != 777 || st.vsize != 888 || st.rssPages != 999 {
		t.Errorf("got %+v, want start 777, vsize 888, rss 999", st)
	}
	if _, err := parseStat([]byte("1234 (x) S 1 2")); err == nil {
		t.Error("a short line parsed")
	}
}
