// Package handoff owns baton's listening sockets and hands them from one
// process generation to the next with github.com/cloudflare/tableflip.
//
// The invariant it keeps: at any moment exactly one generation serves. It
// accepts on every listener, its PID is in the PID file, and it alone can
// start an upgrade. Older generations hold no listener; they only finish
// the connections they already had, each until its own drain deadline, and
// several of them may do so side by side. A new generation takes traffic
// only once it has called Ready; if it fails before that (bad
// configuration, crash, upgrade timeout), the serving one goes on as if
// nothing happened, with its PID back in the PID file, and the error says
// why. A new generation that fails removes nothing it does not own: not
// the sockets it inherited (the control socket among them), not the PID
// file.
//
// What an old generation does after Exit (Shutdown): stop accepting; let
// the new generation go (so it can upgrade again without waiting, see
// releaseSuccessor); answer the next request on each keep-alive connection
// with "Connection: close" instead of closing idle connections under the
// clients' feet; send each HTTP/2 connection a graceful GOAWAY and, a
// moment later, the final one (h2.go); at the drain deadline close what is
// left except long-lived connections (WebSockets and other hijacked
// Upgrade connections, streaming responses), which may go on until the
// long drain deadline, when WebSockets get a close frame (long.go).
//
// TLS: a Server with a TLSConfig terminates TLS itself. The session ticket
// keys (TicketKeys) live in a memfd that every generation passes to the
// next, so sessions resume across upgrades; only the serving generation
// rotates them. A memfd passed under their name that is not theirs is
// refused; corrupt keys in it are dropped (a corrupt file replaced by a
// fresh key) and reported, never a reason not to start.
//
// Signals: SIGHUP upgrades (a SIGHUP during an upgrade joins it),
// SIGTERM and SIGINT drain and stop. The package knows nothing of HTTP
// routing: Server takes any http.Handler.
package handoff
