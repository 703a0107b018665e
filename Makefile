# Every target bootstraps its own virtualenv with the machine's python3 (override PYTHON / VENV).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint demo serve bench fixtures clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check phone_agent tests tools
	$(BIN)/ruff format --check phone_agent tests tools
	$(BIN)/mypy

test: lint browser
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/phone-agent demo

serve: $(STAMP)
	$(BIN)/phone-agent serve

bench: $(STAMP)
	$(BIN)/python tools/bench_audio.py

# Regenerates tests/fixtures/ and the demo's bundled call from text (needs Debian's espeak-ng).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
fixtures: $(STAMP)
	command -v espeak-ng >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng sox)
	$(BIN)/python tools/make_fixture.py --demo

# The browser tests (tests/test_softphone.py) drive Debian's Chromium with Playwright (Playwright's
# own browser download does not work here); under CI=1 they fail without it.
.PHONY: browser
browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .pytest_cache .ruff_cache

# Regenerates the container image's hash-pinned locks from pyproject.toml with pip-tools, in a
# throwaway virtualenv on Python 3.12 (the image's; Linux x86_64): infra/requirements.lock (runtime
# dependencies) and infra/build-requirements.lock (the wheel's build backend). Existing pins are
# kept; `make lock LOCK_ARGS=--upgrade` moves everything to the newest releases.
.PHONY: lock
LOCK_PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && echo "$$p" && break; done)
LOCK_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-trusted-host \
	--no-emit-find-links $(LOCK_ARGS)
lock:
	@test -n "$(LOCK_PYTHON)" || (echo "make lock needs Python 3.12: make lock LOCK_PYTHON=/path/to/python3.12" >&2; exit 1)
	rm -rf .venv-lock && $(LOCK_PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip pip-tools
	$(LOCK_COMPILE) --output-file infra/requirements.lock pyproject.toml
	$(LOCK_COMPILE) --build-deps-for wheel --only-build-deps --output-file infra/build-requirements.lock pyproject.toml
	rm -rf .venv-lock
