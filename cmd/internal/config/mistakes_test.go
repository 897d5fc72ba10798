package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/batonproxy/baton/cmd/internal/config"
)

// TestOperatorMistakes: configurations as a new operator writes them
// (Issue 16.6). Each error names the file, the key with the index of its
// entry and the reason in words, never a Go parser's message; an unknown
// key close to a known one gets the known one suggested.
func TestOperatorMistakes(t *testing.T) {
	const (
		L = "[proxy]\nlisten = [\"127.0.0.1:8080\"]\n"
		B = "[[backend]]\nname = \"apache\"\nurl = \"http://127.0.0.1:8081\"\n"
	)
	for _, tc := range []struct {
		name, text, want string
	}{
		{"url without scheme", L + "[[backend]]\nname = \"apache\"\nurl = \"127.0.0.1:8081\"\n",
			`baton.toml: backend[0].url: "127.0.0.1:8081" has no scheme: want "http://127.0.0.1:8081"`},
		{"url host only", L + "[[backend]]\nname = \"apache\"\nurl = \"localhost\"\n",
			`baton.toml: backend[0].url: "localhost" has no scheme: want "http://localhost:PORT"`},
		{"url with a service name for a port", L + "[[backend]]\nname = \"apache\"\nurl = \"http://127.0.0.1:http\"\n",
			`baton.toml: backend[0].url: "http://127.0.0.1:http": invalid port ":http" after host (want http://host:port)`},
		{"url with a space", L + "[[backend]]\nname = \"apache\"\nurl = \"http://127.0.0.1 :8081\"\n",
			`baton.toml: backend[0].url: "http://127.0.0.1 :8081": invalid character " " in host name (want http://host:port)`},
		{"url of the second backend", L + B + "[[backend]]\nname = \"lighttpd\"\nurl = \"127.0.0.1:8082\"\n",
			`baton.toml: backend[1].url: "127.0.0.1:8082" has no scheme: want "http://127.0.0.1:8082"`},
		{"typo without underscore", L + B + "healthpath = \"/\"\n",
			"baton.toml: backend[0].healthpath: unknown key (did you mean health_path?)"},
		{"dash for underscore", L + B + "health-path = \"/\"\n",
			"baton.toml: backend[0].health-path: unknown key (did you mean health_path?)"},
		{"typo in the second backend", L + B + B + "pidfile = \"/run/apache2/apache2.pid\"\n",
			"baton.toml: backend[1].pidfile: unknown key (did you mean pid_file?)"},
		{"typo in proxy", L + "drain_timout = \"10s\"\n" + B,
			"baton.toml: proxy.drain_timout: unknown key (did you mean drain_timeout?)"},
		{"unknown key far from any", L + B + "colour = \"red\"\n",
			"baton.toml: backend[0].colour: unknown key"},
		{"key in the wrong section", L + "health_path = \"/\"\n" + B,
			"baton.toml: proxy.health_path: unknown key: health_path is a key of [[backend]], not of [proxy]"},
		{"key at the top level", "listen = [\"127.0.0.1:8080\"]\n" + B,
			"baton.toml: listen: unknown key: listen is a key of [proxy], [admin] and [[tls]], not of the top level"},
		{"unknown section", L + "[logging]\nlevel = \"info\"\n" + B,
			"baton.toml: logging: unknown section [logging] (did you mean [log]?)"},
		{"plural section", L + "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:8081\"\n",
			"baton.toml: backends: unknown section [[backends]] (did you mean [[backend]]?)"},
		{"[backend] for [[backend]]", L + "[backend]\nname = \"a\"\nurl = \"http://127.0.0.1:8081\"\n",
			"baton.toml:3: backend: [backend] is a single table: write [[backend]] (double brackets) above each entry"},
		{"[tls] for [[tls]]", L + "[tls]\nlisten = [\"127.0.0.1:8443\"]\n" + B,
			"baton.toml:3: tls: [tls] is a single table: write [[tls]] (double brackets) above each entry"},
		{"[[proxy]] for [proxy]", "[[proxy]]\nlisten = [\"127.0.0.1:8080\"]\n" + B,
			"baton.toml:1: proxy: want one [proxy] table, not [[proxy]]"},
		{"duration as a number", L + "drain_timeout = 30\n" + B,
			`baton.toml:3: proxy.drain_timeout: 30 has no unit: want a duration in quotes, e.g. "30s" or "30ms"`},
		{"backend duration as a number", L + B + "health_interval = 5\n",
			`baton.toml:6: backend[0].health_interval: 5 has no unit: want a duration in quotes, e.g. "5s" or "5ms"`},
		{"duration without a unit", L + "hold_timeout = \"30\"\n" + B,
			`baton.toml: proxy.hold_timeout: "30" is not a duration (want e.g. "30s", "500ms")`},
		{"number in quotes", L + "max_held = \"100\"\n" + B,
			`baton.toml:3: proxy.max_held: want a number without quotes (max_held = 100), not the string "100"`},
		{"fraction for a count", L + "max_held = 1.5\n" + B,
			"baton.toml:3: proxy.max_held: want a whole number, not the number 1.5"},
		{"negative count", L + "threads = -1\n" + B,
			"baton.toml: proxy.threads: must not be negative, got -1 (0: one per CPU)"},
		{"negative weight", L + B + "weight = -3\n",
			"baton.toml: backend[0].weight: must be 1 to 1000, got -3 (take a backend out with backup or drain, not weight 0)"},
		{"negative duration", L + B + "restart_timeout = \"-1m\"\n",
			`baton.toml: backend[0].restart_timeout: "-1m" must not be negative`},
		{"list as a string", "[proxy]\nlisten = \"127.0.0.1:8080\"\n" + B,
			`baton.toml:2: proxy.listen: want a list in brackets: listen = ["127.0.0.1:8080"], not a single string`},
		{"command as a string", L + B + "kind = \"lighttpd\"\npid_file = \"/run/lighttpd.pid\"\nrestart = \"stop-start\"\nstart_command = \"/usr/sbin/lighttpd -f /etc/lighttpd/lighttpd.conf\"\n",
			`baton.toml:9: backend[0].start_command: want a list in brackets: start_command = ["/usr/sbin/lighttpd", "-f", "/etc/lighttpd/lighttpd.conf"], not a single string`},
		{"port numbers for listen", "[proxy]\nlisten = [80]\n" + B,
			"baton.toml:2: proxy.listen[0]: want a string in quotes, not the number 80"},
		{"port alone", "[proxy]\nlisten = [\"8080\"]\n" + B,
			`baton.toml: proxy.listen[0]: "8080" has no host: want ":8080" (every address) or "127.0.0.1:8080"`},
		{"IPv6 without brackets", "[proxy]\nlisten = [\"::1:8080\"]\n" + B,
			`baton.toml: proxy.listen[0]: "::1:8080": an IPv6 address goes in brackets: want e.g. "[::1]:80"`},
		{"admin address without port", L + "[admin]\nlisten = \"127.0.0.1\"\n" + B,
			`baton.toml: admin.listen: "127.0.0.1" has no port: want e.g. "127.0.0.1:80"`},
		{"yes for true", L + B + "backup = \"yes\"\n",
			`baton.toml:6: backend[0].backup: want true or false without quotes, not the string "yes"`},
		{"number for a string", L + "[log]\nlevel = 3\n" + B,
			"baton.toml:4: log.level: want a string in quotes, not the number 3"},
		{"status codes as numbers", L + B + "health_status = [200, 204]\n",
			"baton.toml:6: backend[0].health_status[0]: want a string in quotes, not the number 200"},
		{"unquoted string", L + B + "kind = apache\n",
			`baton.toml:6: backend[0].kind: apache is not a value: put a string in quotes ("apache")`},
		{"unclosed string", L + B + "kind = \"apache\n",
			`baton.toml:6: backend[0].kind: the string is not closed: a '"' is missing at the end of the line`},
		{"missing equals", L + B + "kind \"apache\"\n",
			`baton.toml:6: backend[0]: want key = value: found '"' where the = goes`},
		{"key twice", L + B + "name = \"b\"\n",
			"baton.toml:6: backend[0].name: defined twice in one table (each backend starts with its own [[backend]] line)"},
		{"section twice", L + "[proxy]\n" + B,
			"baton.toml:3: proxy: [proxy] appears twice: put all its keys under one [proxy] line"},
		{"key twice in the second backend", L + B + B + "url = \"http://127.0.0.1:8082\"\n",
			"baton.toml:9: backend[1].url: defined twice in one table (each backend starts with its own [[backend]] line)"},
		{"key twice in proxy", L + "listen = [\"127.0.0.1:8081\"]\n" + B,
			"baton.toml:3: proxy.listen: defined twice in one table"},
		{"number too large", L + "max_held = 99999999999999999999\n" + B,
			"baton.toml:3: proxy.max_held: 99999999999999999999 is too large"},
		{"certificate key typo", L + "[[tls]]\nlisten = [\"127.0.0.1:8443\"]\ncertificates = [{cert = \"a.crt\", key_file = \"a.key\"}]\n" + B,
			"baton.toml: tls[0].certificates[0].cert: unknown key (did you mean cert_file?)"},
		{"certificates as a string", L + "[[tls]]\nlisten = [\"127.0.0.1:8443\"]\ncertificates = \"a.crt\"\n" + B,
			`baton.toml:5: tls[0].certificates: want a list of tables in brackets, e.g. [ { ... }, { ... } ], not the string "a.crt"`},
		{"tls version typo", L + "[[tls]]\nlisten = [\"127.0.0.1:8443\"]\nmin_versoin = \"1.3\"\n" + B,
			"baton.toml: tls[0].min_versoin: unknown key (did you mean min_version?)"},
		{"unknown engine", L + "engine = \"epol\"\n" + B,
			`baton.toml: proxy.engine: "epol": want "epoll" or "stdlib"`},
		{"key in capitals", L + B + "Health_Path = \"/\"\n",
			"baton.toml: backend[0].Health_Path: unknown key (did you mean health_path?)"},
		{"section in capitals", "[Proxy]\nlisten = [\"127.0.0.1:8080\"]\n" + B,
			"baton.toml: Proxy: unknown section [Proxy] (did you mean [proxy]?)"},
		{"listen with a scheme", "[proxy]\nlisten = [\"http://127.0.0.1:8080\"]\n" + B,
			`baton.toml: proxy.listen[0]: "http://127.0.0.1:8080": want host:port, without a scheme`},
		{"backend without a name", L + "[[backend]]\nurl = \"http://127.0.0.1:8081\"\n",
			`baton.toml: backend[0].name: missing (want e.g. name = "apache"; ctl and the logs use it)`},
		{"two unknown keys", L + B + "helth_path = \"/\"\nmax_fail = 3\n",
			"baton.toml: backend[0].helth_path: unknown key (did you mean health_path?) (also: backend[0].max_fail)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("baton.toml", "/etc/baton/baton.toml", tc.text)
			if err == nil {
				t.Fatalf("Parse: no error, want %q", tc.want)
			}
			if g, e := err.Error(), tc.want; g != e {
				t.Errorf("error:\n got %s\nwant %s", g, e)
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error is a %T, want *config.Error", err)
			}
			for _, raw := range []string{"incompatible types", "first path segment", "parse \"", "strconv.", "map[string]", "int64", "toml: line", "(last key"} {
				if strings.Contains(err.Error(), raw) {
					t.Errorf("error %q has the raw message %q", err, raw)
				}
			}
		})
	}
}
