package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// tlsAddr is where the demo's baton serves HTTPS: 127.0.0.1:0 is taken by
// its plain listener (listeners are handed on by address).
const tlsAddr = "127.0.0.2:0"

// writeDemoCert writes a self-signed ECDSA P-256 certificate for
// 127.0.0.2, made now, to dir/demo.crt and dir/demo.key, and returns the
// [[tls]] section that serves it.
func writeDemoCert(dir string) (certFile, section string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "baton demo"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 2)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile := filepath.Join(dir, "demo.crt"), filepath.Join(dir, "demo.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", err
	}
	section = fmt.Sprintf("\n[[tls]]\nlisten = [%q]\ncertificates = [ { cert_file = %q, key_file = %q } ]\n", tlsAddr, certFile, keyFile)
	return certFile, section, nil
}
