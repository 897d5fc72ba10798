package config_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/batonproxy/baton/backends"
	"github.com/batonproxy/baton/cmd/internal/config"
	"github.com/batonproxy/baton/handoff"
	"github.com/batonproxy/baton/proxy"
)

const (
	name = "baton.toml"
	abs  = "/etc/baton/baton.toml"
)

const listen = `[proxy]
listen = ["127.0.0.1:8080"]
`

const backendA = `[[backend]]
name = "a"
url = "http://127.0.0.1:8081"
`

// defaultBackend is a backend as Normalize leaves it, with the drain
// timeout the proxy's.
func defaultBackend(name, url string, drain time.Duration) backends.Config {
	return backends.Config{
		Name:                   name,
		URL:                    url,
		HealthPath:             "/",
		HealthInterval:         backends.DefaultHealthInterval,
		HealthTimeout:          backends.DefaultHealthTimeout,
		MaxFails:               backends.DefaultMaxFails,
		Kind:                   backends.KindNone,
		RestartTimeout:         backends.DefaultRestartTimeout,
		DrainTimeout:           drain,
		MaxIdleConns:           backends.DefaultMaxIdleConns,
		MaxConnecting:          backends.DefaultMaxConnecting,
		IdleConnTimeout:        backends.DefaultIdleConnTimeout,
		DialTimeout:            backends.DefaultDialTimeout,
		ResponseHeaderTimeout:  backends.DefaultResponseHeaderTimeout,
		ReadTimeout:            backends.DefaultReadTimeout,
		MaxResponseHeaderBytes: backends.DefaultMaxResponseHeaderBytes,
		Weight:                 backends.DefaultWeight,
		HealthMethod:           backends.DefaultHealthMethod,
		HealthStatus:           backends.DefaultHealthStatus,
		PassiveCooldown:        backends.DefaultPassiveCooldown,
	}
}

const full = `
[proxy]
listen = ["127.0.0.1:8080", "[::1]:8080", ":8443", "localhost:9000"]
drain_timeout = "45s"
hold_timeout = "5s"
max_held = 100
max_attempts = 3
read_header_timeout = "2s"
idle_timeout = "90s"
max_header_bytes = 8192
threads = 2
engine = "epoll"

[control]
pid_file = "run/baton.pid"
socket = "/run/baton/ctl.sock"
upgrade_timeout = "20s"
request_timeout = "3s"
run_dir = "state"

[log]
level = "debug"
format = "json"

[[backend]]
name = "apache"
url = "http://127.0.0.1:8081"
health_path = "/health"
health_interval = "500ms"
health_timeout = "1s"
max_fails = 3
kind = "apache"
pid_file = "apache.pid"
restart = "stop-start"
start_command = ["apache2ctl", "start"]
restart_timeout = "2m"
drain_timeout = "10s"
max_idle_conns = 64
max_connecting = 32
idle_conn_timeout = "3s"
dial_timeout = "1500ms"
response_header_timeout = "30s"
read_timeout = "90s"
max_response_header_bytes = 16384

[[backend]]
name = "lighty"
url = "http://127.0.0.1:8082/"
kind = "lighttpd"
pid_file = "/run/lighttpd.pid"

[[backend]]
name = "cmd.v2_x-1"
url = "http://localhost:8083"
kind = "command"
restart_command = ["systemctl", "reload", "thing"]
`

func fullWant() *config.Config {
	apache := defaultBackend("apache", "http://127.0.0.1:8081", 10*time.Second)
	apache.HealthPath = "/health"
	apache.HealthInterval = 500 * time.Millisecond
	apache.HealthTimeout = time.Second
	apache.MaxFails = 3
	apache.Kind = backends.KindApache
	apache.PIDFile = "/etc/baton/apache.pid"
	apache.Restart = backends.MethodStopStart
	apache.StartCommand = []string{"apache2ctl", "start"}
	apache.RestartTimeout = 2 * time.Minute
	apache.MaxIdleConns = 64
	apache.MaxConnecting = 32
	apache.IdleConnTimeout = 3 * time.Second
	apache.DialTimeout = 1500 * time.Millisecond
	apache.ResponseHeaderTimeout = 30 * time.Second
	apache.ReadTimeout = 90 * time.Second
	apache.MaxResponseHeaderBytes = 16384

	lighty := defaultBackend("lighty", "http://127.0.0.1:8082/", 45*time.Second)
	lighty.Kind = backends.KindLighttpd
	lighty.PIDFile = "/run/lighttpd.pid"
	lighty.Restart = backends.MethodGraceful

	cmd := defaultBackend("cmd.v2_x-1", "http://localhost:8083", 45*time.Second)
	cmd.Kind = backends.KindCommand
	cmd.Restart = backends.MethodCommand
	cmd.RestartCommand = []string{"systemctl", "reload", "thing"}

	return &config.Config{
		Path:   abs,
		Listen: []string{"127.0.0.1:8080", "[::1]:8080", ":8443", "localhost:9000"},
		Server: config.ServerLimits{
			ReadHeaderTimeout: 2 * time.Second,
			IdleTimeout:       90 * time.Second,
			MaxHeaderBytes:    8192,
		},
		Handoff: handoff.Options{
			PIDFile:        "/etc/baton/run/baton.pid",
			UpgradeTimeout: 20 * time.Second,
			DrainTimeout:   45 * time.Second,
		},
		Proxy:          proxy.Config{HoldTimeout: 5 * time.Second, MaxHeld: 100, MaxAttempts: 3},
		ControlSocket:  "/run/baton/ctl.sock",
		ControlTimeout: 3 * time.Second,
		RunDir:         "/etc/baton/state",
		Backends:       []backends.Config{apache, lighty, cmd},
		LogLevel:       slog.LevelDebug,
		LogFormat:      "json",
		Threads:        2,
		Engine:         config.EngineEpoll,
	}
}

func minimalWant() *config.Config {
	return &config.Config{
		Path:      abs,
		Listen:    []string{"127.0.0.1:8080"},
		Handoff:   handoff.Options{DrainTimeout: handoff.DefaultDrainTimeout},
		Backends:  []backends.Config{defaultBackend("a", "http://127.0.0.1:8081", handoff.DefaultDrainTimeout)},
		LogLevel:  slog.LevelInfo,
		LogFormat: "text",
		Engine:    config.DefaultEngine,
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		abs  string // default abs
		text string
		want func() *config.Config
	}{
		{name: "minimal", text: listen + backendA, want: minimalWant},
		{name: "every key", text: full, want: fullWant},
		{
			name: "relative paths against the file's directory",
			abs:  "/srv/baton/conf/baton.toml",
			text: listen + `
[control]
pid_file = "../run/baton.pid"
socket = "ctl.sock"
run_dir = "."
` + backendA + `kind = "apache"
pid_file = "apache/httpd.pid"
`,
			want: func() *config.Config {
				c := minimalWant()
				c.Path = "/srv/baton/conf/baton.toml"
				c.Handoff.PIDFile = "/srv/baton/run/baton.pid"
				c.ControlSocket = "/srv/baton/conf/ctl.sock"
				c.RunDir = "/srv/baton/conf"
				c.Backends[0].Kind = backends.KindApache
				c.Backends[0].Restart = backends.MethodGraceful
				c.Backends[0].PIDFile = "/srv/baton/conf/apache/httpd.pid"
				return c
			},
		},
		{
			name: "proxy drain timeout is the backends' default",
			text: `[proxy]
listen = ["127.0.0.1:8080"]
drain_timeout = "7s"
` + backendA + `
[[backend]]
name = "b"
url = "http://127.0.0.1:8082"
drain_timeout = "0s"
`,
			want: func() *config.Config {
				c := minimalWant()
				c.Handoff.DrainTimeout = 7 * time.Second
				c.Backends[0].DrainTimeout = 7 * time.Second
				// "0s" is the zero value: Normalize's default, not the proxy's.
				c.Backends = append(c.Backends, defaultBackend("b", "http://127.0.0.1:8082", backends.DefaultDrainTimeout))
				return c
			},
		},
		{
			name: "limits, balancing and site-aware checks",
			text: `[proxy]
listen = ["127.0.0.1:8080"]
balance = "least_conn"
` + backendA + `max_conns = 25
slow_start = "10s"
weight = 3
health_host = "www.example.com"
health_method = "HEAD"
health_status = ["200", "3xx"]
passive_fails = 5
passive_cooldown = "30s"

[[backend]]
name = "b"
url = "http://127.0.0.1:8082"
backup = true
health_body = "site-ok"
`,
			want: func() *config.Config {
				c := minimalWant()
				c.Balance = backends.BalanceLeastConn
				a := &c.Backends[0]
				a.MaxConns, a.SlowStart, a.Weight = 25, 10*time.Second, 3
				a.HealthHost, a.HealthMethod, a.HealthStatus = "www.example.com", "HEAD", []string{"200", "3xx"}
				a.PassiveFails, a.PassiveCooldown = 5, 30*time.Second
				b := defaultBackend("b", "http://127.0.0.1:8082", backends.DefaultDrainTimeout)
				b.Backup, b.HealthBody = true, "site-ok"
				c.Backends = append(c.Backends, b)
				return c
			},
		},
		{
			name: "zero proxy drain timeout means the default",
			text: `[proxy]
listen = ["127.0.0.1:8080"]
drain_timeout = "0s"
` + backendA,
			want: minimalWant,
		},
		{
			name: "kind none restarts by nothing",
			text: listen + backendA + `kind = "none"
`,
			want: minimalWant,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.abs
			if a == "" {
				a = abs
			}
			got, err := config.Parse(name, a, tt.text)
			if err != nil {
				t.Fatalf("Parse: got error %v, want none", err)
			}
			want := tt.want()
			if want.Balance == "" {
				want.Balance = backends.DefaultBalance
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
				if len(got.Backends) == len(want.Backends) {
					for i := range got.Backends {
						if !reflect.DeepEqual(got.Backends[i], want.Backends[i]) {
							t.Errorf("backend[%d]:\n got %+v\nwant %+v", i, got.Backends[i], want.Backends[i])
						}
					}
				}
			}
		})
	}
}

func TestParseLogLevel(t *testing.T) {
	tests := []struct {
		level string
		want  slog.Level
	}{
		{"", slog.LevelInfo},
		{"info", slog.LevelInfo},
		{"debug", slog.LevelDebug},
		{"warn", slog.LevelWarn},
		{"warning", slog.LevelWarn},
		{"WARNING", slog.LevelWarn},
		{"error", slog.LevelError},
		{"Error", slog.LevelError},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			text := listen + "[log]\nlevel = \"" + tt.level + "\"\n" + backendA
			got, err := config.Parse(name, abs, text)
			if err != nil {
				t.Fatalf("Parse: got error %v, want none", err)
			}
			if got.LogLevel != tt.want {
				t.Errorf("LogLevel: got %v, want %v", got.LogLevel, tt.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		text string
		want string // the error contains this
		key  string // config.Error.Key
	}{
		{
			name: "unknown engine",
			text: "[proxy]\nlisten = [\"127.0.0.1:8080\"]\nengine = \"uring\"\n" + backendA,
			want: `baton.toml: proxy.engine: "uring": want "epoll" or "stdlib"`, key: "proxy.engine",
		},
		{
			name: "unknown key",
			text: listen + "bogus = 1\n" + backendA,
			want: "baton.toml: proxy.bogus: unknown key", key: "proxy.bogus",
		},
		{
			name: "unknown keys in a backend",
			text: listen + backendA + "colour = \"red\"\nshade = 2\n",
			want: "baton.toml: backend[0].colour: unknown key (also: backend[0].shade)", key: "backend[0].colour",
		},
		{
			name: "wrong type",
			text: listen + "max_held = \"many\"\n" + backendA,
			want: `baton.toml:3: proxy.max_held: want a whole number, not the string "many"`, key: "proxy.max_held",
		},
		{
			name: "syntax error",
			text: "[proxy\n",
			want: "baton.toml:2: ",
		},
		{
			name: "bad duration",
			text: listen + "drain_timeout = \"soon\"\n" + backendA,
			want: `baton.toml: proxy.drain_timeout: "soon" is not a duration`, key: "proxy.drain_timeout",
		},
		{
			name: "duration without unit",
			text: listen + "hold_timeout = \"30\"\n" + backendA,
			want: `baton.toml: proxy.hold_timeout: "30" is not a duration`, key: "proxy.hold_timeout",
		},
		{
			name: "negative duration",
			text: listen + "hold_timeout = \"-1s\"\n" + backendA,
			want: `baton.toml: proxy.hold_timeout: "-1s" must not be negative`, key: "proxy.hold_timeout",
		},
		{
			name: "negative control duration",
			text: listen + "[control]\nupgrade_timeout = \"-2m\"\n" + backendA,
			want: `baton.toml: control.upgrade_timeout: "-2m" must not be negative`, key: "control.upgrade_timeout",
		},
		{
			name: "negative backend duration",
			text: listen + backendA + "dial_timeout = \"-5s\"\n",
			want: `baton.toml: backend[0].dial_timeout: "-5s" must not be negative`, key: "backend[0].dial_timeout",
		},
		{
			name: "bad backend duration",
			text: listen + backendA + "health_interval = \"often\"\n",
			want: `baton.toml: backend[0].health_interval: "often" is not a duration`, key: "backend[0].health_interval",
		},
		{
			name: "zero max_held",
			text: listen + "max_held = 0\n" + backendA,
			want: "baton.toml: proxy.max_held: must be positive, got 0", key: "proxy.max_held",
		},
		{
			name: "negative max_fails",
			text: listen + backendA + "max_fails = -1\n",
			want: "baton.toml: backend[0].max_fails: must be positive, got -1", key: "backend[0].max_fails",
		},
		{
			name: "bad URL scheme",
			text: listen + "[[backend]]\nname = \"a\"\nurl = \"https://127.0.0.1:8081\"\n",
			want: `baton.toml: backend[0].url: "https://127.0.0.1:8081": scheme must be http`, key: "backend[0].url",
		},
		{
			name: "URL without port",
			text: listen + "[[backend]]\nname = \"a\"\nurl = \"http://127.0.0.1\"\n",
			want: `baton.toml: backend[0].url: "http://127.0.0.1": want http://host:port`, key: "backend[0].url",
		},
		{
			name: "URL with a path",
			text: listen + "[[backend]]\nname = \"a\"\nurl = \"http://127.0.0.1:8081/app\"\n",
			want: `baton.toml: backend[0].url: "http://127.0.0.1:8081/app": only scheme, host and port are allowed`, key: "backend[0].url",
		},
		{
			name: "missing URL",
			text: listen + "[[backend]]\nname = \"a\"\n",
			want: "baton.toml: backend[0].url: missing", key: "backend[0].url",
		},
		{
			name: "bad backend name",
			text: listen + "[[backend]]\nname = \"a b\"\nurl = \"http://127.0.0.1:8081\"\n",
			want: `baton.toml: backend[0].name: "a b" must be 1 to 64`, key: "backend[0].name",
		},
		{
			name: "duplicate backend name",
			text: listen + backendA + backendA,
			want: `baton.toml: backend[1].name: duplicate backend name "a" (also backend[0])`, key: "backend[1].name",
		},
		{
			name: "error in the second backend",
			text: listen + backendA + "[[backend]]\nname = \"b\"\nurl = \"ftp://127.0.0.1:21\"\n",
			want: `baton.toml: backend[1].url: "ftp://127.0.0.1:21": scheme must be http`, key: "backend[1].url",
		},
		{
			name: "no backend",
			text: listen,
			want: "baton.toml: backend: no [[backend]] configured", key: "backend",
		},
		{
			name: "no listener",
			text: "[proxy]\n" + backendA,
			want: "baton.toml: proxy.listen: no listen address", key: "proxy.listen",
		},
		{
			name: "empty listen list",
			text: "[proxy]\nlisten = []\n" + backendA,
			want: "baton.toml: proxy.listen: no listen address", key: "proxy.listen",
		},
		{
			name: "duplicate listen address",
			text: "[proxy]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n" + backendA,
			want: `baton.toml: proxy.listen[1]: "127.0.0.1:8080" listed twice`, key: "proxy.listen[1]",
		},
		{
			name: "listen address without port",
			text: "[proxy]\nlisten = [\"127.0.0.1\"]\n" + backendA,
			want: `baton.toml: proxy.listen[0]: "127.0.0.1" has no port: want e.g. "127.0.0.1:80"`, key: "proxy.listen[0]",
		},
		{
			name: "listen port out of range",
			text: "[proxy]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:70000\"]\n" + backendA,
			want: `baton.toml: proxy.listen[1]: "127.0.0.1:70000": bad port`, key: "proxy.listen[1]",
		},
		{
			name: "listen host name",
			text: "[proxy]\nlisten = [\"example.com:80\"]\n" + backendA,
			want: `baton.toml: proxy.listen[0]: "example.com:80": host must be an IP address`, key: "proxy.listen[0]",
		},
		{
			name: "unknown kind",
			text: listen + backendA + "kind = \"nginx\"\n",
			want: `baton.toml: backend[0].kind: unknown kind "nginx"`, key: "backend[0].kind",
		},
		{
			name: "kind command restarted by signal",
			text: listen + backendA + "kind = \"command\"\nrestart = \"graceful\"\nrestart_command = [\"true\"]\n",
			want: `baton.toml: backend[0].restart: kind command cannot restart by "graceful" (want command)`, key: "backend[0].restart",
		},
		{
			name: "unknown restart method",
			text: listen + backendA + "kind = \"apache\"\npid_file = \"a.pid\"\nrestart = \"bounce\"\n",
			want: `baton.toml: backend[0].restart: kind apache cannot restart by "bounce" (want graceful or stop-start or command)`, key: "backend[0].restart",
		},
		{
			name: "kind none with a restart method",
			text: listen + backendA + "restart = \"graceful\"\n",
			want: `baton.toml: backend[0].restart: kind none cannot be restarted`, key: "backend[0].restart",
		},
		{
			name: "missing pid_file",
			text: listen + backendA + "kind = \"apache\"\n",
			want: "baton.toml: backend[0].pid_file: required for kind apache restart graceful", key: "backend[0].pid_file",
		},
		{
			name: "missing start_command",
			text: listen + backendA + "kind = \"lighttpd\"\npid_file = \"l.pid\"\nrestart = \"stop-start\"\n",
			want: "baton.toml: backend[0].start_command: required for restart stop-start", key: "backend[0].start_command",
		},
		{
			name: "start_command without stop-start",
			text: listen + backendA + "kind = \"lighttpd\"\npid_file = \"l.pid\"\nstart_command = [\"lighttpd\"]\n",
			want: "baton.toml: backend[0].start_command: only used by restart stop-start, not graceful", key: "backend[0].start_command",
		},
		{
			name: "missing restart_command",
			text: listen + backendA + "kind = \"command\"\n",
			want: "baton.toml: backend[0].restart_command: required for restart command (kind command)", key: "backend[0].restart_command",
		},
		{
			name: "relative process_exe",
			text: listen + backendA + "kind = \"apache\"\npid_file = \"a.pid\"\nprocess_exe = \"bin/httpd\"\n",
			want: `baton.toml: backend[0].process_exe: "bin/httpd" must be an absolute path or a base name`, key: "backend[0].process_exe",
		},
		{
			name: "process_exe on kind none",
			text: listen + backendA + "process_exe = \"httpd\"\n",
			want: "baton.toml: backend[0].process_exe: kind none is never signalled", key: "backend[0].process_exe",
		},
		{
			name: "log level",
			text: listen + "[log]\nlevel = \"loud\"\n" + backendA,
			want: `baton.toml: log.level: "loud": want debug, info, warn or error`, key: "log.level",
		},
		{
			name: "log format",
			text: listen + "[log]\nformat = \"xml\"\n" + backendA,
			want: `baton.toml: log.format: "xml": want text or json`, key: "log.format",
		},
		{
			name: "control socket path too long",
			text: listen + "[control]\nsocket = \"/" + strings.Repeat("s", 107) + "\"\n" + backendA,
			want: "baton.toml: control.socket: ", key: "control.socket",
		},
		{
			name: "unknown balance",
			text: listen + "balance = \"random\"\n" + backendA,
			want: `proxy.balance: "random": want round_robin or least_conn`, key: "proxy.balance",
		},
		{
			name: "zero max_conns",
			text: listen + backendA + "max_conns = 0\n",
			want: "backend[0].max_conns: must be positive, got 0 (leave it out for no limit)", key: "backend[0].max_conns",
		},
		{
			name: "negative max_conns",
			text: listen + backendA + "max_conns = -5\n",
			want: "backend[0].max_conns: must be positive, got -5", key: "backend[0].max_conns",
		},
		{
			name: "zero weight",
			text: listen + backendA + "weight = 0\n",
			want: "backend[0].weight: must be 1 to 1000, got 0", key: "backend[0].weight",
		},
		{
			name: "negative slow_start",
			text: listen + backendA + "slow_start = \"-1s\"\n",
			want: "backend[0].slow_start: \"-1s\" must not be negative", key: "backend[0].slow_start",
		},
		{
			name: "backup only",
			text: listen + backendA + "backup = true\n",
			want: "backend: every backend has backup = true", key: "backend",
		},
		{
			name: "health method",
			text: listen + backendA + "health_method = \"POST\"\n",
			want: `backend[0].health_method: "POST": want GET or HEAD`, key: "backend[0].health_method",
		},
		{
			name: "health status",
			text: listen + backendA + "health_status = [\"200\", \"2x\"]\n",
			want: `backend[0].health_status[1]: "2x": want a code (200) or a class (2xx)`, key: "backend[0].health_status[1]",
		},
		{
			name: "empty health status",
			text: listen + backendA + "health_status = []\n",
			want: "backend[0].health_status: empty", key: "backend[0].health_status",
		},
		{
			name: "health body with HEAD",
			text: listen + backendA + "health_method = \"HEAD\"\nhealth_body = \"ok\"\n",
			want: "backend[0].health_body: a HEAD check has no body", key: "backend[0].health_body",
		},
		{
			name: "negative passive_fails",
			text: listen + backendA + "passive_fails = -1\n",
			want: "backend[0].passive_fails: must not be negative", key: "backend[0].passive_fails",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Parse(name, abs, tt.text)
			if err == nil {
				t.Fatalf("Parse: got %+v, want an error containing %q", got, tt.want)
			}
			if got != nil {
				t.Errorf("Parse: got config %+v with the error, want nil", got)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tt.want)
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error: got %T, want *config.Error", err)
			}
			if ce.Key != tt.key {
				t.Errorf("Error.Key: got %q, want %q", ce.Key, tt.key)
			}
			if !strings.HasPrefix(ce.File, name) {
				t.Errorf("Error.File: got %q, want it to start with %q", ce.File, name)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "baton.toml")
	text := listen + "[control]\npid_file = \"baton.pid\"\n" + backendA
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.Path != path {
		t.Errorf("Path: got %q, want %q", got.Path, path)
	}
	if want := filepath.Join(dir, "baton.pid"); got.Handoff.PIDFile != want {
		t.Errorf("Handoff.PIDFile: got %q, want %q", got.Handoff.PIDFile, want)
	}

	missing := filepath.Join(dir, "nope.toml")
	_, err = config.Load(missing)
	if err == nil {
		t.Fatal("Load of a missing file: got no error")
	}
	if want := missing + ": no such file or directory"; err.Error() != want {
		t.Errorf("error: got %q, want %q", err, want)
	}
}

// TestReadmeExample keeps the configuration shown in README.md valid.
func TestReadmeExample(t *testing.T) {
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "```toml\n")
	if start < 0 {
		t.Fatal("README.md has no toml block")
	}
	text = text[start+len("```toml\n"):]
	text = text[:strings.Index(text, "```")]
	c, err := config.Parse("README.md", "/etc/baton/baton.toml", text)
	if err != nil {
		t.Fatalf("the README's example does not parse: %v", err)
	}
	if len(c.Backends) != 1 || c.Backends[0].Kind != backends.KindApache {
		t.Errorf("README example: backends %+v", c.Backends)
	}
}

// TestShippedConfig keeps the package's /etc/baton/baton.toml valid, with
// the access log that /etc/logrotate.d/baton rotates.
func TestShippedConfig(t *testing.T) {
	b, err := os.ReadFile("../../../packaging/baton.toml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse("baton.toml", "/etc/baton/baton.toml", string(b))
	if err != nil {
		t.Fatalf("the shipped configuration does not parse: %v", err)
	}
	if g, e := c.AccessLog, "/var/log/baton/access.log"; g != e {
		t.Errorf("AccessLog: got %q, want %q (the path packaging/baton.logrotate rotates)", g, e)
	}
	if g, e := c.ControlSocket, "/run/baton/baton.sock"; g != e {
		t.Errorf("ControlSocket: got %q, want %q (the socket packaging/baton.logrotate and ctl use)", g, e)
	}
}
