package backends

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// newCommandSet builds a Set of kind=command backends, one per command,
// each in front of its own healthy httptest server.
func newCommandSet(t *testing.T, commands map[string][]string, order []string) *Set {
	t.Helper()
	table, err := NewStateTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { table.Close() })
	var cfgs []Config
	for _, name := range order {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		t.Cleanup(srv.Close)
		c := Config{Name: name, URL: srv.URL, Kind: KindCommand, RestartCommand: commands[name]}.Normalize()
		cfgs = append(cfgs, c)
	}
	s, err := New(cfgs, table, Options{RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestRestartCommand(t *testing.T) {
	s := newCommandSet(t, map[string][]string{"ok": {"true"}, "bad": {"sh", "-c", "echo cannot reload >&2; exit 3"}}, []string{"ok", "bad"})
	r, err := s.Restart(context.Background(), "ok")
	if err != nil || !r.OK {
		t.Fatalf("restart ok: %+v %v", r, err)
	}
	if got := []string{r.Steps[0].Name, r.Steps[1].Name, r.Steps[2].Name}; strings.Join(got, ",") != "drain,restart,healthy" {
		t.Errorf("steps: got %v, want drain, restart, healthy", got)
	}
	r, err = s.Restart(context.Background(), "bad")
	if err == nil || r.OK {
		t.Fatalf("restart bad: got ok %v, err %v", r.OK, err)
	}
	for _, want := range []string{"restart_command failed", "exit status 3", "cannot reload"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// A failed command touched the server: it stays out until a check passes.
	if st := s.Status()[1]; st.State != "down" || st.LastRestart == nil || st.LastRestart.OK {
		t.Errorf("after a failed restart: %+v", st)
	}
}

func TestRestartAllStopsAtFirstFailure(t *testing.T) {
	s := newCommandSet(t, map[string][]string{"a": {"true"}, "b": {"false"}, "c": {"true"}}, []string{"a", "b", "c"})
	results, err := s.RestartAll(context.Background())
	if err == nil {
		t.Fatal("restart --all with a failing backend succeeded")
	}
	if !strings.Contains(err.Error(), "stopped at b") || !strings.Contains(err.Error(), "not restarted: c") {
		t.Errorf("error %q does not say where it stopped and what was left", err)
	}
	if len(results) != 2 || !results[0].OK || results[1].OK {
		t.Errorf("results: %+v, want a ok then b failed", results)
	}
	if st := s.Status()[2]; st.LastRestart != nil {
		t.Errorf("c was restarted after b failed: %+v", st.LastRestart)
	}
}

func TestRestartBusy(t *testing.T) {
	s := newCommandSet(t, map[string][]string{"slow": {"sleep", "1"}}, []string{"slow"})
	b, _ := s.Lookup("slow")
	done, err := s.startRestart(b)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Restart(context.Background(), "slow")
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "slow is") {
		t.Errorf("second restart: got %v, want ErrBusy naming the backend and its phase", err)
	}
	if r := <-done; !r.OK {
		t.Errorf("first restart: %+v", r)
	}
}
