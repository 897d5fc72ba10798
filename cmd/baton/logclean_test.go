package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
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
		if !slices.Contains(lv["INFO"], "drain deadline: closed idle keep-alive connections") {
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
