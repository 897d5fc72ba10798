// Package shmem creates, checks and maps the shared-memory files (memfds)
// that baton passes from one generation to the next: the backend state
// table, the metrics table and the TLS session ticket keys. The invariants
// it owns: a Region is always mapped MAP_SHARED over exactly its file's
// size, so every process that maps the same memfd sees the same bytes; a
// Region it creates is sealed against shrinking and growing, so no
// ftruncate (by a bug or by anyone holding the memfd) can leave a mapping
// over missing pages, which would crash every process touching them
// (SIGBUS); and Open maps only a file that is the memfd it expects (see
// Check), never whatever a descriptor number happens to name.
//
// What is read from a Region is not trusted: another process writes it.
// The packages that lay out tables in it validate every field they load and
// describe what they found corrupt and what they did about it as Repairs.
package shmem
