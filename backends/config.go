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
)

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
