// Package packaging holds what goes into baton's Debian package besides
// the binary (the systemd unit, the shipped /etc/baton/baton.toml, the man
// page, the maintainer scripts, nfpm.yaml) and the test that builds it with
// `make deb`, installs it with dpkg and removes it again. mkdeb/, the
// program that `make deb` runs, is a module of its own.
package packaging
