# baton: see README.md. `make demo` and `make test` do all setup on a fresh
# Debian machine (as root: apt-get installs what is missing).
SHELL := /bin/bash
GO ?= go
BIN := bin/baton
GOFLAGS_TEST ?= -race -count=1 -timeout 14m
FUZZTIME ?= 20s
# The TLS record layer's fuzzers against crypto/tls (a few seconds each).
FUZZTIME_TLS ?= 4s

# Version and commit, set in the binary (baton version) and the package.
# Without a v* tag: 0.0.<commits>+g<hash>, which sorts by history.
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null | sed 's/^v//; s/-\([0-9]*\)-g/+\1.g/'); \
	[ -n "$$v" ] || v=0.0.$$(git rev-list --count HEAD 2>/dev/null || echo 0)+g$$(git rev-parse --short=7 HEAD 2>/dev/null || echo unknown); \
	git diff --quiet HEAD 2>/dev/null || v=$$v.dirty; echo $$v)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
DIST ?= dist
DEB = $(DIST)/baton_$(VERSION)_amd64.deb

.PHONY: all build test vet demo bench deb deps deps-bench deps-test clean

all: build

# need installs the Debian packages in $(1) that are missing. A policy-rc.d
# that exits 101 keeps the packages from starting their system services
# (on port 80); it is removed again if we put it there.
define need
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
	  created=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi; \
	  rc=0; (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) || rc=$$?; \
	  if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  exit $$rc; \
	fi
endef

deps:
	$(call need,apache2 lighttpd)

# What the tests use besides the servers: dpkg installs the package,
# systemd-analyze (package systemd) verifies its unit, whose Documentation=
# man:baton(1) it checks with man (man-db); chromium loads the status page;
# logrotate runs the shipped logrotate file; setpriv (util-linux) gives
# baton the unit's capability bounding set.
# etcd-server runs the etcd clusters of backends/fleet's tests.
deps-test: deps
	$(call need,dpkg systemd gzip man-db chromium logrotate util-linux curl openssl nghttp2-client etcd-server)

deps-bench:
	$(call need,apache2 lighttpd wrk haproxy nginx-light nghttp2-client strace)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/baton

vet:
	$(GO) vet ./...
	cd tools/bench && $(GO) vet ./... && $(GO) test -count=1 ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# BATON_TEST_DEB=1 lets packaging's TestDebPackage install and purge the
# package on this machine (it skips without; under CI=true it fails without).
test: deps-test vet
	BATON_TEST_DEB=1 $(GO) test $(GOFLAGS_TEST) ./...
	$(GO) test -run '^$$' -fuzz FuzzDifferential -fuzztime $(FUZZTIME) ./proxy/epoll/
	$(GO) test -run '^$$' -fuzz FuzzReader -fuzztime $(FUZZTIME_TLS) ./proxy/epoll/internal/tls13/
	$(GO) test -run '^$$' -fuzz FuzzWriter -fuzztime $(FUZZTIME_TLS) ./proxy/epoll/internal/tls13/

# The main job: the same 30 s of load and the same events (upgrades,
# restarts, a config deploy) first straight to a real Apache and a real
# lighttpd, then through baton; prints both side by side and writes
# soak-report.html (and soak.json, soak-junit.xml).
demo: deps build
	$(GO) run ./cmd/demo -baton $(BIN)

# Side-by-side throughput and latency of direct access, baton, HAProxy and
# nginx on one nginx backend, plus upgrade timings; writes BENCHMARKS.md.
bench: deps-bench build
	cd tools/bench && $(GO) run . -baton $(abspath $(BIN)) -out $(abspath BENCHMARKS.md)

# The Debian package: a static binary, the systemd unit, /etc/baton/baton.toml
# (a conffile), the man page. nfpm does the packaging, as a Go library in
# packaging/mkdeb (a module of its own: its dependencies stay out of go.mod).
deb:
	@mkdir -p $(DIST)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $(DIST)/baton ./cmd/baton
	gzip -9nc packaging/baton.1 > $(DIST)/baton.1.gz
	gzip -9nc README.md > $(DIST)/README.md.gz
	cd packaging/mkdeb && $(GO) build -o $(abspath $(DIST))/mkdeb .
	cd packaging && $(abspath $(DIST))/mkdeb -config nfpm.yaml -version '$(VERSION)' -bin $(abspath $(DIST))/baton \
		-man $(abspath $(DIST))/baton.1.gz -readme $(abspath $(DIST))/README.md.gz -out $(abspath $(DEB))
	@echo "wrote $(DEB)"

clean:
	rm -rf bin dist
