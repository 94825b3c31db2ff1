# flake-pilot. The two set-up commands: `make demo` and `make test` (Debian 12, as root).
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
STATE ?= /var/tmp/flake-pilot
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
HOSTPY ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: all venv setup setup-test demo test lint install uninstall clean man completion deb

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

# man pages and completion scripts, generated from the parser and docstrings (into build/)
man: venv
	$(PY) -m flake_pilot.ctl.manpages build/man

completion: venv
	mkdir -p build/completion
	for sh in bash zsh fish; do $(PY) -m flake_pilot.ctl.completion $$sh build/completion/flake-ctl.$$sh || exit 1; done

# the Debian package (built in a copy of the tree; the .deb lands in build/deb/)
deb:
	rm -rf build/deb && mkdir -p build/deb
	tar -c --exclude=./.git --exclude=./build --exclude=__pycache__ --exclude='*.egg-info' . | tar -x -C build/deb --one-top-level=flake-pilot
	cd build/deb/flake-pilot && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$$HOME LANG=C.UTF-8 dpkg-buildpackage -us -uc -b

install:
	bash scripts/install.sh "$(DESTDIR)" "$(PREFIX)" "$(SYSCONFDIR)"

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache
