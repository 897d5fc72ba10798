// Package events keeps the last log events of baton (what the status page
// shows under "Recent events") in a Ring: shared memory passed from each
// baton generation to the next, like the metrics table, so that an
// upgrade does not empty it and the events of a draining generation (its
// "connections drained", its "exiting") show on the serving one's page.
//
// The invariant it owns: nothing read back from the shared memory is
// trusted. Another process writes it (an older baton, a generation dying
// half-way through a write), so every entry is checked when it is read:
// its sequence number must say it is whole and is the one expected at
// its place, its lengths must fit, its text must be UTF-8, its time, level,
// pid and generation must be in range. An entry that fails any check is
// dropped; reading never panics, whatever the bytes (FuzzList).
//
// Writers in several processes share the ring without a lock: each takes
// the next sequence number with an atomic add and owns its entry while
// the entry's sequence word is odd. Every word is read and written with
// atomic operations, so readers and writers in one process do not race.
package events
