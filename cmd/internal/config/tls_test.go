package config_test

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/internal/tlstest"
)

// TestParseTLS: [[tls]] sections load their certificates relative to the
// configuration file; each bad certificate or key is reported with the
// file, the key and the reason.
func TestParseTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	site := ca.Issue(t, time.Time{}, time.Time{}, "site.test")
	other := ca.Issue(t, time.Time{}, time.Time{}, "other.test")
	expired := ca.Issue(t, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour), "old.test")
	future := ca.Issue(t, time.Now().Add(time.Hour), time.Now().Add(48*time.Hour), "new.test")
	site.Write(t, dir, "site")
	other.Write(t, dir, "other")
	expired.Write(t, dir, "expired")
	future.Write(t, dir, "future")
	if err := os.WriteFile(filepath.Join(dir, "garbage.crt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	cert := func(c, k string) string { return `{ cert_file = "` + c + `", key_file = "` + k + `" }` }
	section := func(extra string, certs ...string) string {
		return "[[tls]]\nlisten = [\"127.0.0.1:8443\"]\ncertificates = [" + strings.Join(certs, ", ") + "]\n" + extra
	}
	parse := func(text string) (*config.Config, error) {
		return config.Parse("baton.toml", filepath.Join(dir, "baton.toml"), text)
	}

	c, err := parse(listen + backendA + section("", cert("site.crt", "site.key"), cert("other.crt", "other.key")))
	if err != nil {
		t.Fatalf("valid: %v", err)
	}
	if len(c.TLS) != 1 || len(c.TLS[0].Certificates) != 2 {
		t.Fatalf("TLS: %+v", c.TLS)
	}
	tl := c.TLS[0]
	if !tl.HTTP2 || tl.MinVersion != tls.VersionTLS12 {
		t.Errorf("defaults: http2 %v, min version %x; want true, TLS 1.2", tl.HTTP2, tl.MinVersion)
	}
	if g, e := tl.Certificates[1].CertFile, filepath.Join(dir, "other.crt"); g != e {
		t.Errorf("cert file: got %q, want %q", g, e)
	}
	if g := tl.ServerConfig().NextProtos; strings.Join(g, ",") != "h2,http/1.1" {
		t.Errorf("ALPN: got %q", g)
	}

	c, err = parse(section("http2 = false\nmin_version = \"1.3\"\n", cert("site.crt", "site.key")) + backendA)
	if err != nil {
		t.Fatalf("TLS only, options: %v", err)
	}
	if tl := c.TLS[0]; tl.HTTP2 || tl.MinVersion != tls.VersionTLS13 || len(c.Listen) != 0 {
		t.Errorf("options: %+v", tl)
	}

	tests := []struct {
		name string
		text string
		key  string
		want string
	}{
		{"missing cert", section("", cert("nope.crt", "site.key")), "tls[0].certificates[0].cert_file", "nope.crt: no such file"},
		{"missing key", section("", cert("site.crt", "nope.key")), "tls[0].certificates[0].key_file", "nope.key: no such file"},
		{"unreadable cert", section("", cert("adir", "site.key")), "tls[0].certificates[0].cert_file", "adir: cannot read: is a directory"},
		{"not PEM", section("", cert("garbage.crt", "site.key")), "tls[0].certificates[0].cert_file", `garbage.crt: no PEM "CERTIFICATE" block`},
		{"key is a cert", section("", cert("site.crt", "site.crt")), "tls[0].certificates[0].key_file", "site.crt: no PEM private key block"},
		{"mismatched", section("", cert("site.crt", "site.key"), cert("site.crt", "other.key")), "tls[0].certificates[1].key_file", "other.key does not match the certificate in " + filepath.Join(dir, "site.crt")},
		{"expired", section("", cert("expired.crt", "expired.key")), "tls[0].certificates[0].cert_file", `expired.crt: certificate for "old.test" expired on `},
		{"not yet valid", section("", cert("future.crt", "future.key")), "tls[0].certificates[0].cert_file", `future.crt: certificate for "new.test" is not valid before `},
		{"no certificates", "[[tls]]\nlisten = [\"127.0.0.1:8443\"]\n", "tls[0].certificates", "no certificate"},
		{"no listen", "[[tls]]\ncertificates = [" + cert("site.crt", "site.key") + "]\n", "tls[0].listen", "no listen address"},
		{"listen clash", section("", cert("site.crt", "site.key")) + "[proxy]\nlisten = [\"127.0.0.1:8443\"]\n", "tls[0].listen[0]", "listed twice"},
		{"bad version", section("min_version = \"1.1\"\n", cert("site.crt", "site.key")), "tls[0].min_version", `"1.1": want "1.2" or "1.3"`},
		{"unknown key", section("ciphers = []\n", cert("site.crt", "site.key")), "tls[0].ciphers", "unknown key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(tc.text + backendA)
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *config.Error", err)
			}
			if ce.Key != tc.key || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got key %q, error %q; want key %q, error containing %q", ce.Key, err, tc.key, tc.want)
			}
		})
	}
}

// TestParseLongDrain: proxy.long_drain_timeout, zero by default (handoff's
// default applies), and never shorter than drain_timeout.
func TestParseLongDrain(t *testing.T) {
	for _, tc := range []struct {
		extra string
		want  time.Duration
		err   string
	}{
		{"", 0, ""},
		{"long_drain_timeout = \"2h\"\n", 2 * time.Hour, ""},
		{"drain_timeout = \"1m\"\nlong_drain_timeout = \"30s\"\n", 0, "proxy.long_drain_timeout: 30s is shorter than drain_timeout (1m0s)"},
	} {
		c, err := config.Parse("baton.toml", "/etc/baton/baton.toml", listen+tc.extra+backendA)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want %q", tc.extra, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.extra, err)
		case c.Server.LongDrainTimeout != tc.want:
			t.Errorf("%q: got %s, want %s", tc.extra, c.Server.LongDrainTimeout, tc.want)
		}
	}
}
