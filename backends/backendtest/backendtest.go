// Package backendtest starts real Apache and lighttpd servers from the
// templates in the repository's testdata/ directory, each in a private
// directory on a loopback port, for tests, the demo and the benchmark.
package backendtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// Kinds of server.
const (
	Apache   = "apache"
	Lighttpd = "lighttpd"
)

// Server is a running Apache or lighttpd.
type Server struct {
	Kind         string
	Dir          string   // private root: htdocs/, cgi-bin/, run/, logs/
	Port         int      // on 127.0.0.1
	URL          string   // http://127.0.0.1:Port
	Conf         string   // the rendered configuration file
	PIDFile      string   // where the server writes its PID
	ErrorLog     string   // the server's error log
	PostLog      string   // one line per request processed by /cgi-bin/post.sh
	Binary       string   // absolute path of apache2 or lighttpd
	StartCommand []string // starts it again in the background (daemonizing)
	// ProxyProtocol: connections must begin with a PROXY protocol header.
	ProxyProtocol bool
}

// Options change the rendered configuration.
type Options struct {
	// Extra is appended to the configuration file verbatim.
	Extra string
	// ProxyProtocol: the server expects a PROXY protocol header on every
	// connection (Extra turns it on); WaitHealthy sends one.
	ProxyProtocol bool
}

// Binary finds the server binary for kind (apache2 or lighttpd), looking in
// /usr/sbin too, which a non-root PATH often lacks.
func Binary(kind string) (string, error) {
	name := map[string]string{Apache: "apache2", Lighttpd: "lighttpd"}[kind]
	if name == "" {
		return "", fmt.Errorf("backendtest: unknown kind %q", kind)
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := "/usr/sbin/" + name
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("backendtest: %s not installed (apt-get install -y %s)", name, map[string]string{Apache: "apache2", Lighttpd: "lighttpd"}[kind])
}

// Require skips t when kind's server is not installed, except under CI=true,
// where a missing server fails the test.
func Require(t testing.TB, kind string) string {
	t.Helper()
	p, err := Binary(kind)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (CI=true: a missing server is a failure)", err)
		}
		t.Skipf("%v", err)
	}
	return p
}

// Root finds the repository root (the directory holding go.mod).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("backendtest: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Start renders kind's template into dir (created if needed), starts the
// server on a free loopback port and waits until it answers.
func Start(kind, dir string, opts Options) (*Server, error) {
	bin, err := Binary(kind)
	if err != nil {
		return nil, err
	}
	root, err := Root()
	if err != nil {
		return nil, err
	}
	if err := prepareDir(root, dir); err != nil {
		return nil, err
	}
	s := &Server{
		Kind: kind, Dir: dir, Binary: bin, ProxyProtocol: opts.ProxyProtocol,
		ErrorLog: filepath.Join(dir, "logs", "error.log"),
		PostLog:  filepath.Join(dir, "logs", "posts.log"),
	}
	var tmplName string
	switch kind {
	case Apache:
		tmplName = "apache2.conf.tmpl"
		s.Conf = filepath.Join(dir, "apache2.conf")
		s.PIDFile = filepath.Join(dir, "run", "apache2.pid")
		s.StartCommand = []string{bin, "-f", s.Conf, "-k", "start"}
	case Lighttpd:
		tmplName = "lighttpd.conf.tmpl"
		s.Conf = filepath.Join(dir, "lighttpd.conf")
		s.PIDFile = filepath.Join(dir, "run", "lighttpd.pid")
		s.StartCommand = []string{bin, "-f", s.Conf}
	}
	tmpl, err := template.ParseFiles(filepath.Join(root, "testdata", tmplName))
	if err != nil {
		return nil, fmt.Errorf("backendtest: %w", err)
	}
	data := map[string]any{"Dir": dir, "User": ""}
	if os.Geteuid() == 0 {
		// Apache refuses to serve as root; its children run as www-data.
		if _, err := user.Lookup("www-data"); err == nil {
			data["User"] = "www-data"
		} else {
			data["User"] = "nobody"
		}
	}
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		// Below Linux's ephemeral range (32768+), so a client socket cannot
		// hold it; a port someone else holds just fails the start.
		s.Port = 20000 + rand.IntN(12000)
		s.URL = "http://127.0.0.1:" + strconv.Itoa(s.Port)
		data["Port"] = s.Port
		f, err := os.Create(s.Conf)
		if err != nil {
			return nil, fmt.Errorf("backendtest: %w", err)
		}
		err = tmpl.Execute(f, data)
		if err == nil && opts.Extra != "" {
			_, err = io.WriteString(f, "\n"+opts.Extra+"\n")
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("backendtest: render %s: %w", tmplName, err)
		}
		if lastErr = s.StartAgain(); lastErr == nil {
			return s, nil
		}
		if !strings.Contains(strings.ToLower(lastErr.Error()), "address already in use") &&
			!strings.Contains(lastErr.Error(), "could not bind") {
			return nil, lastErr
		}
	}
	return nil, lastErr
}

// StartT is Start for a test: the server lives in t.TempDir() and is
// stopped when the test ends.
func StartT(t testing.TB, kind string, opts Options) *Server {
	t.Helper()
	Require(t, kind)
	dir := t.TempDir()
	s, err := Start(kind, dir, opts)
	if err != nil {
		t.Fatalf("start %s: %v", kind, err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop %s: %v", kind, err)
		}
	})
	return s
}

func prepareDir(root, dir string) error {
	for _, d := range []string{"", "run", "logs", "htdocs", "cgi-bin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	// The server's unprivileged user must reach the files: open up the
	// directory and its parents up to the temporary directory.
	for d := dir; d != "/" && d != "." && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			break
		}
	}
	for _, sub := range []string{"htdocs", "cgi-bin"} {
		entries, err := os.ReadDir(filepath.Join(root, "testdata", sub))
		if err != nil {
			return err
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(root, "testdata", sub, e.Name()))
			if err != nil {
				return err
			}
			mode := os.FileMode(0o644)
			if sub == "cgi-bin" {
				mode = 0o755
			}
			if err := os.WriteFile(filepath.Join(dir, sub, e.Name()), b, mode); err != nil {
				return err
			}
		}
	}
	// A 16 KiB file for benchmarks, next to the 100-byte small.txt.
	if err := os.WriteFile(filepath.Join(dir, "htdocs", "16k.bin"), []byte(strings.Repeat("0123456789abcdef", 1024)), 0o644); err != nil {
		return err
	}
	// Logs the CGI scripts append to, writable by the servers' user.
	for _, name := range []string{"posts.log", "slow.log"} {
		p := filepath.Join(dir, "logs", name)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := os.Chmod(p, 0o666); err != nil {
			return err
		}
	}
	return nil
}

// StartAgain runs the start command and waits until the server answers.
func (s *Server) StartAgain() error {
	cmd := exec.Command(s.StartCommand[0], s.StartCommand[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("backendtest: %s: %w: %s%s", strings.Join(s.StartCommand, " "), err, out, s.errorLogTail())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.WaitHealthy(ctx)
}

// WaitHealthy polls the server until it answers 200 for / or ctx ends.
func (s *Server) WaitHealthy(ctx context.Context) error {
	tr := &http.Transport{DisableKeepAlives: true}
	if s.ProxyProtocol {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				l, r := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
				_, err = fmt.Fprintf(c, "PROXY TCP4 %s %s %d %d\r\n", l.IP, r.IP, l.Port, r.Port)
			}
			return c, err
		}
	}
	c := &http.Client{Transport: tr, Timeout: time.Second}
	var last error
	for {
		resp, err := c.Get(s.URL + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if _, err := s.PID(); err == nil {
					return nil
				}
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("backendtest: %s on %s not healthy: %v%s", s.Kind, s.URL, last, s.errorLogTail())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// PID reads the server's PID file.
func (s *Server) PID() (int, error) {
	b, err := os.ReadFile(s.PIDFile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Processes lists the PIDs of every process started from this server's
// configuration (parent and children), found by their command line.
func (s *Server) Processes() []int { return Processes(s.Conf) }

// Processes lists the live (not zombie) processes whose command line
// contains substr; an empty substr matches nothing.
func Processes(substr string) []int {
	var out []int
	if substr == "" {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(b), substr) {
			continue
		}
		if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
}

// Stop ends every process of the server and waits for them.
func (s *Server) Stop() error {
	if left := Terminate(s.Conf, 5*time.Second); len(left) > 0 {
		return fmt.Errorf("backendtest: %s processes %v did not stop on SIGTERM; killed", s.Kind, left)
	}
	return nil
}

// Terminate sends SIGTERM to every process whose command line contains
// substr, waits up to grace for them to exit, and SIGKILLs the rest, which
// it returns. An empty substr matches nothing.
func Terminate(substr string, grace time.Duration) (killed []int) {
	if substr == "" {
		return nil
	}
	for _, p := range Processes(substr) {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for len(Processes(substr)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	killed = Processes(substr)
	for _, p := range killed {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	return killed
}

// Generation reports how many times the server has (re)started: Apache's
// ParentServerConfigGeneration from /server-status, lighttpd's count of
// "server started" lines in its error log.
func (s *Server) Generation() (int, error) {
	switch s.Kind {
	case Apache:
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
		resp, err := c.Get(s.URL + "/server-status?auto")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "ParentServerConfigGeneration: "); ok {
				return strconv.Atoi(strings.TrimSpace(v))
			}
		}
		return 0, errors.New("backendtest: no ParentServerConfigGeneration in /server-status")
	default:
		b, err := os.ReadFile(s.ErrorLog)
		if err != nil {
			return 0, err
		}
		return strings.Count(string(b), "server started"), nil
	}
}

// SlowStarts is how many /cgi-bin/slow.sh requests the server has begun
// to run.
func (s *Server) SlowStarts() int {
	b, err := os.ReadFile(filepath.Join(s.Dir, "logs", "slow.log"))
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "start ")
}

// SlowEnds lists when the /cgi-bin/slow.sh requests finished sleeping,
// just before each answered, in order.
func (s *Server) SlowEnds() []time.Time {
	b, err := os.ReadFile(filepath.Join(s.Dir, "logs", "slow.log"))
	if err != nil {
		return nil
	}
	var out []time.Time
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "end" {
			continue
		}
		if secs, err := strconv.ParseFloat(f[2], 64); err == nil {
			out = append(out, time.Unix(0, int64(secs*1e9)))
		}
	}
	return out
}

// PostIDs reads the IDs of the POST requests the server processed, in
// order, one entry per processing.
func (s *Server) PostIDs() ([]string, error) {
	b, err := os.ReadFile(s.PostLog)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			ids = append(ids, f[0])
		}
	}
	return ids, nil
}

func (s *Server) errorLogTail() string {
	b, err := os.ReadFile(s.ErrorLog)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return "\n--- " + s.ErrorLog + " ---\n" + string(b)
}
