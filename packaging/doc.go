// Package packaging holds what goes into baton's Debian package besides
// the binary (the sandboxed systemd unit, the shipped
// /etc/baton/baton.toml, /etc/logrotate.d/baton, the man page, the
// maintainer scripts, nfpm.yaml) and TestDebPackage, which builds it with
// `make deb`, installs it with dpkg, checks it (the unit's exposure in
// `systemd-analyze security` included) and purges it again. Installing a
// package is not something `go test ./...` may do by surprise: the test
// runs only with BATON_TEST_DEB=1 (`make test` and .ci/run set it), and
// fails under CI=true without it, so CI cannot silently stop running it.
// The logrotate file itself is run with the real logrotate by
// cmd/baton's TestLogrotate, the unit's capability bounding set by
// TestUnitCapabilities. mkdeb/, the program that `make deb` runs, is a
// module of its own.
package packaging
