# Two entry points do all set-up on a fresh Debian 12 machine (as root):
#   make run   - install what is missing, build, start the agent in the foreground
#   make test  - the same set-up, then the whole suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
OBJDIR := src/meshlens/bpf_objects
BUILD := build
BPF_SRCS := $(wildcard bpf/*.bpf.c)
BPF_OBJS := $(patsubst bpf/%.bpf.c,$(OBJDIR)/%.bpf.o,$(BPF_SRCS))
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
APT_PKGS := clang llvm libbpf-dev libbpf1 bpftool iproute2 nftables make
TEST_APT_PKGS := nginx-light dnsmasq-base redis-server wrk curl iputils-ping openssl
CFLAGS_BPF := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Ibpf \
	-mcpu=v3 -Wall -Werror -Wno-unused-function

.PHONY: all deps test-deps venv build run test unit kernel lint bench clean

all: build

# Install the system packages that are missing; a no-op when all are present.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

test-deps: deps
	@missing=""; for p in $(TEST_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(VPY): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev,bench]'
	@touch $(VPY)

venv: $(VPY)

$(BUILD)/vmlinux.h:
	@mkdir -p $(BUILD)
	@test -r /sys/kernel/btf/vmlinux || { echo "error: /sys/kernel/btf/vmlinux missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF)"; exit 1; }
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(OBJDIR)/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.h) $(BUILD)/vmlinux.h
	@mkdir -p $(OBJDIR)
	clang $(CFLAGS_BPF) -c $< -o $@

build: deps venv $(BPF_OBJS)

run: build
	$(VENV)/bin/meshlens run $(ARGS)

unit: build
	$(VENV)/bin/pytest -q tests/unit

kernel: build test-deps
	$(VENV)/bin/pytest -q tests/kernel

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: build test-deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q tests

bench: build test-deps
	$(VPY) bench/run.py $(ARGS)

clean:
	rm -rf $(BUILD) $(OBJDIR) $(VENV)
