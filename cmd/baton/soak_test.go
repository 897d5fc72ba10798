package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batonproxy/baton/backends/backendtest"
	"github.com/batonproxy/baton/cmd/internal/soak"
)

// TestSoakExitStatus: exit 0 when everything succeeded, 1 when any request
// failed.
func TestSoakExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		want   int
	}{
		{"all ok", 200, 0},
		{"server errors", 500, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(tc.status) }))
			t.Cleanup(srv.Close)
			var out, errOut bytes.Buffer
			code := cmdSoak([]string{"--target", srv.URL + "/", "--rate", "50", "--duration", "500ms"}, &out, &errOut)
			if code != tc.want {
				t.Errorf("exit %d, want %d\n%s%s", code, tc.want, out.String(), errOut.String())
			}
		})
	}
}

// TestSoakEndToEnd runs `baton soak` for 8 s against baton in front of a
// real Apache and a real lighttpd, with baton upgrades and backend
// restarts, and expects exit 0, a report with the events and JSON figures.
func TestSoakEndToEnd(t *testing.T) {
	ap := backendtest.StartT(t, backendtest.Apache, backendtest.Options{})
	lt := backendtest.StartT(t, backendtest.Lighttpd, backendtest.Options{})
	b := startBaton(t, func(dir string) string {
		return batonConfig(dir, "", restartable("apache", ap, "graceful"), restartable("lighttpd", lt, "stop-start"))
	})
	dir := t.TempDir()
	report, figures := filepath.Join(dir, "soak.html"), filepath.Join(dir, "soak.json")
	out, errOut, code := runBaton(t, "soak", "--target", "http://"+b.addr()+"/", "--path", "/small.txt", "--path", "/index.html",
		"--rate", "200", "--duration", "8s", "--socket", b.socket, "--upgrade-every", "2s", "--restart-every", "3s",
		"--report", report, "--json", figures)
	if code != 0 {
		t.Fatalf("soak: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("soak summary:\n%s", out)
	var rep soak.Report
	b2, err := os.ReadFile(figures)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b2, &rep); err != nil {
		t.Fatalf("figures do not parse: %v", err)
	}
	var upgrades, restarts int
	for _, e := range rep.Events {
		switch e.Kind {
		case "upgrade":
			upgrades++
		case "restart":
			restarts++
		}
	}
	if upgrades < 3 || restarts < 2 || rep.Failed != 0 || rep.Requests < 1000 {
		t.Errorf("figures: %d upgrades, %d restarts, %d requests, %d failed; want >= 3, >= 2, >= 1000, 0", upgrades, restarts, rep.Requests, rep.Failed)
	}
	html, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(html), "event-marker"); got != 2*len(rep.Events) {
		t.Errorf("report has %d event markers, want %d", got, 2*len(rep.Events))
	}
	if st := b.status(); st.Generation != 1+upgrades {
		t.Errorf("baton generation %d after %d upgrades", st.Generation, upgrades)
	}
}
