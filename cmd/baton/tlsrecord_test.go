package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// tlsSiteBaton starts lighttpd and a baton with a TLS listener in front of
// it; it returns baton, its TLS address, the site and lighttpd.
func tlsSiteBaton(t *testing.T) (*batonProc, string, *tlsSite, *backendtest.Server) {
	t.Helper()
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	var site *tlsSite
	b := newBaton(t, func(dir string) string {
		site = newTLSSite(t, dir)
		return batonConfig(dir, "", backendTOML("web1", lt.URL)) + tlsTOML
	})
	b.start()
	return b, b.tlsAddr(), site, lt
}

var serverRecord = regexp.MustCompile(`<<< TLS 1\.2, RecordHeader \[length 0005\]\n\s+17 03 03 ([0-9a-f]{2}) ([0-9a-f]{2})`)

// largestRecord is the longest application data record of the server's in
// the output of openssl s_client -msg.
func largestRecord(out string) int {
	n := 0
	for _, m := range serverRecord.FindAllStringSubmatch(out, -1) {
		hi, _ := strconv.ParseUint(m[1], 16, 8)
		lo, _ := strconv.ParseUint(m[2], 16, 8)
		n = max(n, int(hi<<8|lo))
	}
	return n
}

// TestTLSChaCha20 is issue 19, item 6: a client that allows only
// TLS_CHACHA20_POLY1305_SHA256 (openssl s_client, curl) is served; on the
// epoll plane in a loop, which seals 2^14 bytes in its first record where
// crypto/tls's first records are small (its dynamic record sizing).
func TestTLSChaCha20(t *testing.T) { forEngines(t, testTLSChaCha20) }

func testTLSChaCha20(t *testing.T) {
	needTool(t, "openssl", "openssl")
	needTool(t, "curl", "curl")
	_, addr, site, _ := tlsSiteBaton(t)
	body := strings.Repeat("0123456789abcdef", 1024) // 16k.bin
	for _, suite := range []string{"TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"} {
		t.Run(suite, func(t *testing.T) {
			sClient := func(extra ...string) string {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				args := append([]string{"s_client", "-connect", addr, "-servername", "site.test", "-CAfile", site.caPEM,
					"-verify_return_error", "-tls1_3", "-ciphersuites", suite, "-alpn", "http/1.1", "-ign_eof"}, extra...)
				cmd := exec.CommandContext(ctx, "openssl", args...)
				cmd.Stdin = strings.NewReader("GET /16k.bin HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "HTTP/1.1 200 OK") {
					t.Fatalf("openssl s_client %s: %v; want 200\n%s", strings.Join(extra, " "), err, tail(string(out), 30))
				}
				return string(out)
			}
			out := sClient()
			if !strings.Contains(out, body) {
				t.Errorf("openssl s_client: no 16k.bin in\n%s", tail(out, 30))
			}
			if !strings.Contains(out, "Ciphersuite: "+suite) && !strings.Contains(out, ", Cipher is "+suite) {
				t.Errorf("openssl did not say it used %s\n%s", suite, tail(out, 40))
			}
			largest := largestRecord(sClient("-msg"))
			t.Logf("largest server record: %d bytes", largest)
			if testEngine == "epoll" && largest < 1<<14 {
				t.Errorf("largest server record %d bytes: served by crypto/tls, not in a loop (which seals 2^14 at once)", largest)
			}
		})
	}
	port := addr[strings.LastIndex(addr, ":")+1:]
	out, err := exec.Command("curl", "-sS", "--http1.1", "--tlsv1.3", "--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256", "-w", "\n%{http_code}",
		"--cacert", site.caPEM, "--resolve", "site.test:"+port+":127.0.0.2", "https://site.test:"+port+"/16k.bin").CombinedOutput()
	if err != nil || string(out) != body+"\n200" {
		t.Errorf("curl --tls13-ciphers TLS_CHACHA20_POLY1305_SHA256: %v\n%.300s", err, out)
	}
}

// TestTLSKeyUpdateDownload is issue 16, item 11, end to end: openssl
// s_client asks for a KeyUpdate ("K") twice while a 30 MB file streams to
// it from lighttpd: the download completes, as through crypto/tls (on the
// epoll plane it stalled and was cut at the backend read timeout).
func TestTLSKeyUpdateDownload(t *testing.T) { forEngines(t, testTLSKeyUpdateDownload) }

func testTLSKeyUpdateDownload(t *testing.T) {
	needTool(t, "openssl", "openssl")
	_, addr, site, lt := tlsSiteBaton(t)
	const size = 30 << 20
	if err := os.WriteFile(filepath.Join(lt.Dir, "htdocs", "big.bin"), bytes.Repeat([]byte("~"), size), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", "s_client", "-connect", addr, "-servername", "site.test",
		"-CAfile", site.caPEM, "-verify_return_error", "-tls1_3", "-alpn", "http/1.1")
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
	io.WriteString(stdin, "GET /big.bin HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
	// Count the body (the '~' after the response header; s_client prints
	// its session ticket before, in hex and as text) as it comes, and ask
	// for a KeyUpdate after 1 MB and after 10 MB.
	r := bufio.NewReaderSize(stdout, 64<<10)
	got, asks := 0, []int{1 << 20, 10 << 20}
	var text bytes.Buffer // the rest of the output, for KEYUPDATE and errors
	inBody := false
	buf := make([]byte, 64<<10)
	for got < size {
		n, err := r.Read(buf)
		for _, c := range buf[:n] {
			if inBody && c == '~' {
				got++
				continue
			}
			if text.Len() < 64<<10 {
				text.WriteByte(c)
			}
			if !inBody && c == '\n' && bytes.HasSuffix(text.Bytes(), []byte("\r\n\r\n")) && bytes.Contains(text.Bytes(), []byte("HTTP/1.1 200 OK")) {
				inBody = true
			}
		}
		if len(asks) > 0 && got >= asks[0] {
			io.WriteString(stdin, "K\n")
			asks = asks[1:]
		}
		if err != nil {
			break
		}
	}
	if got != size || len(asks) != 0 {
		t.Fatalf("got %d of %d bytes (%d KeyUpdates not asked for); openssl said:\n%s", got, size, len(asks), tail(text.String(), 30))
	}
	if c := strings.Count(text.String(), "KEYUPDATE"); c != 2 {
		t.Errorf("openssl printed KEYUPDATE %d times, want 2\n%s", c, tail(text.String(), 30))
	}
}
