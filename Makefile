# Two commands matter: `make demo` and `make test`. Both set up what is missing first
# (Debian packages, the virtualenv, the package) and are quick when nothing is.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYS_PACKAGES := libpcap0.8 tshark redis-server mariadb-server postgresql mosquitto chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= out/demo

.PHONY: all setup system venv demo test lint typecheck unit bench golden clean

all: test

setup: venv

# Debian packages: libpcap for scapy's BPF filters, tshark for pyshark and the
# independent reading of captures, a C compiler and Python's headers for the compiled
# journal (tracesock/record/_journal.c), mkfs.ext4 for the full-disk tests' small file system,
# the real servers the replay tests record (private instances, tests/realservers.py),
# and chromium, the headless browser that opens the HTML report (tests/test_report.py).
# Installed non-interactively, only when missing.
$(VENV)/.stamp-system: Makefile
	@missing=""; for p in $(SYS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv python3-pip"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	command -v mkfs.ext4 >/dev/null 2>&1 || missing="$$missing e2fsprogs"; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

system: $(VENV)/.stamp-system

$(VENV)/.stamp-venv: pyproject.toml tracesock/record/_journal.c $(VENV)/.stamp-system
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp-venv

demo: venv
	@$(VENV)/bin/tracesock demo all --out $(DEMO_OUT)

lint: venv
	$(PY) -m ruff check tracesock tests bench

typecheck: venv
	$(PY) -m mypy

unit: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# The core's tests run twice: through the compiled journal (the default) and through
# the Python path that stands in for it where it could not be built.
CORE_TESTS := tests/test_sockets.py tests/test_concurrency.py tests/test_faults.py \
	tests/test_stdlib.py tests/test_tracefile.py tests/test_journal.py tests/test_borrowing.py

test: venv
	$(PY) -m ruff check tracesock tests bench
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)
	TRACESOCK_PURE_PYTHON=1 $(PY) -m pytest -q $(CORE_TESTS)

bench: venv
	$(PY) bench/run.py

# Regenerate the committed golden traces and captures in captures/.
golden: venv
	$(VENV)/bin/tracesock demo all --out captures --no-report

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
