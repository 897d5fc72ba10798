package h2

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2specVersion is the h2spec the test installs when it is not on PATH.
const h2specVersion = "github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible"

// h2specBin finds h2spec, or installs it into a temporary GOBIN; under
// CI=true a missing h2spec is a failure.
func h2specBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if os.Getenv("CI") != "true" && testing.Short() {
		t.Skip("h2spec not installed (-short)")
	}
	gobin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", h2specVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install h2spec: %v\n%s", err, out)
	}
	return filepath.Join(gobin, "h2spec")
}

// runH2spec runs h2spec over TLS against addr and returns passed, total
// and the report.
func runH2spec(t *testing.T, bin, addr string, extra ...string) (int, int, string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-t", "-k", "-h", "127.0.0.1", "-p", port, "-o", "2"}, extra...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // exits non-zero when a test fails
	m := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("h2spec printed no summary:\n%s", out.String())
	}
	total, _ := strconv.Atoi(m[1])
	passed, _ := strconv.Atoi(m[2])
	return passed, total, out.String()
}

// TestH2spec runs h2spec against the engine served over TLS: all 145
// must pass. x/net/http2's own server is run too, for comparison (it
// fails some; that is only logged).
func TestH2spec(t *testing.T) {
	bin := h2specBin(t)
	ts := startTestServer(t, Config{}, true)
	passed, total, report := runH2spec(t, bin, ts.addr())
	if passed != 145 || total != 145 {
		t.Errorf("h2spec against the engine: %d of %d passed, want 145 of 145\n%s", passed, total, failures(report))
	}
	// Strict mode adds the tests of SHOULDs: logged, not required.
	sp, st, sr := runH2spec(t, bin, ts.addr(), "-S")
	t.Logf("h2spec -S (strict) against the engine: %d/%d\n%s", sp, st, failures(sr))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(testBody) }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{"h2"}},
		ErrorLog:  log.New(io.Discard, "", 0)}
	if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "")
	}()
	defer func() {
		srv.Close()
		<-done
	}()
	xp, xt, xr := runH2spec(t, bin, ln.Addr().String())
	t.Logf("h2spec: engine %d/%d, x/net/http2 %d/%d\nx/net/http2 failures:\n%s", passed, total, xp, xt, failures(xr))
}

// failures is the failed part of an h2spec report.
func failures(report string) string {
	if i := strings.Index(report, "Failures:"); i >= 0 {
		return report[i:]
	}
	return ""
}
