# flake-pilot. The two set-up commands: `make demo` and `make test` (Debian 12, as root).
# `make check`: lint and the tests that need neither root nor an engine (unprivileged, changes nothing
# on the host: it writes only into the checkout and the temp dir).
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
STATE ?= /var/tmp/flake-pilot
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
HOSTPY ?= /usr/bin/python3
# the interpreter of the installed programs (make build/install)
PYTHON ?= $(HOSTPY)
PYTEST_ARGS ?=
# the tests `make check` leaves out: markers (pyproject.toml) set from what a test uses (tests/conftest.py)
NOT_QUICK := root or podman or firecracker or qemu or build
SHELL_SCRIPTS = $(shell grep -l '^\#!.*\bbash\b' scripts/* .ci/run)
PY_SCRIPTS = $(shell grep -l '^\#!.*\bpython3\b' scripts/*)

.PHONY: all venv setup setup-test demo check test lint build install uninstall clean man completion deb

all: venv

setup:
	bash scripts/setup-host.sh

setup-test:
	bash scripts/setup-host.sh --test

$(VENV)/.installed: pyproject.toml
	$(HOSTPY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: setup venv
	bash scripts/demo.sh $(VENV)

check: lint
	$(PY) -m pytest -m "not ($(NOT_QUICK))" --tier=check $(PYTEST_ARGS)

test: setup-test lint
	$(PY) -m pytest $(PYTEST_ARGS)

# shellcheck comes with `make setup-test` (Debian: shellcheck); `make check` installs nothing, so
# where it is missing only that step is left out, saying so
lint: venv
	$(VENV)/bin/ruff check src tests bench $(PY_SCRIPTS)
	$(VENV)/bin/ruff format --check src tests bench $(PY_SCRIPTS)
	$(VENV)/bin/mypy
	@if command -v shellcheck >/dev/null; then echo shellcheck $(SHELL_SCRIPTS); shellcheck $(SHELL_SCRIPTS); \
	else echo "lint: shellcheck is not installed (make setup-test, or apt-get install shellcheck): scripts/ not checked" >&2; fi

# man pages and completion scripts, generated from the parser and docstrings (into build/)
man: venv
	$(PY) -m flake_pilot.ctl.manpages build/man

completion: venv
	mkdir -p build/completion
	for sh in bash zsh fish; do $(PY) -m flake_pilot.ctl.completion $$sh build/completion/flake-ctl.$$sh || exit 1; done

# the Debian package (built in a copy of the tree; the .deb lands in build/deb/)
deb:
	rm -rf build/deb && mkdir -p build/deb
	tar -c --exclude=./.git --exclude=./build --exclude=./.venv --exclude='./.*_cache' --exclude=./.hypothesis \
	  --exclude=__pycache__ --exclude='*.egg-info' . | tar -x -C build/deb --one-top-level=flake-pilot
	cd build/deb/flake-pilot && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$$HOME LANG=C.UTF-8 dpkg-buildpackage -us -uc -b

# make build: everything make install puts in place, built for PREFIX/SYSCONFDIR into STAGE (as any user);
# make install: puts it in place (rebuilding first where the sources or those paths changed);
# make uninstall: removes what make install put in place (its list: PREFIX/lib/flake-pilot/.installed-files)
STAGE ?= build/stage
STAGE_INPUTS = pyproject.toml README.md scripts/install.sh scripts/write-launchers \
	$(shell find src docs -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*')
ifneq ($(shell cat $(STAGE)/built-for 2>/dev/null | tr '\n' '|'),$(PREFIX)|$(SYSCONFDIR)|$(PYTHON)|)
.PHONY: $(STAGE)/built-for  # not built yet, or for other paths: build again
endif

$(STAGE)/built-for: $(STAGE_INPUTS)
	PYTHON=$(PYTHON) bash scripts/install.sh build "$(STAGE)" "$(PREFIX)" "$(SYSCONFDIR)"

build: $(STAGE)/built-for

install: build
	PYTHON=$(PYTHON) bash scripts/install.sh install "$(STAGE)" "$(DESTDIR)" "$(PREFIX)" "$(SYSCONFDIR)"

uninstall:
	bash scripts/install.sh uninstall "$(DESTDIR)" "$(PREFIX)"

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache
