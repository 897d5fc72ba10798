# baton: see README.md. `make demo` and `make test` do all setup on a fresh
# Debian machine (as root: apt-get installs what is missing).
SHELL := /bin/bash
GO ?= go
BIN := bin/baton
GOFLAGS_TEST ?= -race -count=1 -timeout 12m

.PHONY: all build test vet demo bench deps deps-bench clean

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

deps-bench:
	$(call need,apache2 lighttpd wrk haproxy nginx-light nghttp2-client)

build:
	$(GO) build -o $(BIN) ./cmd/baton

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: deps vet
	$(GO) test $(GOFLAGS_TEST) ./...

# The main job: baton in front of real Apache and lighttpd, upgraded and
# restarted under load for 30 s; prints the summary and writes
# soak-report.html.
demo: deps build
	$(GO) run ./cmd/demo -baton $(BIN)

# Side-by-side throughput and latency of direct access, baton, HAProxy and
# nginx on one nginx backend, plus upgrade timings; writes BENCHMARKS.md.
bench: deps-bench build
	$(GO) run ./cmd/bench -baton $(BIN) -out BENCHMARKS.md

clean:
	rm -rf bin
