package backends

import (
	"syscall"
)

// ServerFacts is what baton relies on about one kind of server. Every entry
// is checked against the real server by TestServerFacts; the measurements
// behind them are in the README ("Backend facts").
type ServerFacts struct {
	Binary          string         // the Debian binary name
	GracefulRestart syscall.Signal // re-reads config, finishes in-flight requests, keeps the socket
	GracefulStop    syscall.Signal // stops accepting, finishes in-flight requests, exits
	Foreground      []string       // flags that keep it in the foreground
	ConfigTest      []string       // flags that test the configuration and exit

	// SamePIDAfterGraceful: the PID in the PID file survives a graceful
	// restart (Apache's parent; lighttpd without server.graceful-restart-bg).
	SamePIDAfterGraceful bool
	// NewChildrenAfterGraceful: a graceful restart is finished when the
	// parent has children that did not exist before the signal (Apache).
	NewChildrenAfterGraceful bool
	// ClosesIdleOnGraceful: the graceful restart begins by closing idle
	// keep-alive connections, so a connection left idle before the signal
	// shows when the server has acted on it (both; lighttpd then accepts
	// again only once restarted).
	ClosesIdleOnGraceful bool
	// PIDFileRemovedOnStop: the graceful stop removes the PID file at once,
	// while the old process may still hold the port (Apache WINCH, lighttpd
	// INT).
	PIDFileRemovedOnStop bool
	// StartTruncatesPIDFile: a start opens the PID file with O_TRUNC before
	// it binds, so a start that fails (port still busy) wipes a running
	// server's PID file (lighttpd). Start only once the old PID file is gone.
	StartTruncatesPIDFile bool
	// StartMayFindPortBusy: the old generation's children can hold the port
	// for tens of ms after the PID file is gone, so a start is retried on
	// failure (Apache).
	StartMayFindPortBusy bool

	Methods map[Method]bool // restart methods this kind supports
}

var servers = map[Kind]ServerFacts{
	KindApache: {
		Binary:                   "apache2",
		GracefulRestart:          syscall.SIGUSR1,  // apache2 -k graceful
		GracefulStop:             syscall.SIGWINCH, // apache2 -k graceful-stop
		Foreground:               []string{"-DFOREGROUND"},
		ConfigTest:               []string{"-t"},
		SamePIDAfterGraceful:     true,
		NewChildrenAfterGraceful: true,
		ClosesIdleOnGraceful:     true,
		PIDFileRemovedOnStop:     true,
		StartMayFindPortBusy:     true,
		Methods:                  map[Method]bool{MethodGraceful: true, MethodStopStart: true, MethodCommand: true},
	},
	KindLighttpd: {
		Binary:                "lighttpd",
		GracefulRestart:       syscall.SIGUSR1, // lighttpd >= 1.4.46
		GracefulStop:          syscall.SIGINT,  // served in-flight up to server.graceful-shutdown-timeout
		Foreground:            []string{"-D"},
		ConfigTest:            []string{"-tt"},
		SamePIDAfterGraceful:  true,
		ClosesIdleOnGraceful:  true,
		PIDFileRemovedOnStop:  true,
		StartTruncatesPIDFile: true,
		Methods:               map[Method]bool{MethodGraceful: true, MethodStopStart: true, MethodCommand: true},
	},
	KindCommand: {
		Methods: map[Method]bool{MethodCommand: true},
	},
}

var kindMethods = map[Kind]map[Method]bool{
	KindNone:     nil,
	KindApache:   servers[KindApache].Methods,
	KindLighttpd: servers[KindLighttpd].Methods,
	KindCommand:  servers[KindCommand].Methods,
}

// Facts returns what baton relies on about kind k.
func Facts(k Kind) (ServerFacts, bool) {
	f, ok := servers[k]
	return f, ok
}
