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

test: lint
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

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .pytest_cache .ruff_cache
