package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batonproxy/baton/backends/backendtest"
)

// TestProxyProtocolApache sends the PROXY protocol (v1, v2) to the real
// Apache with RemoteIPProxyProtocol On (docs/apache-proxy-protocol.conf):
// its access log shows the client, its health checks pass (they say
// LOCAL/UNKNOWN), and a graceful restart, whose sentinel connection sends
// a header too, works. On both planes: the epoll loop writes the header
// itself (proxy.ProxiedUpstream).
func TestProxyProtocolApache(t *testing.T) { forEngines(t, testProxyProtocolApache) }

func testProxyProtocolApache(t *testing.T) {
	const client = "127.0.0.6"
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "access.log")
			srv := backendtest.StartT(t, backendtest.Apache, backendtest.Options{Extra: snippet(t, "apache-proxy-protocol.conf", logPath), ProxyProtocol: true})
			b := startBaton(t, func(dir string) string {
				return batonConfig(dir, "", backendTOML("web1", srv.URL, `kind = "apache"`,
					fmt.Sprintf("pid_file = %q", srv.PIDFile), fmt.Sprintf("proxy_protocol = %q", v)))
			})
			c := clientFrom(client)
			// Several on one keep-alive client connection: each travels
			// on a connection of its own, with its own header.
			for i := range 3 {
				getFrom(t, c, fmt.Sprintf("http://%s/small.txt?pp-%s-%d", b.addr(), v, i))
				line := waitLogLine(t, logPath, fmt.Sprintf("small.txt?pp-%s-%d", v, i))
				if !strings.HasPrefix(line, client+" ") {
					t.Errorf("Apache access log: %q, want it to begin with the client %s", line, client)
				}
			}
			// Health checks go through (baton's own address).
			hc := waitLogLine(t, logPath, "baton-health-check")
			if !strings.HasPrefix(hc, "127.0.0.1 ") || !strings.Contains(hc, `" 200 `) {
				t.Errorf("health check line: %q, want 127.0.0.1 and 200", hc)
			}
			if out, errOut, code := b.ctl("restart", "web1"); code != 0 {
				t.Fatalf("restart with the PROXY protocol: exit %d\n%s%s", code, out, errOut)
			}
			getFrom(t, c, "http://"+b.addr()+"/small.txt?after-restart-"+v)
			if line := waitLogLine(t, logPath, "after-restart-"+v); !strings.HasPrefix(line, client+" ") {
				t.Errorf("after the restart: %q", line)
			}
			if el, _ := os.ReadFile(srv.ErrorLog); strings.Contains(string(el), "remoteip:error") {
				t.Errorf("Apache complained about a PROXY header:\n%s", tail(string(el), 3000))
			}
		})
	}
}
