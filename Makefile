# banger — build and test. `make test` is the whole suite (CI runs it).
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/banger-sh/banger/internal/version.Version=$(VERSION) -X github.com/banger-sh/banger/internal/version.Commit=$(COMMIT)
AGENT := internal/agentbin/dist/banger-agent
BIN := bin
# Where tests keep the guest image and downloads between runs: outside the
# clone, so CI and developers do not rebuild it every time.
export BANGER_TEST_CACHE ?= /var/cache/banger-test

.PHONY: all build agent test test-unit bench install clean quickstart

all: build

# The guest agent, embedded in bangerd: go generate builds it (static) into
# internal/agentbin/dist/. Without it, bangerd does not compile.
agent:
	BANGER_VERSION=$(VERSION) $(GO) generate ./internal/agentbin

build: agent
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/banger ./cmd/banger
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/bangerd ./cmd/bangerd

install: build
	install -m 0755 $(BIN)/banger $(BIN)/bangerd /usr/local/bin/

# The whole suite: unit, integration (real SQLite, git, daemon) and
# end-to-end tests that boot real VMs. Needs root and the packages that
# scripts/setup-host installs.
test: build
	BANGER_TEST_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 60m ./...

# Fast tests only (no VM boots).
test-unit: agent
	$(GO) test -count=1 -short ./...

bench: build
	BANGER_TEST_BIN=$(abspath $(BIN)) $(GO) run ./bench/vmrun

# First command of the README's quick start: set the host up, build, check,
# and run a command in a real VM.
quickstart:
	scripts/setup-host
	$(MAKE) build
	$(BIN)/banger doctor
	$(BIN)/banger vm run --rm . -- git status

clean:
	rm -rf $(BIN) $(AGENT) $(AGENT).sources
