// Package metrics keeps baton's request, restart and upgrade counters in a
// Table: shared memory passed from each baton generation to the next (like
// the backend state table), so that every live generation, the serving one
// and older ones still draining, adds into the same counters. A counter
// therefore never goes back when baton upgrades itself, and requests
// finished by a draining generation are counted.
//
// The Table's layout is a contract between baton versions: a newer baton
// maps the memfd an older one created. Fields are only ever appended into
// the reserved space of a section (where an older table has zeros, which
// read as "nothing counted yet"); a change that cannot be expressed that
// way needs a new magic.
//
// What a Table holds is not trusted: OpenTable takes only the memfd
// NewTable made, checks the names, histograms and generation entries, and
// repairs in place what is corrupt, reporting it (Repairs; check.go has
// the rules). A slot dropped as unreadable loses its counters: the
// backend's start again from zero, which Prometheus reads as a reset.
//
// The TLS handshake counters (done, full or resumed; failed, by a small
// fixed set of reasons: TLSReason, TLSAlertReason) are in the Table too (appended after the backend slots; OpenTable takes them as
// counters that need no repair),
// so both data planes and every generation add into them. The process_*
// metrics (ReadProcess, from /proc/self, getrusage and getrlimit) are the
// serving process's, the one that answers the scrape, as Prometheus's own
// process collector reports them: they start again with each generation,
// which rate() takes as a process restart.
//
// Write renders the Table, plus gauges the caller samples, in the
// Prometheus text exposition format. It is written by hand: no Prometheus
// client library can keep its counters in memory shared between processes,
// and recording is a few atomic adds, with no allocation.
package metrics
