package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// TestCleanLogs: with the admin listener, an access log and TLS on, a few
// clean upgrades (SIGHUP and `ctl upgrade`) under load and a stop log
// nothing above INFO, and every line of the JSON log is one object whose
// keys are unique (two "pid" keys are valid JSON to some parsers and lose
// one of them in others).
func TestCleanLogs(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	forEngines(t, func(t *testing.T) {
		var site *tlsSite
		b := newBaton(t, func(dir string) string {
			site = newTLSSite(t, dir)
			return batonConfig(dir, "", backendTOML("web1", lt.URL)) + tlsTOML + fmt.Sprintf(`
[log]
format = "json"
access = %q
access_format = "json"

[admin]
listen = "127.0.0.3:0"
`, filepath.Join(dir, "access.log"))
		})
		b.start()
		addr, taddr, admin := b.addr(), b.tlsAddr(), b.status().Admin
		l := startLoad(t, addr, loadSpec{GoGET: 1, Raw: 1})
		tl := startHTTPSLoad(t, taddr, site.clientConfig("site.test"), httpsSpec{H2Get: 1, H1Get: 1, NewConn: 1})
		l.progress(t, 10)
		tl.progress(t, 10)
		pid := b.pid()
		for i := 1; i <= 3; i++ {
			if i == 2 {
				if out, errOut, code := b.ctl("upgrade"); code != 0 {
					t.Fatalf("ctl upgrade: exit %d: %s%s", code, out, errOut)
				}
			} else {
				b.signal(syscall.SIGHUP)
			}
			pid = b.waitNewPID(pid)
			// The admin listener answers on every generation.
			if resp, err := http.Get("http://" + admin + "/status.json"); err != nil {
				t.Errorf("status.json after upgrade %d: %v", i, err)
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			l.progress(t, 5)
			tl.progress(t, 5)
		}
		waitFor(t, 20*time.Second, "old generations to exit", func() bool { return len(b.processes()) == 1 })
		l.check(t)
		tl.check(t)
		b.signal(syscall.SIGTERM)
		select {
		case <-b.exited:
		case <-time.After(20 * time.Second):
			t.Fatal("baton did not exit after SIGTERM")
		}
		waitFor(t, 20*time.Second, "every generation to exit", func() bool { return len(b.processes()) == 0 })

		lines := strings.Split(strings.TrimSuffix(b.log(), "\n"), "\n")
		if len(lines) < 10 {
			t.Fatalf("only %d log lines", len(lines))
		}
		for n, line := range lines {
			if _, err := jsonKeys([]byte(line)); err != nil {
				t.Errorf("log line %d: %v: %s", n+1, err, line)
				continue
			}
			var obj map[string]any
			_ = json.Unmarshal([]byte(line), &obj)
			if lv, _ := obj["level"].(string); lv != "INFO" && lv != "DEBUG" {
				t.Errorf("log line %d at level %q after clean upgrades and a stop: %s", n+1, lv, line)
			}
		}
	})
}

// jsonKeys decodes one JSON object with a token walk and returns its
// top-level keys in order; a key twice in any object of it is an error
// (json.Unmarshal keeps the last of two and says nothing).
func jsonKeys(b []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("starts with %v, not {", tok)
	}
	keys, err := objectKeys(dec)
	if err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the object")
	}
	return keys, nil
}

// objectKeys reads the rest of an object whose '{' was read.
func objectKeys(dec *json.Decoder) ([]string, error) {
	var keys []string
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("key %v is not a string", tok)
		}
		if seen[k] {
			return nil, fmt.Errorf("key %q twice", k)
		}
		seen[k] = true
		keys = append(keys, k)
		if err := skipValue(dec); err != nil {
			return nil, err
		}
	}
	_, err := dec.Token() // '}'
	return keys, err
}

// skipValue reads one value, failing on an object in it with a key
// twice.
func skipValue(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		_, err = objectKeys(dec)
	case '[':
		for dec.More() {
			if err := skipValue(dec); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
	}
	return err
}

// TestDrainDeadlineLevel: an upgrade that finds an idle keep-alive client
// closes its connection at the drain deadline, as designed, and says so
// at INFO (it logged a WARN on every upgrade a browser was connected for);
// one that cuts a request in flight at the deadline still says WARN.
func TestDrainDeadlineLevel(t *testing.T) {
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	forEngines(t, func(t *testing.T) {
		b := startBaton(t, func(dir string) string {
			return strings.Replace(batonConfig(dir, "", backendTOML("web1", lt.URL)), `drain_timeout = "10s"`, `drain_timeout = "1s"`, 1) +
				"\n[log]\nformat = \"json\"\n"
		})
		addr := b.addr()
		levels := func(from int) map[string][]string {
			out := map[string][]string{}
			for _, line := range strings.Split(b.log(), "\n")[from:] {
				var obj map[string]any
				if json.Unmarshal([]byte(line), &obj) == nil {
					lv, _ := obj["level"].(string)
					msg, _ := obj["msg"].(string)
					out[lv] = append(out[lv], msg)
				}
			}
			return out
		}
		// An idle keep-alive client.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()

		from := len(strings.Split(b.log(), "\n")) - 1
		pid := b.pid()
		b.signal(syscall.SIGHUP)
		pid = b.waitNewPID(pid)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := br.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("idle connection at the drain deadline: read %d, %v; want EOF", n, err)
		}
		waitFor(t, 10*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
		lv := levels(from)
		if len(lv["WARN"])+len(lv["ERROR"]) > 0 {
			t.Errorf("an upgrade with an idle client logged %v", lv)
		}
		if !slices.Contains(lv["INFO"], "drain deadline: closed connections with no request in flight") {
			t.Errorf("no INFO line for the idle connection closed at the deadline: %v", lv)
		}

		// A request in flight at the deadline is cut: a WARN.
		slow := slowRequest(addr, 3)
		waitInFlight(t, b, 1)
		from = len(strings.Split(b.log(), "\n")) - 1
		b.signal(syscall.SIGHUP)
		b.waitNewPID(pid)
		if err := <-slow; err == nil {
			t.Error("a 3 s request through an upgrade with drain_timeout 1s was not cut")
		}
		waitFor(t, 10*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
		if lv := levels(from); !slices.Contains(lv["WARN"], "drain") {
			t.Errorf("a request cut at the drain deadline: no WARN drain line: %v", lv)
		}
	})
}

// TestDrainDeadlineStream: with an access log (so baton sees how each
// request ends), a streaming response that outlives drain_timeout and
// ends by itself before long_drain_timeout is no warning: nothing was cut
// (a WARN "drain" with requests_in_flight came with such an upgrade, for
// the stream that was in flight at the deadline). A stream cut at
// long_drain_timeout and an ordinary request cut at drain_timeout are:
// WARN drain with requests_cut, and their access log lines say "drained".
//
// The streams are sent with a Keep-Alive header, which the epoll plane's
// loops hand to net/http (proxy/epoll/doc.go), so both planes keep them
// past drain_timeout.
func TestDrainDeadlineStream(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "text/event-stream")
		for k := 0; k < n; k++ {
			fmt.Fprintf(w, "data: %d\n\n", k)
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		io.WriteString(w, "data: end\n\n")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
			io.WriteString(w, "slow\n")
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	backend := httptest.NewServer(mux)
	defer backend.Close()

	forEngines(t, func(t *testing.T) {
		var accessLog string
		b := startBaton(t, func(dir string) string {
			accessLog = filepath.Join(dir, "access.log")
			cfg := batonConfig(dir, `long_drain_timeout = "3s"`, backendTOML("web1", backend.URL))
			return strings.Replace(cfg, `drain_timeout = "10s"`, `drain_timeout = "1s"`, 1) +
				fmt.Sprintf("\n[log]\nformat = \"json\"\naccess = %q\naccess_format = \"json\"\n", accessLog)
		})
		addr := b.addr()
		lines := func(from int) (levels map[string][]string, drain []map[string]any) {
			levels = map[string][]string{}
			for _, line := range strings.Split(b.log(), "\n")[from:] {
				var obj map[string]any
				if json.Unmarshal([]byte(line), &obj) == nil {
					lv, _ := obj["level"].(string)
					msg, _ := obj["msg"].(string)
					levels[lv] = append(levels[lv], msg)
					if lv == "WARN" && msg == "drain" {
						drain = append(drain, obj)
					}
				}
			}
			return levels, drain
		}
		// stream reads /events?n=N (N events 100 ms apart) on a
		// connection of its own; an error if it did not get the end.
		stream := func(n int) <-chan error {
			out := make(chan error, 1)
			go func() {
				c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
				req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/events?n=%d", addr, n), nil)
				req.Header.Set("Keep-Alive", "timeout=30")
				resp, err := c.Do(req)
				if err != nil {
					out <- err
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && !strings.HasSuffix(string(body), "data: end\n\n") {
					err = fmt.Errorf("stream ended without its end after %d bytes", len(body))
				}
				out <- err
			}()
			return out
		}
		idle := func() net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("request: %v %v", resp, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return c
		}
		upgrade := func() {
			t.Helper()
			pid := b.pid()
			b.signal(syscall.SIGHUP)
			b.waitNewPID(pid)
		}

		// A 2 s stream through an upgrade with drain_timeout 1s and
		// long_drain_timeout 3s, and an idle keep-alive client.
		idle()
		s := stream(20)
		waitInFlight(t, b, 1)
		from := len(strings.Split(b.log(), "\n")) - 1
		upgrade()
		if err := <-s; err != nil {
			t.Errorf("a 2 s stream through an upgrade: %v", err)
		}
		waitFor(t, 10*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
		lv, _ := lines(from)
		if len(lv["WARN"])+len(lv["ERROR"]) > 0 {
			t.Errorf("an upgrade that cut nothing (a stream that ended by itself, an idle client) logged %v", lv)
		}
		if !slices.Contains(lv["INFO"], "drain deadline: closed connections with no request in flight") {
			t.Errorf("no INFO line for the idle connection closed at the deadline: %v", lv)
		}

		// A stream cut at long_drain_timeout and a request cut at
		// drain_timeout.
		long := stream(100)
		slow := make(chan error, 1)
		go func() {
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
			resp, err := c.Get("http://" + addr + "/slow")
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			slow <- err
		}()
		waitInFlight(t, b, 2)
		from = len(strings.Split(b.log(), "\n")) - 1
		upgrade()
		if err := <-long; err == nil {
			t.Error("a 10 s stream through an upgrade with long_drain_timeout 3s was not cut")
		}
		if err := <-slow; err == nil {
			t.Error("a 5 s request through an upgrade with drain_timeout 1s was not cut")
		}
		waitFor(t, 10*time.Second, "the old generation to exit", func() bool { return len(b.processes()) == 1 })
		lv, drain := lines(from)
		cut := 0.0
		for _, d := range drain {
			n, _ := d["requests_cut"].(float64)
			cut = max(cut, n)
		}
		if cut != 2 {
			t.Errorf("two requests cut at the drain deadlines: WARN drain lines %v (levels %v), want requests_cut 2", drain, lv)
		}
		var drained []string
		raw, err := os.ReadFile(accessLog)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var e struct{ URI, Term string }
			if json.Unmarshal([]byte(line), &e) == nil && e.Term == "drained" {
				drained = append(drained, e.URI)
			}
		}
		slices.Sort(drained)
		if want := []string{"/events?n=100", "/slow"}; !slices.Equal(drained, want) {
			t.Errorf("access log lines with term drained: %q, want %q", drained, want)
		}
	})
}
