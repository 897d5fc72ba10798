package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/soak"
	"github.com/batonproxy/baton/internal/tlstest"
)

// tlsSite is the certificates of a test site: site.test (the default) and
// other.test, signed by a test CA, written into a baton's directory.
type tlsSite struct {
	ca    *tlstest.CA
	caPEM string // path of the CA certificate
	dir   string
}

func newTLSSite(t testing.TB, dir string) *tlsSite {
	t.Helper()
	s := &tlsSite{ca: tlstest.NewCA(t), dir: dir}
	s.caPEM = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(s.caPEM, s.ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	s.ca.Issue(t, time.Time{}, time.Time{}, "site.test", "127.0.0.2").Write(t, dir, "site")
	s.ca.Issue(t, time.Time{}, time.Time{}, "other.test").Write(t, dir, "other")
	return s
}

// tlsTOML is a [[tls]] section on a free port of 127.0.0.2 (127.0.0.1:0 is
// [proxy]'s; listeners are handed on by address).
const tlsTOML = `
[[tls]]
listen = ["127.0.0.2:0"]
certificates = [ { cert_file = "site.crt", key_file = "site.key" },
                 { cert_file = "other.crt", key_file = "other.key" } ]
`

// clientConfig trusts the site's CA and asks for name.
func (s *tlsSite) clientConfig(name string) *tls.Config {
	return &tls.Config{RootCAs: s.ca.Pool(), ServerName: name}
}

// tlsAddr is the address of baton's first TLS listener.
func (b *batonProc) tlsAddr() string {
	b.t.Helper()
	for _, a := range b.status().Listeners {
		if strings.HasPrefix(a, "127.0.0.2:") {
			return a
		}
	}
	b.t.Fatal("status lists no TLS listener")
	return ""
}

// httpsLoad runs HTTPS clients against a target until stop; every request
// is checked (status 200 and the exact body) and nothing is retried by
// this code.
type httpsLoad struct {
	addr string
	cfg  *tls.Config
	stop chan struct{}
	wg   sync.WaitGroup
	trs  []*http.Transport

	ok    [5]atomic.Int64
	mu    sync.Mutex
	fails []string
	nfail atomic.Int64
	posts map[string]bool

	// TLS handshakes that were not a client's first (reconnections and
	// the new-connection clients' later ones), and how many resumed.
	handshakes, resumed atomic.Int64
}

// dialer returns a TLS dial function with its own session cache that
// counts every handshake after its first.
func (l *httpsLoad) dialer(cfg *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	cfg = cfg.Clone()
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	var n atomic.Int64
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if n.Add(1) > 1 {
			l.handshakes.Add(1)
			if c.(*tls.Conn).ConnectionState().DidResume {
				l.resumed.Add(1)
			}
		}
		return c, nil
	}
}

const (
	kH2Get = iota
	kH1Get
	kH2Post
	kRawTLS
	kNewConn
)

var httpsKindNames = [5]string{"h2-get", "h1-tls-get", "h2-post", "raw-tls-keepalive", "new-conn"}

type httpsSpec struct{ H2Get, H1Get, H2Post, RawTLS, NewConn int }

func startHTTPSLoad(t testing.TB, addr string, cfg *tls.Config, spec httpsSpec) *httpsLoad {
	t.Helper()
	l := &httpsLoad{addr: addr, cfg: cfg, stop: make(chan struct{}), posts: map[string]bool{}}
	deadline := time.Now().Add(maxLoad)
	run := func(n int, f func()) {
		for i := 0; i < n; i++ {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for time.Now().Before(deadline) {
					select {
					case <-l.stop:
						return
					default:
					}
					f()
				}
			}()
		}
	}
	// Each Go client has its own transport, hence its own connection.
	client := func(h2 bool) *http.Client {
		tc := cfg.Clone()
		tc.NextProtos = []string{"h2", "http/1.1"}
		if !h2 {
			tc.NextProtos = []string{"http/1.1"}
		}
		tr := &http.Transport{DialTLSContext: l.dialer(tc), ForceAttemptHTTP2: h2, DisableCompression: true}
		l.trs = append(l.trs, tr)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	for i := 0; i < spec.H2Get; i++ {
		c := client(true)
		run(1, func() { l.get(kH2Get, c, "HTTP/2.0") })
	}
	for i := 0; i < spec.H1Get; i++ {
		c := client(false)
		run(1, func() { l.get(kH1Get, c, "HTTP/1.1") })
	}
	for i := 0; i < spec.H2Post; i++ {
		c := client(true)
		run(1, func() { l.post(c) })
	}
	for i := 0; i < spec.RawTLS; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.raw(deadline)
		}()
	}
	for i := 0; i < spec.NewConn; i++ {
		cfg := cfg.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		dial := l.dialer(cfg)
		run(1, func() { l.newConn(dial) })
	}
	t.Cleanup(l.halt)
	return l
}

func (l *httpsLoad) fail(kind int, format string, args ...any) {
	l.nfail.Add(1)
	msg := httpsKindNames[kind] + ": " + fmt.Sprintf(format, args...)
	l.mu.Lock()
	if len(l.fails) < 20 {
		l.fails = append(l.fails, time.Now().Format("15:04:05.000")+" "+msg)
	}
	l.mu.Unlock()
	time.Sleep(time.Millisecond) // a failing client must not spin
}

func (l *httpsLoad) get(kind int, c *http.Client, proto string) {
	resp, err := c.Get("https://" + l.addr + "/small.txt")
	if err != nil {
		l.fail(kind, "%v", err)
		return
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != smallBody || resp.Proto != proto {
		l.fail(kind, "%s %d, %d bytes, %v: %.200s", resp.Proto, resp.StatusCode, len(b), err, b)
		return
	}
	l.ok[kind].Add(1)
}

func (l *httpsLoad) post(c *http.Client) {
	idb := make([]byte, 8)
	_, _ = rand.Read(idb)
	id := hex.EncodeToString(idb)
	body := strings.Repeat("p", 512)
	req, _ := http.NewRequest(http.MethodPost, "https://"+l.addr+"/cgi-bin/post.sh", strings.NewReader(body))
	req.Header.Set("X-Request-Id", id)
	resp, err := c.Do(req)
	if err != nil {
		l.fail(kH2Post, "%v", err)
		return
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("id=%s len=%d ", id, len(body)); err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(b), want) {
		l.fail(kH2Post, "status %d, %v: %.200s", resp.StatusCode, err, b)
		return
	}
	l.mu.Lock()
	l.posts[id] = true
	l.mu.Unlock()
	l.ok[kH2Post].Add(1)
}

// raw is an HTTP/1.1 keep-alive client over TLS that never retries; it
// reconnects only after a response with Connection: close.
func (l *httpsLoad) raw(deadline time.Time) {
	var (
		c  *tls.Conn
		br *bufio.Reader
	)
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	cfg := l.cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	dial := l.dialer(cfg)
	req := []byte("GET /small.txt HTTP/1.1\r\nHost: site.test\r\n\r\n")
	for time.Now().Before(deadline) {
		select {
		case <-l.stop:
			return
		default:
		}
		if c == nil {
			nc, err := dial(context.Background(), "tcp", l.addr)
			if err != nil {
				l.fail(kRawTLS, "dial: %v", err)
				continue
			}
			c = nc.(*tls.Conn)
			br = bufio.NewReader(c)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		resp, err := func() (*http.Response, error) {
			if _, err := c.Write(req); err != nil {
				return nil, err
			}
			return http.ReadResponse(br, nil)
		}()
		var b []byte
		if err == nil {
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err != nil || resp.StatusCode != 200 || string(b) != smallBody {
			l.fail(kRawTLS, "%v %.200s", err, b)
			c.Close()
			c = nil
			continue
		}
		l.ok[kRawTLS].Add(1)
		if resp.Close {
			c.Close()
			c = nil
		}
	}
}

// newConn makes one request on a new TLS connection (resuming a session
// when it can).
func (l *httpsLoad) newConn(dial func(context.Context, string, string) (net.Conn, error)) {
	c, err := dial(context.Background(), "tcp", l.addr)
	if err != nil {
		l.fail(kNewConn, "dial: %v", err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET /small.txt HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"); err != nil {
		l.fail(kNewConn, "write: %v", err)
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err != nil || resp.StatusCode != 200 || string(b) != smallBody {
		l.fail(kNewConn, "%v %.200s", err, b)
		return
	}
	l.ok[kNewConn].Add(1)
}

// progress waits until n more requests of every running kind succeeded.
func (l *httpsLoad) progress(t testing.TB, n int64) {
	t.Helper()
	var start [len(httpsKindNames)]int64
	for i := range start {
		start[i] = l.ok[i].Load()
	}
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more successful HTTPS requests of each kind", n), func() bool {
		for i := range start {
			if start[i] > 0 && l.ok[i].Load()-start[i] < n {
				return false
			}
		}
		return true
	})
}

func (l *httpsLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	for _, tr := range l.trs {
		tr.CloseIdleConnections()
	}
}

// check stops the load and asserts zero failures.
func (l *httpsLoad) check(t testing.TB) {
	t.Helper()
	l.halt()
	var summary []string
	for i, name := range httpsKindNames {
		if n := l.ok[i].Load(); n > 0 {
			summary = append(summary, fmt.Sprintf("%s %d ok", name, n))
		}
	}
	t.Logf("https load: %s; %d failed", strings.Join(summary, ", "), l.nfail.Load())
	if n := l.nfail.Load(); n != 0 {
		t.Errorf("%d failed HTTPS requests, want 0; first ones:\n%s", n, strings.Join(l.fails, "\n"))
	}
}

func (l *httpsLoad) postIDs() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]bool, len(l.posts))
	for k := range l.posts {
		out[k] = true
	}
	return out
}

// servedCert dials addr with SNI name and returns the certificate served.
func servedCert(t testing.TB, addr, name string) (dnsNames []string, serial string) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS dial %s (SNI %q): %v", addr, name, err)
	}
	defer c.Close()
	leaf := c.ConnectionState().PeerCertificates[0]
	return leaf.DNSNames, leaf.SerialNumber.String()
}

// TestTLS serves HTTPS in front of a real lighttpd: certificates by SNI,
// h2 and HTTP/1.1 by ALPN, X-Forwarded-Proto, curl with both; then four
// SIGHUP upgrades under HTTPS load (Go h2 and HTTP/1.1 clients, h2 POSTs,
// a raw keep-alive TLS client that never retries, new connections): zero
// failures, every POST processed once. A broken certificate fails
// `ctl upgrade` with the reason while the old process serves on; a
// renewed one is served after the next upgrade. Every reconnection
// resumes its TLS session, across upgrades too.
func TestTLS(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var site *tlsSite
	good := func(dir string) string {
		return batonConfig(dir, "", backendTOML("web1", lt.URL)) + tlsTOML
	}
	b := newBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return good(dir)
	})
	b.start()
	addr := b.tlsAddr()

	t.Run("SNI", func(t *testing.T) {
		for _, tc := range []struct{ sni, want string }{
			{"site.test", "site.test"},
			{"other.test", "other.test"},
			{"unknown.test", "site.test"}, // the default
			{"", "site.test"},
		} {
			if names, _ := servedCert(t, addr, tc.sni); len(names) == 0 || names[0] != tc.want {
				t.Errorf("SNI %q: served %v, want %s", tc.sni, names, tc.want)
			}
		}
	})
	t.Run("curl", func(t *testing.T) {
		needTool(t, "curl", "curl")
		port := addr[strings.LastIndex(addr, ":")+1:]
		for _, tc := range []struct{ flag, proto string }{{"--http2", "HTTP/2"}, {"--http1.1", "HTTP/1.1"}} {
			out, err := exec.Command("curl", "-sS", "-i", tc.flag, "--cacert", site.caPEM,
				"--resolve", "site.test:"+port+":127.0.0.2", "https://site.test:"+port+"/cgi-bin/headers.sh").CombinedOutput()
			if err != nil {
				t.Fatalf("curl %s: %v\n%s", tc.flag, err, out)
			}
			if s := string(out); !strings.HasPrefix(s, tc.proto+" 200") || !strings.Contains(s, "proto=https host=site.test:"+port+" for=127.0.0.1") {
				t.Errorf("curl %s: got\n%s\nwant %s 200 and proto=https", tc.flag, s, tc.proto)
			}
		}
	})

	t.Run("openssl KeyUpdate", func(t *testing.T) {
		needTool(t, "openssl", "openssl")
		opensslKeyUpdate(t, addr, site.caPEM)
	})

	l := startHTTPSLoad(t, addr, site.clientConfig("site.test"), httpsSpec{H2Get: 4, H1Get: 2, H2Post: 2, RawTLS: 2, NewConn: 1})
	l.progress(t, 20)
	pid := b.pid()
	for i := 1; i <= 4; i++ {
		b.signal(syscall.SIGHUP)
		pid = b.waitNewPID(pid)
		l.progress(t, 10)
	}

	t.Run("broken certificate", func(t *testing.T) {
		// certbot deployed a key that does not go with the certificate.
		copyFile(t, filepath.Join(b.dir, "other.key"), filepath.Join(b.dir, "site.key"), 0o600)
		t0 := time.Now()
		out, errOut, code := b.ctl("upgrade")
		t.Logf("failed upgrade took %s", time.Since(t0))
		if code != 1 || !strings.Contains(errOut, "tls[0].certificates[0].key_file") || !strings.Contains(errOut, "does not match") {
			t.Errorf("ctl upgrade with a mismatched key: exit %d, stdout %q, stderr %q; want exit 1 naming the key and the reason", code, out, errOut)
		}
		_, errOut, code = runBaton(t, "check", "--config", b.cfgPath)
		if code != 1 || !strings.Contains(errOut, "site.key does not match") {
			t.Errorf("check with a mismatched key: exit %d, stderr %q", code, errOut)
		}
		if got := b.pid(); got != pid {
			t.Errorf("pid file after a refused upgrade: %d, want %d", got, pid)
		}
		l.progress(t, 10)
		// A renewed certificate is served after the next upgrade.
		_, before := servedCert(t, addr, "site.test")
		site.ca.Issue(t, time.Time{}, time.Time{}, "site.test", "127.0.0.2").Write(t, b.dir, "site")
		t0 = time.Now()
		out, errOut, code = b.ctl("upgrade")
		t.Logf("upgrade took %s: %s", time.Since(t0), out)
		if code != 0 {
			t.Fatalf("ctl upgrade with a renewed certificate: exit %d: %s %s", code, out, errOut)
		}
		pid = b.pid()
		if _, after := servedCert(t, addr, "site.test"); after == before {
			t.Errorf("still serving certificate serial %s after renewal and upgrade", before)
		}
		l.progress(t, 10)
	})

	l.check(t)
	ids, err := lt.PostIDs()
	if err != nil {
		t.Fatal(err)
	}
	checkPostsOnce(t, l.postIDs(), ids)
	l.checkResumed(t)
}

// checkResumed asserts that reconnecting clients resumed their TLS
// sessions, across upgrades too: the session ticket keys are shared.
func (l *httpsLoad) checkResumed(t testing.TB) {
	t.Helper()
	n, r := l.handshakes.Load(), l.resumed.Load()
	t.Logf("TLS handshakes after each client's first: %d, resumed %d (%.1f%%)", n, r, 100*float64(r)/float64(max(n, 1)))
	if n == 0 || r != n {
		t.Errorf("%d of %d later handshakes resumed, want all", r, n)
	}
}

// h2loadResult is what h2load's "requests:" and "status codes:" lines say.
type h2loadResult struct {
	total, succeeded, failed, errored, timeout int
	notOK                                      int // 3xx, 4xx and 5xx
	out                                        string
}

var (
	h2loadRequests = regexp.MustCompile(`requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2loadStatus   = regexp.MustCompile(`status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// runH2load runs h2load against url for d with c clients and m streams
// each; h2load does not check certificates.
func runH2load(t testing.TB, url string, d time.Duration, c, m int) h2loadResult {
	t.Helper()
	out, err := exec.Command("h2load", "-c", strconv.Itoa(c), "-m", strconv.Itoa(m), "-D", strconv.Itoa(int(d.Seconds())), url).CombinedOutput()
	r := h2loadResult{out: string(out), failed: -1}
	if err != nil {
		t.Errorf("h2load: %v\n%s", err, out)
		return r
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	if m := h2loadRequests.FindStringSubmatch(r.out); m != nil {
		r.total, r.succeeded, r.failed, r.errored, r.timeout = atoi(m[1]), atoi(m[2]), atoi(m[3]), atoi(m[4]), atoi(m[5])
	}
	if m := h2loadStatus.FindStringSubmatch(r.out); m != nil {
		r.notOK = atoi(m[1]) + atoi(m[2]) + atoi(m[3])
	}
	return r
}

// TestTLSRestartsAndUpgrades: HTTPS in front of a real Apache (graceful)
// and a real lighttpd (stop-start). h2load runs while each backend is
// restarted (h2load ends a client at its first GOAWAY, so it cannot judge
// upgrades); then Go h2 and HTTP/1.1 clients and h2 POSTs run while baton
// upgrades and the backends restart, interleaved. Zero failed requests or
// streams; every POST processed once.
func TestTLSRestartsAndUpgrades(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var site *tlsSite
	b := startBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, "", restartable("apache", ap, "graceful"), restartable("lighttpd", lt, "stop-start")) + tlsTOML
	})
	addr := b.tlsAddr()
	restart := func(name string) {
		t.Helper()
		if out, errOut, code := b.ctl("restart", name); code != 0 {
			t.Fatalf("restart %s: exit %d: %s %s", name, code, out, errOut)
		}
	}

	if _, err := exec.LookPath("h2load"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no h2load (Debian package nghttp2-client; CI=true: this is a failure)")
		}
		t.Log("no h2load (Debian package nghttp2-client): skipping its part")
	} else {
		done := make(chan h2loadResult, 1)
		go func() { done <- runH2load(t, "https://"+addr+"/small.txt", 5*time.Second, 4, 8) }()
		time.Sleep(500 * time.Millisecond) // why: h2load has no readiness signal; restarts must fall inside its run
		restart("apache")
		restart("lighttpd")
		r := <-done
		t.Logf("h2load during restarts: %d requests, %d succeeded, %d failed, %d errored, %d not 2xx", r.total, r.succeeded, r.failed, r.errored, r.notOK)
		if r.total == 0 || r.succeeded != r.total || r.failed != 0 || r.errored != 0 || r.timeout != 0 || r.notOK != 0 {
			t.Errorf("h2load during backend restarts:\n%s", r.out)
		}
	}

	l := startHTTPSLoad(t, addr, site.clientConfig("site.test"), httpsSpec{H2Get: 4, H1Get: 2, H2Post: 2, RawTLS: 2})
	l.progress(t, 20)
	pid := b.pid()
	for i, name := range []string{"apache", "lighttpd", "apache"} {
		b.signal(syscall.SIGHUP)
		pid = b.waitNewPID(pid)
		l.progress(t, 10)
		restart(name)
		l.progress(t, 10)
		t.Logf("round %d: upgraded to pid %d, restarted %s", i+1, pid, name)
	}
	l.check(t)
	var ids []string
	for _, s := range []*backendtest.Server{ap, lt} {
		got, err := s.PostIDs()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	checkPostsOnce(t, l.postIDs(), ids)
}

// TestSoakHTTPS: `baton soak` against an https:// target over HTTP/2,
// trusting the site's CA, while baton upgrades every 2 s and Apache
// (graceful) and lighttpd (stop-start) restart every 3 s: no failure.
func TestSoakHTTPS(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var site *tlsSite
	b := startBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, "", restartable("apache", ap, "graceful"), restartable("lighttpd", lt, "stop-start")) + tlsTOML
	})
	port := b.tlsAddr()[len("127.0.0.2:"):]
	figures := filepath.Join(t.TempDir(), "soak.json")
	// The certificate names 127.0.0.2 too, so the URL needs no SNI tricks.
	out, errOut, code := runBaton(t, "soak", "--target", "https://127.0.0.2:"+port+"/", "--path", "/small.txt", "--path", "/index.html",
		"--cacert", site.caPEM, "--h2", "--rate", "200", "--duration", "8s", "--socket", b.socket,
		"--upgrade-every", "2s", "--restart-every", "3s", "--json", figures)
	if code != 0 {
		t.Fatalf("soak: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("soak summary:\n%s", out)
	var rep soak.Report
	raw, err := os.ReadFile(figures)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("figures do not parse: %v", err)
	}
	kinds := map[string]int{}
	for _, e := range rep.Events {
		kinds[e.Kind]++
	}
	if kinds["upgrade"] < 3 || kinds["restart"] < 2 || rep.Failed != 0 || rep.Requests < 1000 {
		t.Errorf("figures: %v events, %d requests, %d failed; want >= 3 upgrades, >= 2 restarts, >= 1000 requests, 0 failed", kinds, rep.Requests, rep.Failed)
	}
}

// opensslKeyUpdate sends a request with openssl s_client, then a TLS 1.3
// KeyUpdate that asks for one in return (s_client's "K" command), then a
// request on the same connection: both are answered, the second under the
// new keys.
func opensslKeyUpdate(t *testing.T, addr, caPEM string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", "s_client", "-connect", addr, "-servername", "site.test",
		"-CAfile", caPEM, "-tls1_3", "-alpn", "http/1.1", "-verify_return_error")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var seen []string
	waitFor := func(want string) {
		t.Helper()
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("openssl ended before %q; output:\n%s", want, strings.Join(seen, "\n"))
				}
				seen = append(seen, line)
				if strings.Contains(line, want) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("no %q from openssl; output:\n%s", want, strings.Join(seen, "\n"))
			}
		}
	}
	request := "GET /cgi-bin/headers.sh HTTP/1.1\r\nHost: site.test\r\n\r\n"
	io.WriteString(stdin, request)
	waitFor("proto=https")
	io.WriteString(stdin, "K\n")
	waitFor("KEYUPDATE")
	io.WriteString(stdin, strings.Replace(request, "\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1))
	waitFor("proto=https")
	waitFor("closed")
}
