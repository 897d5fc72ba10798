// Package fleet coordinates several batons in front of the same backends
// (a keepalived pair, batons behind an L4 balancer, a baton on each web
// host) through an etcd cluster (v3 API, go.etcd.io/etcd/client/v3 and
// its concurrency package), behind baton's own Coordinator interface so
// that another engine could be added. A backend is the same backend on
// every member when its name matches.
//
// # What is in etcd, under the prefix (default /baton/), and who writes it
//
//	members/<name>         the member's record (JSON Member: generation,
//	                       host, pid, and its view of each backend: state,
//	                       ready, healthy, in flight, fleet_drained, quiet,
//	                       confirmed), under the member's lease; written by
//	                       that member only, its serving generation only
//	drain/<backend>        a fleet-wide drain (ctl drain --fleet), no
//	                       lease: it stays until undrain, across every
//	                       member's restart and upgrade
//	restart/<backend>      a fleet restart under way (phase drain, restart,
//	                       restarted), under the initiator's operation lease
//	locks/backend/<b>/…    the fleet-wide restart lock of a backend,
//	locks/pool/<p>/…       of a pool, and
//	sems/restarts/…        the max_parallel_restarts slots: all under the
//	                       operation lease (concurrency.Mutex keys)
//	elections/tickets/…    the ticket key rotator's election, member leases
//	tickets                the TLS ticket keys, AES-256-GCM sealed under a
//	                       key HKDF-SHA256 derives from secret_file (the
//	                       prefix is the salt); written by the elected
//	                       member only, guarded by its leadership
//
// # Invariants
//
// A member takes traffic to a backend the fleet has drained never: Sync
// applies every mark (Drain for a marked backend, Undrain for every other)
// before baton says Ready, and the member's watch applies each change
// after. Marks are level-triggered; a member only calls Drain/Undrain for
// backends it has.
//
// A fleet restart restarts a backend only once every live member that has
// it reports it fleet-drained and quiet (no request in flight, or its own
// drain_timeout passed), and readmits it once every such member has probed
// it healthy (or HealthWait passed: then the members' health checks
// decide). A member is live while its lease is: one that dies is dropped
// after lease_ttl and no longer waited for.
//
// Nothing stays drained by an operation that is gone: a restart's mark and
// locks belong to a lease of the process running it, revoked when it ends
// and expired lease_ttl after that process dies or is cut off. Only
// drain/<backend>, which an operator set, outlives its writer.
//
// Membership survives upgrades: the member lease is handed to the next
// generation (Handover, passed by baton like the state table), which
// resumes its keepalive; both renew it until the old one Detaches, and
// the old one stops publishing and applying marks once it sees the newer
// generation's record. A fleet restart the old generation runs goes on
// under its own operation lease until it finishes. A second baton using a
// name that a live baton holds is refused; a crashed predecessor on the
// same host (another boot, or its pid gone or no baton) is cleared.
//
// # When etcd is gone
//
// etcd is never in the request path: requests are routed on local state,
// which is what the member last applied. Every call has call_timeout (a
// request lost with etcd's leader is sent again within it). While etcd is
// unreachable the member is degraded: Status says so and why, fleet
// operations refuse at once naming etcd and its endpoints, local
// operations work as alone. Once etcd answers again the member resumes its
// lease (or joins anew if it expired), reads every mark again, applies
// them and republishes its record. The ticket keys stay the last ones
// applied; none rotate until etcd is back.
//
// # What someone with write access to etcd can make a baton do
//
// Drain or undrain the backends the baton already has (by writing or
// deleting drain/ and restart/ keys), which can take them out of rotation;
// make a fleet restart that an operator started wait, fail or go ahead
// before the fleet is drained (by forging member records); delay restarts
// by holding locks; stop ticket key rotation or make members refuse the
// keys (not forge them: that needs secret_file). It cannot make a baton
// run a command, signal a process or restart a backend: a restart runs
// only on the member whose operator asked for it, by the name given there,
// through baton's own restart code and its process identity checks; no
// PID, path or command is ever read from etcd. Values larger than 256 KiB
// or malformed are ignored.
package fleet
