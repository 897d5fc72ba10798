// Package proxy is baton's HTTP handler: an httputil.ReverseProxy (with
// Rewrite) in front of a Pool of upstreams.
//
// The invariant it owns: a request is never failed for a reason a wait or a
// safe retry would have avoided, and never sent twice when the first send
// could have had an effect. While no upstream is ready the request is held
// (bounded by HoldTimeout and MaxHeld); a connection that could not be made
// is retried on another upstream; any other failure is retried only for
// replayable requests (idempotent method, no body). Requests that are not
// replayable travel on a fresh backend connection, never on a pooled one a
// server may be closing as idle. What cannot be served gets 502, 503 (with
// Retry-After) or 504 and a one-line plain-text reason, logged once per
// burst.
//
// The package knows nothing of processes, signals or restarts: the Pool
// says which upstreams are ready.
package proxy
