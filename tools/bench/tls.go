package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The HTTPS part of the bench: HAProxy, nginx and baton (one thread each)
// terminate TLS with the same ECDSA P-256 certificate in front of the same
// nginx backend. Three figures per setup: keep-alive HTTPS req/s (wrk),
// new TLS connections per second (wrk with "Connection: close": wrk does
// not resume sessions, so each is a full handshake), and HTTP/2 req/s
// (h2load, if installed: Debian package nghttp2-client).

const (
	tlsConns    = 50
	h2Streams   = 10
	tlsHAProxy  = "haproxy"
	tlsNginx    = "nginx"
	tlsBaton    = "baton (stdlib, 1 thread)"
	tlsEpoll    = "baton (epoll, 1 loop)"
	tlsCertName = "bench-site"
)

var tlsSetups = []string{tlsHAProxy, tlsNginx, tlsBaton, tlsEpoll}

// tlsResults are the HTTPS runs: per setup, one value per round.
type tlsResults struct {
	keepAlive, handshakes, h2 map[string][]float64
	h2load                    bool
	errs                      []string
}

func (r *tlsResults) failed() bool { return len(r.errs) > 0 }

// measureTLS starts the TLS setups, measures them in turns, and stops
// them (b.close stops anything left).
func (b *bench) measureTLS(ctx context.Context) tlsResults {
	r := tlsResults{keepAlive: map[string][]float64{}, handshakes: map[string][]float64{}, h2: map[string][]float64{}}
	h2load, err := exec.LookPath("h2load")
	r.h2load = err == nil
	if err := writeBenchCert(b.dir); err != nil {
		r.errs = append(r.errs, err.Error())
		return r
	}
	addrs := map[string]string{}
	var started []*proc
	defer func() {
		for _, p := range started {
			b.stopProc(p)
		}
	}()
	for _, name := range tlsSetups {
		p, addr, err := b.startTLSServer(ctx, name)
		if err != nil {
			r.errs = append(r.errs, err.Error())
			return r
		}
		started = append(started, p)
		addrs[name] = addr
	}
	for round := 1; round <= b.opts.rounds && ctx.Err() == nil; round++ {
		for _, name := range tlsSetups {
			url := "https://" + addrs[name] + "/small.txt"
			add := func(dst map[string][]float64, what string, v float64, err error) {
				if err != nil {
					r.errs = append(r.errs, fmt.Sprintf("%s %s: %v", name, what, err))
					return
				}
				dst[name] = append(dst[name], v)
				b.progress("https round %d/%d: %s %s %.0f/s", round, b.opts.rounds, name, what, v)
			}
			v, err := wrkRate(ctx, b.tools.wrk, url, b.opts.duration)
			add(r.keepAlive, "keep-alive", v, err)
			v, err = wrkRate(ctx, b.tools.wrk, url, b.opts.duration, "-H", "Connection: close")
			add(r.handshakes, "handshakes", v, err)
			if r.h2load {
				v, err = h2loadRate(ctx, h2load, url, b.opts.duration)
				add(r.h2, "h2", v, err)
			}
		}
	}
	return r
}

// wrkRate runs wrk -t1 with extra arguments and returns its Requests/sec;
// any socket error or non-2xx answer is an error.
func wrkRate(ctx context.Context, wrk, url string, d time.Duration, extra ...string) (float64, error) {
	args := append([]string{"-t1", "-c" + strconv.Itoa(tlsConns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--timeout", "5s", "--latency"}, extra...)
	out, err := exec.CommandContext(ctx, wrk, append(args, url)...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("wrk: %w: %s", err, out)
	}
	res, err := parseWrk(string(out))
	if err != nil {
		return 0, err
	}
	if n := res.errs.total(); n > 0 {
		return 0, fmt.Errorf("wrk: %d errors (%v)", n, res.errs)
	}
	return res.rps, nil
}

var reH2load = regexp.MustCompile(`finished in [0-9.]+\w+, ([0-9.]+) req/s`)
var reH2loadFail = regexp.MustCompile(`requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored`)

func h2loadRate(ctx context.Context, h2load, url string, d time.Duration) (float64, error) {
	out, err := exec.CommandContext(ctx, h2load, "-c", strconv.Itoa(tlsConns), "-m", strconv.Itoa(h2Streams),
		"-D", strconv.Itoa(int(d.Seconds())), url).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("h2load: %w: %s", err, out)
	}
	m := reH2load.FindSubmatch(out)
	f := reH2loadFail.FindSubmatch(out)
	if m == nil || f == nil {
		return 0, fmt.Errorf("h2load output: %s", out)
	}
	if string(f[1]) != "0" || string(f[2]) != "0" {
		return 0, fmt.Errorf("h2load: %s failed, %s errored", f[1], f[2])
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// writeBenchCert writes a self-signed ECDSA P-256 certificate for
// 127.0.0.1, made now, as bench-site.crt, .key and .pem (both, for HAProxy).
func writeBenchCert(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("bench: certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("bench: certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("bench: certificate: %w", err)
	}
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	k := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	for name, data := range map[string][]byte{".crt": crt, ".key": k, ".pem": append(slices.Clip(crt), k...)} {
		if err := os.WriteFile(filepath.Join(dir, tlsCertName+name), data, 0o600); err != nil {
			return fmt.Errorf("bench: certificate: %w", err)
		}
	}
	return nil
}

const haproxyTLSConf = `global
	nbthread 1
	maxconn 4000
	pidfile {{.Dir}}/haproxy-tls.pid

defaults
	mode http
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	timeout http-request 10s
	timeout http-keep-alive 30s

frontend fe
	bind 127.0.0.1:{{.Port}} ssl crt {{.Dir}}/bench-site.pem alpn h2,http/1.1
	default_backend be

backend be
	server nginx {{.Backend}}
`

const nginxTLSConf = nginxMain + `http {
` + nginxHTTPCommon + `	upstream backend {
		server {{.Backend}};
		keepalive 256;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:{{.Port}} ssl http2;
		ssl_certificate {{.Dir}}/bench-site.crt;
		ssl_certificate_key {{.Dir}}/bench-site.key;
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_session_cache shared:SSL:10m;
		location / {
			proxy_pass http://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
}
`

const batonTLSConf = `[proxy]
threads = 1
{{.Proxy}}

[[tls]]
listen = ["127.0.0.1:{{.Port}}"]
certificates = [ { cert_file = "{{.Dir}}/bench-site.crt", key_file = "{{.Dir}}/bench-site.key" } ]

[control]
pid_file = "{{.Dir}}/{{.Name}}.pid"
socket = "{{.Dir}}/{{.Name}}.sock"

[log]
level = "warn"

[[backend]]
name = "nginx"
url = "http://{{.Backend}}"
health_path = "/small.txt"
`

// startTLSServer starts one TLS setup on a free port and waits until it
// serves /small.txt over HTTPS.
func (b *bench) startTLSServer(ctx context.Context, name string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", fmt.Errorf("bench: start %s (TLS): %w", name, err)
	}
	var p *proc
	switch name {
	case tlsHAProxy:
		d := serverData{Dir: b.dir, Backend: b.backendAddr, Port: port}
		conf, err := b.writeConfig("haproxy-tls.cfg", haproxyTLSConf, d)
		if err != nil {
			return nil, "", err
		}
		p, err = startProc("haproxy-tls", b.path("haproxy-tls.log"), b.tools.haproxy, "-db", "-f", conf)
		if err != nil {
			return nil, "", err
		}
	case tlsNginx:
		if p, err = b.startNginx("nginx-tls", nginxTLSConf, port); err != nil {
			return nil, "", err
		}
	case tlsBaton, tlsEpoll:
		id, engine := "baton-tls", "stdlib"
		if name == tlsEpoll {
			id, engine = "baton-tls-epoll", "epoll"
		}
		d := serverData{Dir: b.dir, Name: id, Backend: b.backendAddr, Port: port, Proxy: fmt.Sprintf("engine = %q", engine)}
		conf, err := b.writeConfig(id+".toml", batonTLSConf, d)
		if err != nil {
			return nil, "", err
		}
		if p, err = startProc(id, b.path(id+".log"), b.opts.baton, "run", "--config", conf); err != nil {
			return nil, "", err
		}
	}
	b.procs = append(b.procs, p)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitServingTLS(ctx, p, "https://"+addr+"/small.txt"); err != nil {
		return nil, "", fmt.Errorf("bench: start %s (TLS): %w", name, err)
	}
	return p, addr, nil
}

func waitServingTLS(ctx context.Context, p *proc, url string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if p.exited() {
			return fmt.Errorf("exited (%v): %s", p.waitErr, p.logTail())
		}
		err := getSmall(ctx, client, url)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(fmt.Errorf("not serving %s: %w", url, err), ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// renderTLS is the report's HTTPS section.
func renderTLS(r tlsResults, opts options) string {
	var w strings.Builder
	w.WriteString("\n## HTTPS\n\n")
	fmt.Fprintf(&w, "One self-signed ECDSA P-256 certificate on every proxy (one thread or worker each), the same nginx backend, "+
		"100-byte file, %d connections, `wrk -t1` for %s; keep-alive, then `Connection: close` (a full TLS handshake per request: "+
		"wrk does not resume sessions), then `h2load -c%d -m%d`. Medians of %d rounds.\n\n",
		tlsConns, opts.duration, tlsConns, h2Streams, opts.rounds)
	w.WriteString("| proxy | keep-alive req/s | new handshakes/s | h2 req/s |\n|---|---:|---:|---:|\n")
	ref := func(m map[string][]float64) float64 { return median(m[tlsHAProxy]) }
	cellOf := func(m map[string][]float64, name string) string {
		if len(m[name]) == 0 {
			return "-"
		}
		v := median(m[name])
		s := fmt.Sprintf("%.0f", v)
		if name != tlsHAProxy && ref(m) > 0 {
			s += " (" + ratio(v, ref(m)) + "×)"
		}
		return s
	}
	for _, name := range tlsSetups {
		fmt.Fprintf(&w, "| %s | %s | %s | %s |\n", name, cellOf(r.keepAlive, name), cellOf(r.handshakes, name), cellOf(r.h2, name))
	}
	if !r.h2load {
		w.WriteString("\nh2load was not found (Debian package nghttp2-client): no h2 figures.\n")
	}
	for _, e := range r.errs {
		fmt.Fprintf(&w, "\n**failed:** %s\n", oneLine(errors.New(e)))
	}
	return w.String()
}
