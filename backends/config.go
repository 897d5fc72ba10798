package backends

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/batonproxy/baton/proxy"
)

// Kind says what server a backend is, and so how baton restarts it.
type Kind string

// Server kinds.
const (
	KindNone     Kind = "none"     // no restart; drain and undrain only
	KindApache   Kind = "apache"   // Apache httpd 2.4, signalled through its PID file
	KindLighttpd Kind = "lighttpd" // lighttpd 1.4, signalled through its PID file
	KindCommand  Kind = "command"  // restarted by running restart_command
)

// Method is how a backend is restarted.
type Method string

// Restart methods.
const (
	MethodGraceful  Method = "graceful"   // the server's graceful-restart signal; same listening socket
	MethodStopStart Method = "stop-start" // graceful-stop signal, wait for exit, run start_command
	MethodCommand   Method = "command"    // run restart_command
)

// Defaults applied by Config.Normalize to zero fields.
const (
	DefaultHealthPath             = "/"
	DefaultHealthInterval         = time.Second
	DefaultHealthTimeout          = 2 * time.Second
	DefaultMaxFails               = 2
	DefaultRestartTimeout         = 60 * time.Second
	DefaultDrainTimeout           = 30 * time.Second
	DefaultMaxIdleConns           = 512
	DefaultMaxConnecting          = proxy.DefaultMaxConnecting
	DefaultIdleConnTimeout        = 4 * time.Second // below Apache's and lighttpd's 5 s keep-alive idle
	DefaultDialTimeout            = 5 * time.Second
	DefaultResponseHeaderTimeout  = 60 * time.Second
	DefaultReadTimeout            = 60 * time.Second
	DefaultMaxResponseHeaderBytes = 64 << 10
	DefaultWeight                 = 1
	DefaultHealthMethod           = "GET"
	DefaultPassiveCooldown        = 10 * time.Second
)

// DefaultHealthStatus is what a health check must answer by default.
var DefaultHealthStatus = []string{"2xx", "3xx"}

// Config describes one backend. The zero value of every field but Name and
// URL is usable; Normalize fills defaults and Validate checks the result.
type Config struct {
	Name       string // unique, 1-64 of [A-Za-z0-9._-]
	URL        string // http://host:port of the server
	HealthPath string // GET target of the health check; 2xx and 3xx are healthy (default "/")

	HealthInterval time.Duration // between active checks (default 1s)
	HealthTimeout  time.Duration // per check (default 2s)
	MaxFails       int           // consecutive failed checks or connections that mark it down (default 2)

	Kind           Kind     // default KindNone
	PIDFile        string   // for apache and lighttpd: where the server writes its PID
	Restart        Method   // default graceful for apache and lighttpd, command for command
	StartCommand   []string // for stop-start: starts the server again (detached)
	RestartCommand []string // overrides the signal; required for kind command
	// ProcessExe is the executable the process named by PIDFile must run
	// before baton signals it: a full path, or a base name. Default: the
	// kind's binary (apache2, lighttpd); set it for a custom build, or for
	// kind command to have `baton check` verify its PID file.
	ProcessExe     string
	RestartTimeout time.Duration // drain + restart + healthy (default 60s)
	DrainTimeout   time.Duration // bound on waiting for in-flight requests (default 30s)

	MaxIdleConns          int           // pooled keep-alive connections kept open (default 512)
	MaxConnecting         int           // new connections being opened at once, the rest wait (default 128)
	IdleConnTimeout       time.Duration // idle pooled connections are closed after this (default 4s)
	DialTimeout           time.Duration // default 5s
	ResponseHeaderTimeout time.Duration // then 504 (default 60s)
	// ReadTimeout bounds each wait for more of a response body, as nginx's
	// proxy_read_timeout does; a stalled response is cut (default 60s).
	// Protocol upgrades (WebSocket) are not bound by it.
	ReadTimeout time.Duration
	// MaxResponseHeaderBytes bounds a response's header block; a larger
	// one is a 502 (default 64 KiB).
	MaxResponseHeaderBytes int
	// ProxyProtocol, "v1" or "v2", sends the server a PROXY protocol
	// header naming the client before each request, on a connection of
	// its own (no pooling); "" (default) sends none.
	ProxyProtocol string

	// MaxConns bounds the requests in flight to the backend from every
	// baton generation together; the rest wait in baton's queue, first
	// come first served. 0 (default): no limit.
	MaxConns int
	// SlowStart is how long the backend's limit (MaxConns, or its share of
	// requests when it has none) takes to ramp up to full after it comes
	// back into rotation. 0 (default): at once.
	SlowStart time.Duration
	// Weight is the backend's share of requests relative to the others
	// (default 1).
	Weight int
	// Backup backends receive requests only while no primary is up.
	Backup bool

	HealthHost   string   // Host header of the health check (default: the URL's host:port)
	HealthMethod string   // GET or HEAD (default GET)
	HealthStatus []string // expected codes ("200") or classes ("2xx") (default 2xx and 3xx)
	HealthBody   string   // a substring the check's response body must contain ("" : none)

	// PassiveFails is how many consecutive 5xx answers or connection
	// failures of requests take the backend out for PassiveCooldown.
	// 0 (default): off.
	PassiveFails    int
	PassiveCooldown time.Duration // default 10s
}

// FieldError is a validation error about one configuration key.
type FieldError struct {
	Key string // the TOML key, e.g. "pid_file"
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(key, format string, args ...any) error {
	return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

// validName reports whether s is 1-64 of [A-Za-z0-9._-].
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Normalize returns c with defaults applied to zero fields.
func (c Config) Normalize() Config {
	if c.HealthPath == "" {
		c.HealthPath = DefaultHealthPath
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = DefaultHealthInterval
	}
	if c.HealthTimeout == 0 {
		c.HealthTimeout = DefaultHealthTimeout
	}
	if c.MaxFails == 0 {
		c.MaxFails = DefaultMaxFails
	}
	if c.Kind == "" {
		c.Kind = KindNone
	}
	if c.Restart == "" {
		switch c.Kind {
		case KindApache, KindLighttpd:
			c.Restart = MethodGraceful
		case KindCommand:
			c.Restart = MethodCommand
		}
	}
	if c.RestartTimeout == 0 {
		c.RestartTimeout = DefaultRestartTimeout
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MaxIdleConns == 0 {
		c.MaxIdleConns = DefaultMaxIdleConns
	}
	if c.MaxConnecting == 0 {
		c.MaxConnecting = DefaultMaxConnecting
	}
	if c.IdleConnTimeout == 0 {
		c.IdleConnTimeout = DefaultIdleConnTimeout
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.MaxResponseHeaderBytes == 0 {
		c.MaxResponseHeaderBytes = DefaultMaxResponseHeaderBytes
	}
	if c.Weight == 0 {
		c.Weight = DefaultWeight
	}
	if c.HealthMethod == "" {
		c.HealthMethod = DefaultHealthMethod
	}
	if len(c.HealthStatus) == 0 {
		c.HealthStatus = DefaultHealthStatus
	}
	if c.PassiveCooldown == 0 {
		c.PassiveCooldown = DefaultPassiveCooldown
	}
	return c
}

// Validate reports the first problem with a normalized Config as a
// *FieldError naming the key.
func (c Config) Validate() error {
	if !validName(c.Name) {
		return fieldErr("name", "%q must be 1 to 64 letters, digits, '.', '_' or '-'", c.Name)
	}
	if _, err := hostPort(c.URL); err != nil {
		return &FieldError{Key: "url", Err: err}
	}
	if !strings.HasPrefix(c.HealthPath, "/") {
		return fieldErr("health_path", "%q must start with /", c.HealthPath)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"health_interval", c.HealthInterval}, {"health_timeout", c.HealthTimeout},
		{"restart_timeout", c.RestartTimeout}, {"drain_timeout", c.DrainTimeout},
		{"idle_conn_timeout", c.IdleConnTimeout}, {"dial_timeout", c.DialTimeout},
		{"response_header_timeout", c.ResponseHeaderTimeout}, {"read_timeout", c.ReadTimeout},
	} {
		if d.v < 0 {
			return fieldErr(d.key, "must not be negative, got %s", d.v)
		}
	}
	switch c.ProxyProtocol {
	case "", ProxyProtocolV1, ProxyProtocolV2:
	default:
		return fieldErr("proxy_protocol", "%q: want v1 or v2 (or leave it out)", c.ProxyProtocol)
	}
	if c.MaxFails < 0 {
		return fieldErr("max_fails", "must not be negative, got %d", c.MaxFails)
	}
	if c.MaxResponseHeaderBytes < 0 {
		return fieldErr("max_response_header_bytes", "must not be negative, got %d", c.MaxResponseHeaderBytes)
	}
	if c.MaxConnecting < 0 {
		return fieldErr("max_connecting", "must not be negative, got %d", c.MaxConnecting)
	}
	if c.MaxIdleConns < 0 {
		return fieldErr("max_idle_conns", "must not be negative, got %d", c.MaxIdleConns)
	}
	if c.MaxConns < 0 {
		return fieldErr("max_conns", "must not be negative, got %d (0: no limit)", c.MaxConns)
	}
	if c.SlowStart < 0 {
		return fieldErr("slow_start", "must not be negative, got %s", c.SlowStart)
	}
	if c.Weight <= 0 || c.Weight > MaxWeight {
		return fieldErr("weight", "must be 1 to %d, got %d", MaxWeight, c.Weight)
	}
	if c.PassiveFails < 0 {
		return fieldErr("passive_fails", "must not be negative, got %d (0: off)", c.PassiveFails)
	}
	if c.PassiveCooldown < 0 {
		return fieldErr("passive_cooldown", "must not be negative, got %s", c.PassiveCooldown)
	}
	switch c.HealthMethod {
	case "GET", "HEAD":
	default:
		return fieldErr("health_method", "%q: want GET or HEAD", c.HealthMethod)
	}
	if c.HealthMethod == "HEAD" && c.HealthBody != "" {
		return fieldErr("health_body", "a HEAD check has no body to look in; use health_method = \"GET\"")
	}
	if strings.ContainsAny(c.HealthHost, " \t\r\n/") {
		return fieldErr("health_host", "%q is not a host name", c.HealthHost)
	}
	for i, st := range c.HealthStatus {
		if _, err := parseStatusSpec(st); err != nil {
			return fieldErr(fmt.Sprintf("health_status[%d]", i), "%v", err)
		}
	}
	methods, ok := kindMethods[c.Kind]
	if !ok {
		return fieldErr("kind", "unknown kind %q (want apache, lighttpd, command or none)", c.Kind)
	}
	if c.ProcessExe != "" && strings.Contains(c.ProcessExe, "/") && !strings.HasPrefix(c.ProcessExe, "/") {
		return fieldErr("process_exe", "%q must be an absolute path or a base name", c.ProcessExe)
	}
	if c.Kind == KindNone {
		switch {
		case c.ProcessExe != "":
			return fieldErr("process_exe", "kind none is never signalled; set kind to use process_exe")
		case c.Restart != "":
			return fieldErr("restart", "kind none cannot be restarted; set kind to use restart %q", c.Restart)
		case len(c.RestartCommand) > 0:
			return fieldErr("restart_command", "kind none cannot be restarted; set kind = \"command\"")
		case len(c.StartCommand) > 0:
			return fieldErr("start_command", "kind none cannot be restarted; set kind and restart = \"stop-start\"")
		}
		return nil
	}
	if !methods[c.Restart] {
		return fieldErr("restart", "kind %s cannot restart by %q (want %s)", c.Kind, c.Restart, methodList(methods))
	}
	if c.Restart == MethodCommand && len(c.RestartCommand) == 0 {
		return fieldErr("restart_command", "required for restart command (kind %s)", c.Kind)
	}
	if c.Restart == MethodStopStart && len(c.RestartCommand) > 0 {
		return fieldErr("restart_command", "replaces the restart signal and cannot be combined with stop-start")
	}
	if c.Kind != KindCommand && len(c.RestartCommand) == 0 && c.PIDFile == "" {
		return fieldErr("pid_file", "required for kind %s restart %s (baton signals the PID it names)", c.Kind, c.Restart)
	}
	if c.Restart == MethodStopStart && len(c.StartCommand) == 0 {
		return fieldErr("start_command", "required for restart stop-start")
	}
	if c.Restart != MethodStopStart && len(c.StartCommand) > 0 {
		return fieldErr("start_command", "only used by restart stop-start, not %s", c.Restart)
	}
	return nil
}

// Restartable reports whether the backend has a restart method.
func (c Config) Restartable() bool { return c.Kind != "" && c.Kind != KindNone }

func methodList(m map[Method]bool) string {
	var out []string
	for _, k := range []Method{MethodGraceful, MethodStopStart, MethodCommand} {
		if m[k] {
			out = append(out, string(k))
		}
	}
	return strings.Join(out, " or ")
}

// hostPort checks that raw is an http URL naming a host and port, and
// returns host:port.
func hostPort(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("missing (want http://host:port)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" {
		return "", fmt.Errorf("%q: scheme must be http", raw)
	}
	if u.Host == "" || u.Port() == "" {
		return "", fmt.Errorf("%q: want http://host:port", raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("%q: only scheme, host and port are allowed", raw)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return "", fmt.Errorf("%q: %w", raw, err)
	}
	return u.Host, nil
}

// statusSpec matches response codes: one code, or a class (lo..lo+99).
type statusSpec struct{ lo, hi int }

// parseStatusSpec reads "200" or "2xx".
func parseStatusSpec(s string) (statusSpec, error) {
	if len(s) == 3 && s[0] >= '1' && s[0] <= '5' && strings.EqualFold(s[1:], "xx") {
		lo := int(s[0]-'0') * 100
		return statusSpec{lo, lo + 99}, nil
	}
	n := 0
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			n = -1
			break
		}
		n = n*10 + int(c-'0')
	}
	if len(s) != 3 || n < 100 || n > 599 {
		return statusSpec{}, fmt.Errorf("%q: want a code (200) or a class (2xx)", s)
	}
	return statusSpec{n, n}, nil
}

// statusMatcher reports whether a code is one of specs (validated).
func statusMatcher(specs []string) func(int) bool {
	var m []statusSpec
	for _, s := range specs {
		if sp, err := parseStatusSpec(s); err == nil {
			m = append(m, sp)
		}
	}
	return func(code int) bool {
		for _, sp := range m {
			if code >= sp.lo && code <= sp.hi {
				return true
			}
		}
		return false
	}
}
