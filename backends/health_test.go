package backends

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// site answers like a name-based virtual host: the default host says
// 200 "It works!", the real site www.example.test answers per path.
func site(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "www.example.test" {
			w.Write([]byte("It works!"))
			return
		}
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("<html>site-ok</html>"))
		case "/fatal":
			// PHP's fatal error page: 200, and no marker.
			w.Write([]byte("<b>Fatal error</b>: Uncaught Error"))
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestHealthCheckKnowsTheSite(t *testing.T) {
	srv := site(t)
	tests := []struct {
		name   string
		cfg    Config
		ok     bool
		reason string
	}{
		{"default host answers anything", Config{HealthPath: "/fatal"}, true, ""},
		{"host and body", Config{HealthPath: "/ok", HealthHost: "www.example.test", HealthBody: "site-ok"}, true, ""},
		{"fatal error page", Config{HealthPath: "/fatal", HealthHost: "www.example.test", HealthBody: "site-ok"}, false, `status 200 but the body lacks "site-ok"`},
		{"wrong host is a 404", Config{HealthPath: "/nope", HealthHost: "www.example.test"}, false, "GET /nope: status 404"},
		{"HEAD", Config{HealthPath: "/ok", HealthHost: "www.example.test", HealthMethod: "HEAD"}, true, ""},
		{"3xx passes by default", Config{HealthPath: "/moved", HealthHost: "www.example.test"}, true, ""},
		{"3xx fails when only 200 is wanted", Config{HealthPath: "/moved", HealthHost: "www.example.test", HealthStatus: []string{"200"}}, false, "status 302"},
		{"a 404 that is expected", Config{HealthPath: "/nope", HealthHost: "www.example.test", HealthStatus: []string{"404", "2xx"}}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg
			c.Name, c.URL = "web", srv.URL
			c = c.Normalize()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			table, err := NewStateTable()
			if err != nil {
				t.Fatal(err)
			}
			defer table.Close()
			s, err := New([]Config{c}, table, Options{RunDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			r := s.Backends()[0].check(context.Background(), time.Second)
			if r.OK != tt.ok || !strings.Contains(r.Reason, tt.reason) {
				t.Errorf("check: got ok %v reason %q, want ok %v reason containing %q", r.OK, r.Reason, tt.ok, tt.reason)
			}
		})
	}
}

// TestHealthBodyMarksDown: a backend whose check answers 200 without the
// marker goes down, and status tells why.
func TestHealthBodyMarksDown(t *testing.T) {
	srv := site(t)
	c := Config{Name: "web", URL: srv.URL, HealthPath: "/fatal", HealthHost: "www.example.test", HealthBody: "site-ok",
		HealthInterval: 10 * time.Millisecond}.Normalize()
	table, err := NewStateTable()
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	s, err := New([]Config{c}, table, Options{RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	waitUntil(t, "the backend to go down", func() bool { return s.Status()[0].State == "down" })
	st := s.Status()[0]
	if st.LastCheck == nil || st.LastCheck.OK || st.LastCheck.Status != 200 || !strings.Contains(st.LastCheck.Reason, "lacks") {
		t.Errorf("last check: got %+v, want a failure on content with status 200", st.LastCheck)
	}
	if _, err := s.Pick(nil); err == nil {
		t.Error("Pick: a backend down on content was picked")
	}
}

func TestPassiveDetection(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	tests := []struct {
		name     string
		fails    int
		requests int
		wantDown bool
	}{
		{"off by default", 0, 10, false},
		{"fewer than passive_fails", 3, 2, false},
		{"passive_fails in a row", 3, 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Name: "web", URL: srv.URL, PassiveFails: tt.fails, PassiveCooldown: 300 * time.Millisecond}.Normalize()
			table, err := NewStateTable()
			if err != nil {
				t.Fatal(err)
			}
			defer table.Close()
			s, err := New([]Config{c}, table, Options{RunDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			b := s.Backends()[0]
			for range tt.requests {
				req, _ := http.NewRequest("GET", srv.URL+"/", nil)
				resp, err := b.Transport(true).RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			st := s.Status()[0]
			if got := st.State == "down"; got != tt.wantDown {
				t.Fatalf("down: got %v, want %v (%+v)", got, tt.wantDown, st)
			}
			if !tt.wantDown {
				return
			}
			if st.CooldownUntil == nil || !strings.Contains(st.LastError, "status 500 (3 in a row") {
				t.Errorf("status: cooldown %v, last error %q", st.CooldownUntil, st.LastError)
			}
			b.noteHealthy() // a passing check within the cool-down does not readmit
			if s.Status()[0].State != "down" {
				t.Fatal("readmitted within the cool-down")
			}
			waitUntil(t, "the cool-down to end", func() bool {
				b.noteHealthy()
				return s.Status()[0].State == "up"
			})
		})
	}
}
