# flake-pilot. The two set-up commands: `make demo` and `make test` (Debian 12, as root).
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
STATE ?= /var/tmp/flake-pilot
VENV ?= $(STATE)/venv
PY := $(VENV)/bin/python
HOSTPY ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: all venv setup setup-test demo test lint install uninstall clean

all: venv

setup:
	bash scripts/setup-host.sh

setup-test:
	bash scripts/setup-host.sh --test

$(PY): pyproject.toml
	$(HOSTPY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(PY)

venv: $(PY)

demo: setup venv
	bash scripts/demo.sh $(VENV)

test: setup-test venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

install:
	bash scripts/install.sh "$(DESTDIR)" "$(PREFIX)" "$(SYSCONFDIR)"

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache
