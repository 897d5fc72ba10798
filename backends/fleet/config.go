package fleet

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults applied by Config.Normalize to zero fields.
const (
	DefaultPrefix              = "/baton/"
	DefaultLeaseTTL            = 10 * time.Second
	DefaultMaxParallelRestarts = 1
	DefaultCallTimeout         = 3 * time.Second
	DefaultPool                = "default"
)

// MinLeaseTTL is the shortest lease_ttl: etcd rounds leases to whole
// seconds and keeps them for at least a few election timeouts anyway.
const MinLeaseTTL = 2 * time.Second

// minSecret is the shortest secret_file accepted, in bytes.
const minSecret = 16

// Config is the [fleet] section of baton's configuration: the TOML key of
// each field is in its comment. A nil *Config (no section) means baton
// works alone. Normalize fills defaults, Validate checks the result.
type Config struct {
	// Etcd lists the endpoints (etcd), http:// or https:// URLs.
	Etcd []string
	// CAFile verifies the servers of https endpoints (ca_file); empty: the
	// system's roots. CertFile and KeyFile (cert_file, key_file) are this
	// member's client certificate, for etcd's --client-cert-auth.
	CAFile, CertFile, KeyFile string
	// Name is this member's name in the fleet (name), 1-64 of
	// [A-Za-z0-9._-]; default: the host name.
	Name string
	// Prefix is the key prefix of the fleet (prefix), so that several
	// fleets share one etcd; it starts and ends with "/" (default "/baton/").
	Prefix string
	// LeaseTTL is how long a member that stops renewing its lease stays
	// in the fleet (lease_ttl), whole seconds, at least 2s (default 10s).
	LeaseTTL time.Duration
	// SecretFile holds the secret shared by the fleet (secret_file): TLS
	// ticket keys are stored in etcd encrypted with a key derived from it.
	// Empty: no shared ticket keys. The file must be readable by its owner
	// only and hold at least 16 bytes.
	SecretFile string
	// MaxParallelRestarts bounds the fleet restarts running at once,
	// fleet-wide (max_parallel_restarts, default 1).
	MaxParallelRestarts int
	// CallTimeout bounds every call to etcd (call_timeout, default 3s).
	CallTimeout time.Duration
}

// FieldError is a validation error about one key of the [fleet] section.
type FieldError struct {
	Key string // the TOML key, e.g. "lease_ttl"
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(key, format string, args ...any) error {
	return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

// Normalize fills the defaults of zero fields; the name comes from
// os.Hostname (its first label).
func (c *Config) Normalize() error {
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fieldErr("name", "no name and no host name: %w", err)
		}
		c.Name, _, _ = strings.Cut(h, ".")
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.MaxParallelRestarts == 0 {
		c.MaxParallelRestarts = DefaultMaxParallelRestarts
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	return nil
}

// Validate checks a normalized Config; each error is a *FieldError
// ("key: reason"). It reads the TLS and secret files, so that a bad file is
// refused at load time, not at the first fleet operation.
func (c *Config) Validate() error {
	if len(c.Etcd) == 0 {
		return fieldErr("etcd", "at least one endpoint is needed")
	}
	tlsEnd := false
	for _, e := range c.Etcd {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" {
			return fieldErr("etcd", "%q is not a URL of the form http://host:port or https://host:port", e)
		}
		switch u.Scheme {
		case "http":
		case "https":
			tlsEnd = true
		default:
			return fieldErr("etcd", "%q: scheme must be http or https", e)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fieldErr("cert_file", "cert_file and key_file go together")
	}
	if !tlsEnd && (c.CAFile != "" || c.CertFile != "") {
		return fieldErr("ca_file", "ca_file, cert_file and key_file need https:// endpoints")
	}
	if tlsEnd {
		if _, err := c.tlsConfig(); err != nil {
			return err
		}
	}
	if !validName(c.Name) {
		return fieldErr("name", "%q: 1-64 of A-Z a-z 0-9 . _ -", c.Name)
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") || strings.Contains(c.Prefix, "//") {
		return fieldErr("prefix", "%q must start and end with / (e.g. %q)", c.Prefix, DefaultPrefix)
	}
	if c.LeaseTTL < MinLeaseTTL || c.LeaseTTL%time.Second != 0 {
		return fieldErr("lease_ttl", "%s: whole seconds, at least %s", c.LeaseTTL, MinLeaseTTL)
	}
	if c.MaxParallelRestarts < 1 {
		return fieldErr("max_parallel_restarts", "%d: at least 1", c.MaxParallelRestarts)
	}
	if c.CallTimeout <= 0 || c.CallTimeout > c.LeaseTTL {
		return fieldErr("call_timeout", "%s: positive and at most lease_ttl (%s)", c.CallTimeout, c.LeaseTTL)
	}
	if c.SecretFile != "" {
		if _, err := readSecret(c.SecretFile); err != nil {
			return &FieldError{Key: "secret_file", Err: err}
		}
	}
	return nil
}

// tlsConfig builds the client TLS configuration from the files.
func (c *Config) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, &FieldError{Key: "ca_file", Err: err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fieldErr("ca_file", "%s: no PEM certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fieldErr("cert_file", "%s, %s: %w", c.CertFile, c.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// readSecret reads the fleet secret, refusing a file that others may read
// or write, or that is too short to be a key.
func readSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is mode %04o: it must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	b := make([]byte, 4096)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	b = b[:n]
	if len(strings.TrimSpace(string(b))) < minSecret {
		return nil, fmt.Errorf("%s holds %d bytes: at least %d are needed (e.g. head -c 32 /dev/urandom | base64 > %s)", path, len(b), minSecret, path)
	}
	return b, nil
}

// validName reports whether s is 1-64 of [A-Za-z0-9._-], the rule for
// member and backend names (backends' own rule).
func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
