package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/batonproxy/baton/backends/backendtest"
)

// scrapeValid fetches /metrics, checks it with Prometheus's own text
// format parser and returns every sample as scrape does.
func scrapeValid(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := p.TextToMetricFamilies(strings.NewReader(string(body))); err != nil {
		t.Fatalf("/metrics is not valid Prometheus text format: %v", err)
	}
	m, err := scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tlsObsConfig is obsConfig with a [[tls]] section and a 1 s handshake
// (and header) timeout. The admin listener moves to 127.0.0.3: listeners
// are handed to the next generation by address, and [[tls]] has
// 127.0.0.2:0.
func tlsObsConfig(dir, url string) string {
	cfg := strings.Replace(obsConfig(dir, "json", url), "[proxy]\n", "[proxy]\nread_header_timeout = \"1s\"\n", 1)
	return strings.Replace(cfg, `listen = "127.0.0.2:0"`, `listen = "127.0.0.3:0"`, 1) + tlsTOML
}

// TestTLSMetrics: on both planes, full and resumed handshakes are counted
// as the clients saw them; failing handshakes (plain HTTP on the TLS port,
// a client that closes, one that says nothing, TLS 1.0, no common cipher,
// an unknown ALPN protocol, an untrusted certificate by Go and by curl)
// each count under their reason; the counters survive an upgrade; the
// certificate expiry gauge is NotAfter - now.
func TestTLSMetrics(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	forEngines(t, func(t *testing.T) {
		var site *tlsSite
		b := newBaton(t, func(dir string) string {
			site = newTLSSite(t, dir)
			return tlsObsConfig(dir, lt.URL)
		})
		b.start()
		taddr, admin := b.tlsAddr(), b.status().Admin

		// Handshakes that work, each followed by a request so that the
		// client takes its session ticket.
		var full, resumed int
		get := func(cfg *tls.Config) {
			t.Helper()
			c, err := tls.Dial("tcp", taddr, cfg)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer c.Close()
			if c.ConnectionState().DidResume {
				resumed++
			} else {
				full++
			}
			fmt.Fprintf(c, "GET /small.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		for range 3 {
			cfg := site.clientConfig("site.test")
			cfg.NextProtos = []string{"http/1.1"}
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			for range 3 {
				get(cfg)
			}
		}
		if full != 3 || resumed != 6 {
			t.Fatalf("clients saw %d full and %d resumed handshakes, want 3 and 6", full, resumed)
		}

		failures := map[string]int{}
		fail := func(reason string, f func() error) {
			t.Helper()
			if err := f(); err != nil {
				t.Fatalf("%s: %v", reason, err)
			}
			failures[reason]++
		}
		dial := func() (net.Conn, error) { return net.DialTimeout("tcp", taddr, 5*time.Second) }
		fail("not_tls", func() error { // answered 400, as net/http does
			c, err := dial()
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 400 {
				return fmt.Errorf("plain HTTP on the TLS port: %v %v, want 400", resp, err)
			}
			return nil
		})
		fail("eof", func() error {
			c, err := dial()
			if err != nil {
				return err
			}
			// Half a ClientHello, then the client goes.
			c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00})
			return c.Close()
		})
		fail("timeout", func() error {
			c, err := dial()
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				return fmt.Errorf("silent client: read %v, want EOF when baton gives up", err)
			}
			return nil
		})
		clientFail := func(reason string, mod func(*tls.Config)) {
			t.Helper()
			fail(reason, func() error {
				cfg := site.clientConfig("site.test")
				mod(cfg)
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", taddr, cfg)
				if err == nil {
					c.Close()
					return fmt.Errorf("handshake succeeded")
				}
				return nil
			})
		}
		clientFail("protocol_version", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 })
		clientFail("no_shared_cipher", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256} // the certificate is ECDSA
		})
		clientFail("no_application_protocol", func(c *tls.Config) { c.NextProtos = []string{"spdy/1"} })
		clientFail("bad_certificate", func(c *tls.Config) { c.RootCAs = x509.NewCertPool() })
		needTool(t, "curl", "curl")
		fail("unknown_ca", func() error {
			port := taddr[strings.LastIndex(taddr, ":")+1:]
			out, err := exec.Command("curl", "-sS", "--http1.1", "--resolve", "site.test:"+port+":127.0.0.2",
				"https://site.test:"+port+"/small.txt").CombinedOutput()
			if err == nil {
				return fmt.Errorf("curl trusted the test CA: %s", out)
			}
			return nil
		})

		want := map[string]float64{
			`baton_tls_handshakes_total{type="full"}`:    float64(full),
			`baton_tls_handshakes_total{type="resumed"}`: float64(resumed),
		}
		for _, r := range []string{"timeout", "eof", "not_tls", "protocol_version", "no_shared_cipher", "no_application_protocol", "bad_certificate", "unknown_ca", "other"} {
			want[`baton_tls_handshake_failures_total{reason="`+r+`"}`] = float64(failures[r])
		}
		check := func(when string) {
			t.Helper()
			var m map[string]float64
			// A failure is counted when baton's side of the handshake
			// ends, which may be just after the client's.
			deadline := time.Now().Add(5 * time.Second)
			for {
				m = scrapeValid(t, admin)
				ok := true
				for k, v := range want {
					ok = ok && m[k] == v
				}
				if ok || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			for k, v := range want {
				if m[k] != v {
					t.Errorf("%s: %s = %g, want %g", when, k, m[k], v)
				}
			}
		}
		check("first generation")

		// The counters survive an upgrade, and the next generation adds
		// to them.
		old := b.pid()
		b.signal(syscall.SIGHUP)
		b.waitNewPID(old)
		check("after an upgrade")
		cfg := site.clientConfig("site.test")
		cfg.NextProtos = []string{"http/1.1"}
		get(cfg)
		want[`baton_tls_handshakes_total{type="full"}`]++
		check("a handshake after the upgrade")

		// Expiry: NotAfter - now, per certificate.
		for _, name := range []string{"site", "other"} {
			file := filepath.Join(b.dir, name+".crt")
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(raw)
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			m := scrapeValid(t, admin)
			after := time.Now()
			key := fmt.Sprintf(`baton_tls_certificate_expiry_seconds{cert_file=%q,subject=%q}`, file, cert.Subject.CommonName)
			got, ok := m[key]
			if !ok {
				t.Errorf("no %s", key)
				continue
			}
			lo, hi := cert.NotAfter.Sub(after).Seconds()-1, cert.NotAfter.Sub(before).Seconds()+1
			if got < lo || got > hi {
				t.Errorf("%s = %g, want NotAfter - now = %g..%g", key, got, lo+1, hi-1)
			}
		}
	})
}

// TestProcessMetrics: /metrics has the standard process_* set, for the
// serving process, as /proc tells from outside; the whole exposition
// passes Prometheus's parser.
func TestProcessMetrics(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return obsConfig(dir, "json", lt.URL) })
	admin := b.status().Admin
	pid := b.pid()
	m := scrapeValid(t, admin)
	proc := func(name string) string {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m["process_open_fds"], float64(len(fds)); math.Abs(got-want) > 5 {
		t.Errorf("process_open_fds = %g, /proc/%d/fd has %g", got, pid, want)
	}
	var maxFDs float64
	for _, line := range strings.Split(proc("limits"), "\n") {
		if f := strings.Fields(line); strings.HasPrefix(line, "Max open files") && len(f) >= 4 {
			maxFDs, _ = strconv.ParseFloat(f[3], 64)
		}
	}
	if got := m["process_max_fds"]; got != maxFDs || got == 0 {
		t.Errorf("process_max_fds = %g, /proc/%d/limits says %g", got, pid, maxFDs)
	}
	statm := strings.Fields(proc("statm"))
	vsz, _ := strconv.ParseFloat(statm[0], 64)
	rss, _ := strconv.ParseFloat(statm[1], 64)
	page := float64(os.Getpagesize())
	if got := m["process_virtual_memory_bytes"]; math.Abs(got-vsz*page) > 0.2*vsz*page {
		t.Errorf("process_virtual_memory_bytes = %g, /proc/%d/statm says %g", got, pid, vsz*page)
	}
	if got := m["process_resident_memory_bytes"]; math.Abs(got-rss*page) > 0.2*rss*page || got < 1<<20 {
		t.Errorf("process_resident_memory_bytes = %g, /proc/%d/statm says %g", got, pid, rss*page)
	}
	if got := m["process_cpu_seconds_total"]; got <= 0 || got > 60 {
		t.Errorf("process_cpu_seconds_total = %g", got)
	}
	started := b.status().Started
	if got := m["process_start_time_seconds"]; math.Abs(got-float64(started.UnixNano())/1e9) > 2 {
		t.Errorf("process_start_time_seconds = %g, baton says it started at %v", got, started)
	}
}
