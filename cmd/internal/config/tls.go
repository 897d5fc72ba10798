package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// TLS is one [[tls]] section: listeners that terminate TLS with a set of
// certificates, chosen by SNI (the first is the default). The certificates
// are read and checked by Load, so every process (every generation after
// an upgrade) serves what is on disk when it starts.
type TLS struct {
	Listen       []string
	Certificates []Certificate
	// HTTP2 offers h2 by ALPN (default true); HTTP/1.1 is always offered.
	HTTP2 bool
	// MinVersion is tls.VersionTLS12 (default) or tls.VersionTLS13.
	MinVersion uint16
}

// Certificate is a certificate chain and its key, as loaded.
type Certificate struct {
	CertFile string // absolute
	KeyFile  string // absolute
	Cert     tls.Certificate
}

type fileTLS struct {
	Listen       []string   `toml:"listen"`
	Certificates []fileCert `toml:"certificates"`
	HTTP2        *bool      `toml:"http2"`
	MinVersion   string     `toml:"min_version"`
}

type fileCert struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// ServerConfig returns a fresh tls.Config serving t's certificates with
// HTTP/2 offered when t.HTTP2. Session tickets are left to the caller
// (tls.Config.SetSessionTicketKeys).
func (t *TLS) ServerConfig() *tls.Config {
	c := &tls.Config{MinVersion: t.MinVersion}
	for _, cert := range t.Certificates {
		c.Certificates = append(c.Certificates, cert.Cert)
	}
	if t.HTTP2 {
		c.NextProtos = []string{"h2", "http/1.1"}
	} else {
		c.NextProtos = []string{"http/1.1"}
	}
	return c
}

// buildTLS checks the [[tls]] sections and loads their certificates;
// seen holds the addresses [proxy] listens on.
func buildTLS(sections []fileTLS, dir string, seen map[string]bool, now time.Time) ([]TLS, error) {
	var out []TLS
	for i, f := range sections {
		at := func(k string) string { return fmt.Sprintf("tls[%d].%s", i, k) }
		t := TLS{HTTP2: true, MinVersion: tls.VersionTLS12}
		if len(f.Listen) == 0 {
			return nil, errAt(at("listen"), "no listen address (want e.g. [\"127.0.0.1:8443\"])")
		}
		for j, a := range f.Listen {
			key := at(fmt.Sprintf("listen[%d]", j))
			if err := checkAddr(a); err != nil {
				return nil, errAt(key, "%v", err)
			}
			if seen[a] {
				return nil, errAt(key, "%q listed twice", a)
			}
			seen[a] = true
		}
		t.Listen = f.Listen
		if f.HTTP2 != nil {
			t.HTTP2 = *f.HTTP2
		}
		switch f.MinVersion {
		case "", "1.2":
		case "1.3":
			t.MinVersion = tls.VersionTLS13
		default:
			return nil, errAt(at("min_version"), "%q: want \"1.2\" or \"1.3\"", f.MinVersion)
		}
		if len(f.Certificates) == 0 {
			return nil, errAt(at("certificates"), "no certificate (want e.g. [ { cert_file = \"site.crt\", key_file = \"site.key\" } ])")
		}
		for j, fc := range f.Certificates {
			key := at(fmt.Sprintf("certificates[%d]", j))
			if fc.CertFile == "" {
				return nil, errAt(key+".cert_file", "missing")
			}
			if fc.KeyFile == "" {
				return nil, errAt(key+".key_file", "missing")
			}
			c := Certificate{CertFile: under(dir, fc.CertFile), KeyFile: under(dir, fc.KeyFile)}
			cert, k, err := LoadCertificate(c.CertFile, c.KeyFile, now)
			if err != nil {
				return nil, errAt(key+"."+k, "%w", err)
			}
			c.Cert = cert
			t.Certificates = append(t.Certificates, c)
		}
		out = append(out, t)
	}
	return out, nil
}

// LoadCertificate reads a PEM certificate chain and its private key and
// checks that they belong together and that the certificate is valid at
// now. On error, key says which file is at fault ("cert_file" or
// "key_file") and the error says why, naming the file.
func LoadCertificate(certFile, keyFile string, now time.Time) (cert tls.Certificate, key string, err error) {
	certPEM, err := readPEM(certFile)
	if err != nil {
		return cert, "cert_file", err
	}
	keyPEM, err := readPEM(keyFile)
	if err != nil {
		return cert, "key_file", err
	}
	var certs []*x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return cert, "cert_file", fmt.Errorf("%s: bad certificate: %w", certFile, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return cert, "cert_file", fmt.Errorf("%s: no PEM \"CERTIFICATE\" block", certFile)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return cert, "key_file", fmt.Errorf("%s: no PEM private key block", keyFile)
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "does not match"):
			return cert, "key_file", fmt.Errorf("%s does not match the certificate in %s", keyFile, certFile)
		default:
			return cert, "key_file", fmt.Errorf("%s: %w", keyFile, err)
		}
	}
	leaf := certs[0]
	switch {
	case now.After(leaf.NotAfter):
		return cert, "cert_file", fmt.Errorf("%s: certificate for %s expired on %s", certFile, certName(leaf), leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return cert, "cert_file", fmt.Errorf("%s: certificate for %s is not valid before %s", certFile, certName(leaf), leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return cert, "", nil
}

func readPEM(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: no such file", path)
	case errors.As(err, &pe):
		return nil, fmt.Errorf("%s: cannot read: %w", path, pe.Err)
	case err != nil:
		return nil, fmt.Errorf("%s: cannot read: %w", path, err)
	}
	return b, nil
}

func certName(c *x509.Certificate) string {
	if len(c.DNSNames) > 0 {
		return strconv.Quote(c.DNSNames[0])
	}
	return strconv.Quote(c.Subject.CommonName)
}
