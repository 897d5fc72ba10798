package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// snippet reads a file of docs/ with its access log path replaced by
// logPath.
func snippet(t *testing.T, name, logPath string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, p := range []string{"/var/log/apache2/access.log", "/var/log/lighttpd/access.log"} {
		s = strings.ReplaceAll(s, p, logPath)
	}
	return s
}

// clientFrom is an HTTP client whose connections come from the loopback
// address ip, so that the backend can tell it from baton (127.0.0.1).
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// get sends GET path with a forged X-Forwarded-For and checks the answer.
func getFrom(t *testing.T, c *http.Client, url string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", url, nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.66")
	req.Header.Set("User-Agent", "clientaddr-test")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
}

// waitLogLine waits until the backend's access log has a line with marker
// and returns it.
func waitLogLine(t *testing.T, path, marker string) string {
	t.Helper()
	var line string
	waitFor(t, 10*time.Second, "the request in "+path, func() bool {
		b, _ := os.ReadFile(path)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, marker) {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// TestClientAddressAtBackend: with the snippets of docs/, the real Apache
// (mod_remoteip) and lighttpd (mod_extforward) log the client's address,
// not baton's, and a client cannot forge it with its own X-Forwarded-For.
func TestClientAddressAtBackend(t *testing.T) {
	const client = "127.0.0.5"
	for _, tc := range []struct {
		kind, snippet string
	}{
		{backendtest.Apache, "apache-remoteip.conf"},
		{backendtest.Lighttpd, "lighttpd-extforward.conf"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "access.log")
			srv := backendtest.StartT(t, tc.kind, backendtest.Options{Extra: snippet(t, tc.snippet, logPath)})
			b := startBaton(t, func(dir string) string { return batonConfig(dir, "", backendTOML("web1", srv.URL)) })
			getFrom(t, clientFrom(client), "http://"+b.addr()+"/small.txt?"+tc.kind)
			line := waitLogLine(t, logPath, "small.txt?"+tc.kind)
			if !strings.HasPrefix(line, client+" ") {
				t.Errorf("%s access log: %q, want it to begin with the client %s", tc.kind, line, client)
			}
			if strings.Contains(line, "203.0.113.66") {
				t.Errorf("%s access log shows the forged address: %q", tc.kind, line)
			}
		})
	}
}
