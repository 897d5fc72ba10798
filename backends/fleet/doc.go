// Package fleet coordinates several batons in front of the same backends
// through etcd. See the package's full invariants below (written at the
// end of phase A).
package fleet
