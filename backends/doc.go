// Package backends starts, probes, drains and restarts the servers behind
// baton (Apache, lighttpd, or anything with a restart command), and picks
// one per request for package proxy.
//
// The invariant it owns: a backend receives requests only while it is
// healthy, not drained and not in a restart; and a restart of a backend is
// run by exactly one process at a time, across all live baton
// generations. Both hold because the state lives in one StateTable, shared
// memory passed from each generation to the next, updated only by
// compare-and-swap: the serving process and older ones still draining see
// the same states and the same in-flight counts.
//
// Who owns a restart across a handoff: the process that started it
// finishes it. A baton upgrade in the middle of a restart does not move
// it: the old process keeps running the restart's steps (drain, signal,
// wait until healthy, readmit) while it drains its own connections, and
// exits only once the restart is over; the new process starts with the
// backend out of rotation (the shared state says so) and sees it readmitted
// the moment the owner readmits it. If the owner dies mid-restart, the
// serving process adopts it: it waits until the backend is up and healthy
// (within restart_timeout) and readmits it, or marks it down.
//
// Servers are usually started by systemd, not by baton: baton signals them
// through their PID file and never reaps or kills a server it did not
// start. It signals only a process that is no baton, runs the server's
// executable and listens on the backend's port (verifyProcess), checked
// before the drain and again right before the signal.
//
// Nothing read from the StateTable is trusted (Issue 21): OpenStateTable
// takes only the memfd NewStateTable made, checks every slot and repairs
// what is corrupt in place, reporting each repair (Repairs) for cmd to
// log. A backend whose state cannot be read is never readmitted in the
// middle of a restart that still runs, nor kept out for good: it stays
// out while a live owner runs its restart, else it is down until its next
// passing health check (statecheck.go has the rule for every field).
//
// In-flight counts are kept per generation (pid and start time) as well as
// globally; the counts of a generation that died are taken out by
// whichever process notices, so a kill -9 does not stall later drains. A server started by a stop-start restart runs in its own session
// and outlives the baton process that started it.
//
// The facts baton relies on about each server (signals, PID file
// behaviour) are data, in servers.go, checked against the real servers by
// the tests.
package backends
