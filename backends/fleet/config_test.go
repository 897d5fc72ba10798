package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/internal/tlstest"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{Etcd: []string{"http://127.0.0.1:2379"}}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	if c.Name != host || c.Prefix != DefaultPrefix || c.LeaseTTL != DefaultLeaseTTL || c.MaxParallelRestarts != 1 || c.CallTimeout != DefaultCallTimeout {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("0123456789abcdef0123"), 0o600)
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("0123456789abcdef0123"), 0o644)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("tiny\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o644)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		key  string // "" means valid
		want string
	}{
		{"valid", func(c *Config) {}, "", ""},
		{"no endpoint", func(c *Config) { c.Etcd = nil }, "etcd", "at least one endpoint"},
		{"no port", func(c *Config) { c.Etcd = []string{"http://127.0.0.1"} }, "etcd", "not a URL"},
		{"scheme", func(c *Config) { c.Etcd = []string{"unix://127.0.0.1:2379"} }, "etcd", "http or https"},
		{"path", func(c *Config) { c.Etcd = []string{"http://127.0.0.1:2379/v3"} }, "etcd", "not a URL"},
		{"name", func(c *Config) { c.Name = "a b" }, "name", "1-64"},
		{"prefix", func(c *Config) { c.Prefix = "baton" }, "prefix", "start and end with /"},
		{"ttl short", func(c *Config) { c.LeaseTTL = time.Second }, "lease_ttl", "at least 2s"},
		{"ttl fraction", func(c *Config) { c.LeaseTTL = 2500 * time.Millisecond }, "lease_ttl", "whole seconds"},
		{"parallel", func(c *Config) { c.MaxParallelRestarts = -1 }, "max_parallel_restarts", "at least 1"},
		{"call timeout", func(c *Config) { c.CallTimeout = time.Minute }, "call_timeout", "at most lease_ttl"},
		{"cert without key", func(c *Config) { c.Etcd = []string{"https://127.0.0.1:2379"}; c.CertFile = "x" }, "cert_file", "go together"},
		{"tls on http", func(c *Config) { c.CAFile = notPEM }, "ca_file", "need https"},
		{"bad ca", func(c *Config) { c.Etcd = []string{"https://127.0.0.1:2379"}; c.CAFile = notPEM }, "ca_file", "no PEM certificate"},
		{"missing ca", func(c *Config) { c.Etcd = []string{"https://127.0.0.1:2379"}; c.CAFile = filepath.Join(dir, "nosuch") }, "ca_file", "no such file"},
		{"secret ok", func(c *Config) { c.SecretFile = secret }, "", ""},
		{"secret readable by others", func(c *Config) { c.SecretFile = open }, "secret_file", "mode 0644"},
		{"secret short", func(c *Config) { c.SecretFile = short }, "secret_file", "at least 16"},
		{"secret missing", func(c *Config) { c.SecretFile = filepath.Join(dir, "nosuch") }, "secret_file", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Etcd: []string{"http://127.0.0.1:2379"}, Name: "a"}
			tc.mod(&c)
			if err := c.Normalize(); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Key != tc.key || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), tc.key+": ") {
				t.Fatalf("got %v, want %s: ...%s...", err, tc.key, tc.want)
			}
		})
	}
}

// TestTLS: members join an etcd that requires client certificates; a
// member without one, or one that does not trust etcd's CA, gets a clear
// error and is degraded.
func TestTLS(t *testing.T) {
	c := startCluster(t, 3, true)
	a := c.join(t, "a", newLocal("web"), nil)
	b := c.join(t, "b", newLocal("web"), nil)
	if _, err := a.f.RestartEverywhere(context.Background(), "web", func(context.Context, string) error { return nil }, RestartOptions{}); err != nil {
		t.Fatalf("restart over TLS: %v", err)
	}
	if st := b.f.Status(); st.Degraded || len(st.Members) != 2 {
		t.Errorf("b: %+v", st)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config, *Options)
		want string
	}{
		{"no client certificate", func(cfg *Config, o *Options) { cfg.CertFile, cfg.KeyFile = "", "" }, "remote error: tls: "},
		{"other CA", func(cfg *Config, o *Options) { cfg.CAFile = startCATLS(t) }, "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.tryJoin(t, "x", newLocal("web"), tc.mod)
			if err == nil || !strings.Contains(err.Error(), "etcd https://") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("join: %v, want an error naming etcd and %q", err, tc.want)
			}
			t.Logf("error: %v", err)
		})
	}
}

// startCATLS writes another CA's certificate, which etcd's is not.
func startCATLS(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(p, tlstest.NewCA(t).CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
