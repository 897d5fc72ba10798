package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends/backendtest"
)

// TestStatusPage loads the admin listener's status page in a real
// headless Chromium, which runs its script against /status.json, and
// checks what it rendered: the backend with its state, the generation,
// the events. The page loads nothing from elsewhere.
func TestStatusPage(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no chromium (CI=true: a missing browser is a failure)")
		}
		t.Skip("no chromium: apt-get install -y chromium")
	}
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string { return obsConfig(dir, "combined", lt.URL) })
	admin := b.status().Admin
	if !bytes.Contains(statusPage, []byte("status.json")) || bytes.Contains(statusPage, []byte("http://")) || bytes.Contains(statusPage, []byte("https://")) {
		t.Error("the status page must fetch status.json and load nothing from elsewhere")
	}

	dir := t.TempDir()
	shot := filepath.Join(dir, "status.png")
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--virtual-time-budget=5000", "--window-size=1200,800"}
		cmd := exec.CommandContext(ctx, browser, append(base, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\n%s", browser, err, tail(errOut.String(), 2000))
		}
		return out.String()
	}
	dom := run("--dump-dom", "http://"+admin+"/")
	for _, want := range []string{`data-rendered="1"`, "web1", lt.URL, `class="st up"`, "generation 1", "serving"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", tail(dom, 6000))
	}
	// BATON_STATUS_SCREENSHOT=FILE keeps a picture of the page to look at.
	if p := os.Getenv("BATON_STATUS_SCREENSHOT"); p != "" {
		run("--screenshot="+shot, "http://"+admin+"/")
		copyFile(t, shot, p, 0o644)
	}
}
