# Modelplane: `make up` runs the embedded platform, `make test` runs the whole suite,
# `make test-fast` its unit and in-process API tiers (markers: pyproject.toml, tests/conftest.py).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch==2.13.0 lives in /opt/wheels on our machines; pip finds it there.
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off

.PHONY: up install install-dev test test-fast chromium iproute2 haproxy lint bench stack clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --quiet --upgrade pip setuptools wheel

# `make up` installs the server side and every runtime (`.[all]`); a bare `pip install .` is
# the SDK and the command line only.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

up: install
	$(BIN)/modelplane up

# The dashboard tests drive Debian's chromium. Installed here only when missing and only as
# root; otherwise they skip with the reason (with CI=true a missing chromium fails them).
CHROMIUM := /usr/bin/chromium

test: install-dev chromium iproute2 haproxy
	$(BIN)/python -m pytest -q -rs

# The inner loop: the unit and in-process API tiers, no real process, nothing slow, and the
# registry's API tests on SQLite only (`make test` runs them on Postgres as well).
test-fast: install-dev
	$(BIN)/python -m pytest -q -rs -m '(unit or api) and not slow and not postgres'

chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the dashboard tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			|| echo "could not install chromium: the dashboard tests will skip (fail with CI=true)"; \
	fi

# iproute2 (`ip netns`) for the multi-host test, installed only when missing and only as
# root; without it that test runs its loopback variant only.
iproute2:
	@if ! command -v ip >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing iproute2 for the multi-host test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 \
			|| echo "could not install iproute2: the multi-host test runs on loopback only"; \
	fi

# HAProxy (Debian's, >= 2.6) for the gateway's native data plane (`python -m gateway --engine
# haproxy`), installed only when missing and only as root; without it those tests skip
# (fail with CI=true).
haproxy:
	@if ! command -v haproxy >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's haproxy for the gateway's native data plane"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy \
			|| echo "could not install haproxy: the native gateway's tests will skip (fail with CI=true)"; \
	fi

# docker-compose.yml's topology natively: local Postgres, SeaweedFS, 2 control planes behind
# a balancer on 127.0.0.1:8000, 2 gateways (the stable URL) behind one on 127.0.0.1:8080,
# 2 deployer workers (network namespaces as root). Ctrl-C stops it.
stack: install-dev
	$(BIN)/modelplane stack

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .modelplane .pytest_cache
