// Command baton is a front proxy that keeps legacy web servers (Apache,
// lighttpd) serving through its own upgrades and their restarts.
//
//	baton run   [--config FILE]             serve
//	baton check [--config FILE] [--strict]  validate a configuration
//	baton ctl   [--socket PATH | --config FILE] [--json] [--if-running] CMD [ARGS]
//	baton soak  --target URL ...            prove restarts are invisible under load
//	baton version
//
// FILE is /etc/baton/baton.toml (the Debian package's) by default; ctl
// with neither flag reads it if it exists, else talks to
// /run/baton/baton.sock.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// version and commit are set at build time with -ldflags "-X
// main.version=... -X main.commit=..." (make build, make deb); without them
// they come from the module and VCS information Go records in the binary.
var (
	version = ""
	commit  = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: baton <command> [flags]

commands:
  run     [--config FILE]      serve (SIGHUP upgrades, SIGTERM drains and stops,
                               SIGUSR1 restarts every backend, one at a time)
  check   [--config FILE] [--strict]
                               validate a configuration: exit 0 (warnings, such as
                               a backend down, are printed), 1 on an error
  ctl     [--socket PATH | --config FILE] [--json] CMD
                               talk to a running baton: status, upgrade, stop,
                               restart NAME | restart --all, drain NAME, undrain NAME,
                               reopen-logs
  soak    --target URL ...     load baton while upgrading and restarting it, and report
  version                      print the version, commit and Go version

FILE is /etc/baton/baton.toml by default; ctl with neither --config nor
--socket reads it if it exists, else talks to /run/baton/baton.sock.
Run "baton <command> -h" for a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "ctl":
		return cmdCtl(args[1:], stdout, stderr)
	case "soak":
		return cmdSoak(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "baton %s (commit %s, %s %s/%s)\n", versionString(), commitString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "baton: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func commitString() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if rev == "" {
		return "unknown"
	}
	return rev + modified
}

// Where the Debian package puts the configuration and the control socket.
// run and check read defaultConfig when no --config is given; ctl with
// neither --config nor --socket reads defaultConfig if it exists, else
// talks to defaultSocket. Variables, so that tests can point them
// elsewhere.
var (
	defaultConfig = "/etc/baton/baton.toml"
	defaultSocket = "/run/baton/baton.sock"
)

// configOrDefault is the --config value given to cmd, or defaultConfig
// when none was; false (having said why) when none was given and
// defaultConfig cannot be read.
func configOrDefault(given, cmd string, stderr io.Writer) (string, bool) {
	if given != "" {
		return given, true
	}
	if _, err := os.Stat(defaultConfig); err != nil {
		fmt.Fprintf(stderr, "%s: no --config FILE given, and the default configuration %s: %v\n", cmd, defaultConfig, errors.Unwrap(err))
		return "", false
	}
	return defaultConfig, true
}

// configFlag registers --config and -c on fs.
func configFlag(fs *flag.FlagSet) *string {
	p := new(string)
	fs.StringVar(p, "config", "", "configuration `file` (TOML; default "+defaultConfig+")")
	fs.StringVar(p, "c", "", "shorthand for --config")
	return p
}

// parseFlags parses args into fs; it reports usage errors itself.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (ok bool, code int) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return false, 0
		}
		return false, 2
	}
	return true, 0
}
