package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/accesslog"
	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/proxy"
)

// Config is a loaded, validated configuration.
type Config struct {
	Path          string // absolute path of the file it came from
	Listen        []string
	TLS           []TLS // [[tls]] sections, certificates loaded
	Server        ServerLimits
	Handoff       handoff.Options
	Proxy         proxy.Config
	ControlSocket string
	// ControlTimeout bounds the wait for a request line on the control
	// socket; zero means control.DefaultReadTimeout.
	ControlTimeout time.Duration
	RunDir         string
	Backends       []backends.Config
	// Balance spreads requests over the backends ([proxy] balance).
	Balance   backends.Balance
	LogLevel  slog.Level
	LogFormat string // text or json
	// Threads caps the OS threads running Go code (GOMAXPROCS); 0 leaves
	// Go's default, one per CPU. With the epoll engine it is the number of
	// event loops (0: epoll.DefaultLoops) and GOMAXPROCS is one more, at
	// least one per CPU.
	Threads int
	// AccessLog is the access log's path, "-" for standard output, "" for
	// none; AccessFormat its format.
	AccessLog    string
	AccessFormat accesslog.Format
	Admin        Admin
	// Engine is the data plane for plain HTTP/1.1 listeners: EngineEpoll
	// or EngineStdlib (net/http).
	Engine string
}

// Admin is the admin HTTP listener (/metrics, /healthz, /readyz, the
// status page).
type Admin struct {
	// Listen is its address; "" means no admin listener.
	Listen string
	// StopDelay is how long, at a final stop, baton keeps accepting
	// requests while /readyz already answers 503, so that a balancer in
	// front stops sending first. Zero: stop accepting at once.
	StopDelay time.Duration
}

// Data planes (proxy.engine).
const (
	EngineEpoll   = "epoll"
	EngineStdlib  = "stdlib"
	DefaultEngine = EngineEpoll
)

// ServerLimits are the client-facing HTTP server's timeouts and limits;
// zero means handoff's default.
type ServerLimits struct {
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	// MaxConns bounds open client connections per listener (epoll engine;
	// accepting pauses at the bound); 0: none.
	MaxConns         int
	LongDrainTimeout time.Duration // WebSockets, event streams: see handoff.Server
}

// Error is a configuration error: file, key (may be empty), reason.
type Error struct {
	File string
	Key  string
	Err  error
}

func (e *Error) Error() string {
	if e.Key == "" {
		return e.File + ": " + e.Err.Error()
	}
	return e.File + ": " + e.Key + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

type fileProxy struct {
	Listen            []string     `toml:"listen"`
	DrainTimeout      durationText `toml:"drain_timeout"`
	LongDrainTimeout  durationText `toml:"long_drain_timeout"`
	HoldTimeout       durationText `toml:"hold_timeout"`
	MaxHeld           *int         `toml:"max_held"`
	MaxAttempts       *int         `toml:"max_attempts"`
	ReadHeaderTimeout durationText `toml:"read_header_timeout"`
	IdleTimeout       durationText `toml:"idle_timeout"`
	MaxHeaderBytes    *int         `toml:"max_header_bytes"`
	Threads           *int         `toml:"threads"`
	Engine            string       `toml:"engine"`
	MaxConns          *int         `toml:"max_conns"`
	Balance           string       `toml:"balance"`
}

type fileControl struct {
	PIDFile        string       `toml:"pid_file"`
	Socket         string       `toml:"socket"`
	UpgradeTimeout durationText `toml:"upgrade_timeout"`
	RequestTimeout durationText `toml:"request_timeout"`
	RunDir         string       `toml:"run_dir"`
}

type fileLog struct {
	Level        string `toml:"level"`
	Format       string `toml:"format"`
	Access       string `toml:"access"`
	AccessFormat string `toml:"access_format"`
}

type fileAdmin struct {
	Listen    string       `toml:"listen"`
	StopDelay durationText `toml:"stop_delay"`
}

type fileBackend struct {
	Name                   string       `toml:"name"`
	URL                    string       `toml:"url"`
	HealthPath             string       `toml:"health_path"`
	HealthInterval         durationText `toml:"health_interval"`
	HealthTimeout          durationText `toml:"health_timeout"`
	MaxFails               *int         `toml:"max_fails"`
	Kind                   string       `toml:"kind"`
	PIDFile                string       `toml:"pid_file"`
	Restart                string       `toml:"restart"`
	StartCommand           []string     `toml:"start_command"`
	RestartCommand         []string     `toml:"restart_command"`
	ProcessExe             string       `toml:"process_exe"`
	RestartTimeout         durationText `toml:"restart_timeout"`
	DrainTimeout           durationText `toml:"drain_timeout"`
	MaxIdleConns           *int         `toml:"max_idle_conns"`
	MaxConnecting          *int         `toml:"max_connecting"`
	IdleConnTimeout        durationText `toml:"idle_conn_timeout"`
	DialTimeout            durationText `toml:"dial_timeout"`
	ResponseHeaderTimeout  durationText `toml:"response_header_timeout"`
	ReadTimeout            durationText `toml:"read_timeout"`
	MaxResponseHeaderBytes *int         `toml:"max_response_header_bytes"`
	ProxyProtocol          string       `toml:"proxy_protocol"`
	MaxConns               *int         `toml:"max_conns"`
	SlowStart              durationText `toml:"slow_start"`
	Weight                 *int         `toml:"weight"`
	Backup                 bool         `toml:"backup"`
	HealthHost             string       `toml:"health_host"`
	HealthMethod           string       `toml:"health_method"`
	HealthStatus           []string     `toml:"health_status"`
	HealthBody             string       `toml:"health_body"`
	PassiveFails           *int         `toml:"passive_fails"`
	PassiveCooldown        durationText `toml:"passive_cooldown"`
}

type file struct {
	Proxy   fileProxy     `toml:"proxy"`
	Control fileControl   `toml:"control"`
	Log     fileLog       `toml:"log"`
	Admin   fileAdmin     `toml:"admin"`
	Backend []fileBackend `toml:"backend"`
	TLS     []fileTLS     `toml:"tls"`
}

var decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): (.*)$`)

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return nil, &Error{File: path, Err: errors.Unwrap(err)}
	}
	return Parse(path, abs, string(b))
}

// Parse validates the text of a configuration file; name is used in errors
// and abs recorded as Path.
func Parse(name, abs, text string) (*Config, error) {
	var f file
	md, err := toml.Decode(text, &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			key, msg := syntaxReason(text, pe.Position.Line, pe.LastKey, pe.Message)
			return nil, &Error{File: fmt.Sprintf("%s:%d", name, pe.Position.Line), Key: key, Err: errors.New(msg)}
		}
	}
	// The decoder matches keys to fields ignoring case (Name is name,
	// [Proxy] is [proxy]), so the shape check runs on every file: a key
	// is written as documented or it is unknown.
	if e := shapeError(name, text, err); e != nil {
		return nil, e
	}
	if und := md.Undecoded(); err != nil || len(und) > 0 {
		// What the shape check did not explain.
		if m := decodeErrRE.FindStringSubmatch(fmt.Sprint(err)); m != nil {
			return nil, &Error{File: name + ":" + m[1], Key: m[2], Err: errors.New(m[3])}
		}
		if err != nil {
			return nil, &Error{File: name, Err: err}
		}
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, &Error{File: name, Key: keys[0], Err: fmt.Errorf("unknown key%s", plural(keys))}
	}
	c, err := build(&f, filepath.Dir(abs))
	if err != nil {
		var fe *backends.FieldError
		if errors.As(err, &fe) {
			return nil, &Error{File: name, Key: fe.Key, Err: fe.Err}
		}
		return nil, &Error{File: name, Err: err}
	}
	c.Path = abs
	return c, nil
}

// shapeError decodes text without a schema and reports its first problem
// (checkShape), with the line the strict decoder's error (decodeErr, may
// be nil) gave for the same key, and the other unknown keys after it.
func shapeError(name, text string, decodeErr error) error {
	var doc map[string]any
	md, err := toml.Decode(text, &doc)
	if err != nil {
		return nil
	}
	probs := checkShape(doc, md.Keys())
	if len(probs) == 0 {
		return nil
	}
	p := probs[0]
	file := name
	if m := decodeErrRE.FindStringSubmatch(fmt.Sprint(decodeErr)); m != nil && m[2] == p.bare && !p.unknown {
		file = name + ":" + m[1]
	}
	reason := p.reason
	if p.unknown {
		var also []string
		for _, q := range probs[1:] {
			if q.unknown {
				also = append(also, q.key)
			}
		}
		if len(also) > 0 {
			reason += fmt.Sprintf(" (also: %s)", strings.Join(also, ", "))
		}
	}
	return &Error{File: file, Key: p.key, Err: errors.New(reason)}
}

// syntaxReason is the key and message of a TOML syntax error at line of
// text, reworded where the parser's message is one an operator is likely
// to meet, with the index of the [[backend]] or [[tls]] entry added to the
// key.
func syntaxReason(text string, line int, key, msg string) (string, string) {
	lines := strings.Split(text, "\n")
	here := ""
	if line >= 1 && line <= len(lines) {
		here = strings.TrimSpace(lines[line-1])
	}
	if m := reDefinedTwice.FindStringSubmatch(msg); m != nil {
		key = m[1]
		switch {
		case strings.HasPrefix(here, "["):
			msg = fmt.Sprintf("[%s] appears twice: put all its keys under one [%s] line", key, key)
		case inArray(key):
			first, _, _ := strings.Cut(key, ".")
			msg = fmt.Sprintf("defined twice in one table (each %s starts with its own [[%s]] line)", first, first)
		default:
			msg = "defined twice in one table"
		}
	} else if m := reNotAValue.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("%s is not a value: put a string in quotes (%q)", m[1], m[1])
	} else if reNewline.MatchString(msg) {
		msg = `the string is not closed: a '"' is missing at the end of the line`
	} else if m := reNoEquals.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("want key = value: found '%s' where the = goes", m[1])
	} else if m := reTooLarge.FindStringSubmatch(msg); m != nil {
		msg = m[1] + " is too large"
	}
	return indexKey(lines, line, key), msg
}

var (
	reDefinedTwice = regexp.MustCompile(`^Key '(.+)' has already been defined\.$`)
	reNotAValue    = regexp.MustCompile(`^expected value but found "(.*)" instead$`)
	reNewline      = regexp.MustCompile(`^strings cannot contain newlines$`)
	reNoEquals     = regexp.MustCompile(`^expected '\.' or '=', but got '(.*)' instead$`)
	reTooLarge     = regexp.MustCompile(`^(.*) is out of range for int64$`)
)

// inArray reports whether key is in a [[backend]] or [[tls]] entry.
func inArray(key string) bool {
	first, _, _ := strings.Cut(key, ".")
	return first == "backend" || first == "tls"
}

// indexKey adds the entry's index to a key in [[backend]] or [[tls]]
// ("backend.kind" at line 9 is "backend[1].kind" when line 9 is in the
// second [[backend]]): the entries above line, counted by their headers.
func indexKey(lines []string, line int, key string) string {
	if !inArray(key) {
		return key
	}
	first, rest, _ := strings.Cut(key, ".")
	header := regexp.MustCompile(`^\s*\[\[\s*` + first + `\s*\]\]`)
	n := -1
	for i := 0; i < line && i < len(lines); i++ {
		if header.MatchString(lines[i]) {
			n++
		}
	}
	if n < 0 {
		return key
	}
	return strings.TrimSuffix(fmt.Sprintf("%s[%d].%s", first, n, rest), ".")
}

func plural(keys []string) string {
	if len(keys) == 1 {
		return ""
	}
	return fmt.Sprintf(" (also: %s)", strings.Join(keys[1:], ", "))
}

// errAt makes a *backends.FieldError, the carrier of key names here too.
func errAt(key string, format string, args ...any) error {
	return &backends.FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

func duration(key string, s durationText, dst *time.Duration) error {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(string(s))
	if err != nil {
		return errAt(key, "%q is not a duration (want e.g. \"30s\", \"500ms\")", s)
	}
	if d < 0 {
		return errAt(key, "%q must not be negative", s)
	}
	*dst = d
	return nil
}

func positive(key string, v *int, dst *int) error {
	if v == nil {
		return nil
	}
	if *v <= 0 {
		return errAt(key, "must be positive, got %d", *v)
	}
	*dst = *v
	return nil
}

// build turns the decoded file into a Config; relative paths are taken
// relative to dir, the configuration file's directory.
func build(f *file, dir string) (*Config, error) {
	c := &Config{LogLevel: slog.LevelInfo, LogFormat: "text"}

	if len(f.Proxy.Listen) == 0 && len(f.TLS) == 0 {
		return nil, errAt("proxy.listen", "no listen address (want e.g. [\"127.0.0.1:8080\"])")
	}
	seen := map[string]bool{}
	for i, a := range f.Proxy.Listen {
		key := fmt.Sprintf("proxy.listen[%d]", i)
		if err := checkAddr(a); err != nil {
			return nil, errAt(key, "%v", err)
		}
		if seen[a] {
			return nil, errAt(key, "%q listed twice", a)
		}
		seen[a] = true
	}
	c.Listen = f.Proxy.Listen
	var err error
	if c.TLS, err = buildTLS(f.TLS, dir, seen, time.Now()); err != nil {
		return nil, err
	}

	try := func(e error) {
		if err == nil {
			err = e
		}
	}
	try(duration("proxy.drain_timeout", f.Proxy.DrainTimeout, &c.Handoff.DrainTimeout))
	try(duration("proxy.long_drain_timeout", f.Proxy.LongDrainTimeout, &c.Server.LongDrainTimeout))
	try(duration("proxy.hold_timeout", f.Proxy.HoldTimeout, &c.Proxy.HoldTimeout))
	try(positive("proxy.max_held", f.Proxy.MaxHeld, &c.Proxy.MaxHeld))
	try(positive("proxy.max_attempts", f.Proxy.MaxAttempts, &c.Proxy.MaxAttempts))
	try(duration("proxy.read_header_timeout", f.Proxy.ReadHeaderTimeout, &c.Server.ReadHeaderTimeout))
	try(duration("proxy.idle_timeout", f.Proxy.IdleTimeout, &c.Server.IdleTimeout))
	try(positive("proxy.max_header_bytes", f.Proxy.MaxHeaderBytes, &c.Server.MaxHeaderBytes))
	if m := f.Proxy.MaxConns; m != nil {
		if *m < 0 {
			try(errAt("proxy.max_conns", "must not be negative, got %d (0: no bound)", *m))
		}
		c.Server.MaxConns = *m
	}
	if t := f.Proxy.Threads; t != nil {
		if *t < 0 {
			try(errAt("proxy.threads", "must not be negative, got %d (0: one per CPU)", *t))
		}
		c.Threads = *t
	}
	switch f.Proxy.Engine {
	case "":
		c.Engine = DefaultEngine
	case EngineEpoll, EngineStdlib:
		c.Engine = f.Proxy.Engine
	default:
		try(errAt("proxy.engine", "%q: want %q or %q", f.Proxy.Engine, EngineEpoll, EngineStdlib))
	}
	if b, e := backends.ParseBalance(f.Proxy.Balance); e != nil {
		try(errAt("proxy.balance", "%v", e))
	} else {
		c.Balance = b
	}
	try(duration("control.upgrade_timeout", f.Control.UpgradeTimeout, &c.Handoff.UpgradeTimeout))
	try(duration("control.request_timeout", f.Control.RequestTimeout, &c.ControlTimeout))
	if err != nil {
		return nil, err
	}
	if c.Handoff.DrainTimeout == 0 {
		c.Handoff.DrainTimeout = handoff.DefaultDrainTimeout
	}
	if l := c.Server.LongDrainTimeout; l != 0 && l < c.Handoff.DrainTimeout {
		return nil, errAt("proxy.long_drain_timeout", "%s is shorter than drain_timeout (%s)", l, c.Handoff.DrainTimeout)
	}
	c.Handoff.PIDFile = under(dir, f.Control.PIDFile)
	c.ControlSocket = under(dir, f.Control.Socket)
	c.RunDir = under(dir, f.Control.RunDir)
	if c.ControlSocket != "" && len(c.ControlSocket) > 107 {
		return nil, errAt("control.socket", "%q is longer than a unix socket path may be (107 bytes)", f.Control.Socket)
	}

	switch strings.ToLower(f.Log.Level) {
	case "", "info":
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		return nil, errAt("log.level", "%q: want debug, info, warn or error", f.Log.Level)
	}
	switch f.Log.Format {
	case "", "text":
	case "json":
		c.LogFormat = "json"
	default:
		return nil, errAt("log.format", "%q: want text or json", f.Log.Format)
	}

	if f.Log.Access != "-" {
		c.AccessLog = under(dir, f.Log.Access)
	} else {
		c.AccessLog = "-"
	}
	if c.AccessFormat, err = accesslog.ParseFormat(f.Log.AccessFormat); err != nil {
		return nil, errAt("log.access_format", "%v", err)
	}
	if a := f.Admin.Listen; a != "" {
		if err := checkAddr(a); err != nil {
			return nil, errAt("admin.listen", "%v", err)
		}
		for _, l := range c.Listen {
			if l == a {
				return nil, errAt("admin.listen", "%q is also a proxy.listen address (listeners are handed to the next generation by the address written here)", a)
			}
		}
		c.Admin.Listen = a
	}
	if err := duration("admin.stop_delay", f.Admin.StopDelay, &c.Admin.StopDelay); err != nil {
		return nil, err
	}

	if len(f.Backend) == 0 {
		return nil, errAt("backend", "no [[backend]] configured")
	}
	names := map[string]int{}
	for i, fb := range f.Backend {
		fb.PIDFile = under(dir, fb.PIDFile)
		b, err := buildBackend(fb, c.Handoff.DrainTimeout)
		if err != nil {
			var fe *backends.FieldError
			if errors.As(err, &fe) {
				return nil, errAt(fmt.Sprintf("backend[%d].%s", i, fe.Key), "%v", fe.Err)
			}
			return nil, err
		}
		if j, dup := names[b.Name]; dup {
			return nil, errAt(fmt.Sprintf("backend[%d].name", i), "duplicate backend name %q (also backend[%d])", b.Name, j)
		}
		names[b.Name] = i
		c.Backends = append(c.Backends, b)
	}
	primaries := 0
	for _, b := range c.Backends {
		if !b.Backup {
			primaries++
		}
	}
	if primaries == 0 {
		return nil, errAt("backend", "every backend has backup = true: backups stand in for primaries, so at least one must not be a backup")
	}
	return c, nil
}

// checkAddr validates a listen address: IP (or localhost, or nothing for
// every address) and port.
func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		var ae *net.AddrError
		switch {
		case strings.Contains(a, "://"):
			return fmt.Errorf("%q: want host:port, without a scheme", a)
		case !strings.Contains(a, ":") && isDigits(a):
			return fmt.Errorf("%q has no host: want %q (every address) or %q", a, ":"+a, "127.0.0.1:"+a)
		case errors.As(err, &ae) && strings.Contains(ae.Err, "missing port"):
			return fmt.Errorf("%q has no port: want e.g. %q", a, net.JoinHostPort(strings.Trim(a, "[]"), "80"))
		case errors.As(err, &ae) && strings.Contains(ae.Err, "too many colons"):
			return fmt.Errorf("%q: an IPv6 address goes in brackets: want e.g. \"[::1]:80\"", a)
		case errors.As(err, &ae):
			return fmt.Errorf("%q: %s (want host:port)", a, ae.Err)
		}
		return fmt.Errorf("%q: %w", a, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: bad port", a)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("%q: host must be an IP address", a)
	}
	return nil
}

func isDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// checkURL says in words what is wrong with a backend URL an operator is
// likely to write (no scheme, a bad port); backends.Config.Validate has
// the last word on the rest.
func checkURL(raw string) error {
	if raw == "" {
		return nil
	}
	if !strings.Contains(raw, "://") {
		want := "http://" + raw
		if !strings.Contains(raw, ":") {
			want += ":PORT"
		}
		return errAt("url", "%q has no scheme: want %q", raw, want)
	}
	if _, err := url.Parse(raw); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return errAt("url", "%q: %v (want http://host:port)", raw, err)
	}
	return nil
}

func buildBackend(fb fileBackend, drain time.Duration) (backends.Config, error) {
	b := backends.Config{
		Name: fb.Name, URL: fb.URL, HealthPath: fb.HealthPath,
		Kind: backends.Kind(fb.Kind), PIDFile: fb.PIDFile, Restart: backends.Method(fb.Restart),
		StartCommand: fb.StartCommand, RestartCommand: fb.RestartCommand, DrainTimeout: drain,
		ProcessExe:    fb.ProcessExe,
		ProxyProtocol: fb.ProxyProtocol,
		Backup:        fb.Backup, HealthHost: fb.HealthHost, HealthMethod: fb.HealthMethod,
		HealthStatus: fb.HealthStatus, HealthBody: fb.HealthBody,
	}
	err := checkURL(fb.URL)
	if fb.Name == "" {
		err = errAt("name", "missing (want e.g. name = \"apache\"; ctl and the logs use it)")
	}
	try := func(e error) {
		if err == nil {
			err = e
		}
	}
	try(duration("health_interval", fb.HealthInterval, &b.HealthInterval))
	try(duration("health_timeout", fb.HealthTimeout, &b.HealthTimeout))
	try(positive("max_fails", fb.MaxFails, &b.MaxFails))
	try(duration("restart_timeout", fb.RestartTimeout, &b.RestartTimeout))
	try(duration("drain_timeout", fb.DrainTimeout, &b.DrainTimeout))
	try(positive("max_idle_conns", fb.MaxIdleConns, &b.MaxIdleConns))
	try(positive("max_connecting", fb.MaxConnecting, &b.MaxConnecting))
	try(duration("idle_conn_timeout", fb.IdleConnTimeout, &b.IdleConnTimeout))
	try(duration("dial_timeout", fb.DialTimeout, &b.DialTimeout))
	try(duration("response_header_timeout", fb.ResponseHeaderTimeout, &b.ResponseHeaderTimeout))
	try(duration("read_timeout", fb.ReadTimeout, &b.ReadTimeout))
	try(positive("max_response_header_bytes", fb.MaxResponseHeaderBytes, &b.MaxResponseHeaderBytes))
	if fb.MaxConns != nil && *fb.MaxConns <= 0 {
		try(errAt("max_conns", "must be positive, got %d (leave it out for no limit)", *fb.MaxConns))
	}
	try(positive("max_conns", fb.MaxConns, &b.MaxConns))
	try(duration("slow_start", fb.SlowStart, &b.SlowStart))
	if fb.Weight != nil && (*fb.Weight <= 0 || *fb.Weight > backends.MaxWeight) {
		try(errAt("weight", "must be 1 to %d, got %d (take a backend out with backup or drain, not weight 0)", backends.MaxWeight, *fb.Weight))
	}
	try(positive("weight", fb.Weight, &b.Weight))
	if fb.HealthStatus != nil && len(fb.HealthStatus) == 0 {
		try(errAt("health_status", "empty: no answer could pass (leave it out for 2xx and 3xx)"))
	}
	if fb.HealthMethod != "" && fb.HealthMethod != "GET" && fb.HealthMethod != "HEAD" {
		try(errAt("health_method", "%q: want GET or HEAD", fb.HealthMethod))
	}
	if fb.PassiveFails != nil && *fb.PassiveFails < 0 {
		try(errAt("passive_fails", "must not be negative, got %d (0: off)", *fb.PassiveFails))
	} else if fb.PassiveFails != nil {
		b.PassiveFails = *fb.PassiveFails
	}
	try(duration("passive_cooldown", fb.PassiveCooldown, &b.PassiveCooldown))
	if err != nil {
		return b, err
	}
	b = b.Normalize()
	return b, b.Validate()
}

func under(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}
