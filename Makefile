# Stagecoach: the two commands a new user needs are `make run` and `make test`.
# Each does its own set-up from a fresh clone and reuses everything on a second run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
export PYTHON

.PHONY: run test test-pythons setup lint bench docs test-fast clean help

help:
	@echo "make run    set up, then start Temporal (with Web UI), the worker and the API on examples/lifecycle"
	@echo "make test   set up, then lint, type-check and run the whole test suite"
	@echo "make test-pythons  the fast tests on Python 3.12 and 3.13 (pyenv), each in its own venv"
	@echo "make bench  run the benchmarks under tests/bench and print their figures"
	@echo "make docs   build the documentation site into site/ (strict: broken links fail)"

setup:
	@scripts/bootstrap.sh
	@scripts/temporal-cli.sh >/dev/null
	@scripts/temporal-server.sh >/dev/null
	@scripts/temporal-ui.sh >/dev/null || echo "note: 'stagecoach up' serves the dev server's own Web UI instead (docs/codec.md)" >&2

# The first example project, examples/lifecycle (make run EXAMPLE=b2b_funnel for the other),
# named from the package that ships it. Run from here, not from the example's folder, so
# the data directory and .env stay where the other commands look for them.
EXAMPLE ?= lifecycle

run: setup
	@TEMPORAL_CLI_PATH="$$(scripts/temporal-cli.sh)" \
	 STAGECOACH_DEFINITIONS="stagecoach.examples.$(EXAMPLE).$(EXAMPLE).definitions:defs" \
	 $(VENV)/bin/stagecoach up

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite runs on TEST_WORKERS pytest-xdist workers (most of its time is tests waiting on
# timers, peers and killed processes, not CPU); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4

test: setup lint
	@TEMPORAL_CLI_PATH="$$(scripts/temporal-cli.sh)" \
	 STAGECOACH_TEST_SERVER_PATH="$$(scripts/test-server.sh)" \
	 $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The fast tests (no Temporal server, peers killed, browser, PostgreSQL or benchmark) on each
# further supported Python, each in a venv of its dependencies cached under
# ~/.cache/stagecoach/venvs; `make test` runs everything on 3.11.
# PYTHON_VERSIONS="3.13" picks the versions; a version pyenv does not have is an error.
test-pythons:
	@scripts/test-pythons.sh $(PYTEST_ARGS)

bench: setup
	@TEMPORAL_CLI_PATH="$$(scripts/temporal-cli.sh)" \
	 STAGECOACH_TEST_SERVER_PATH="$$(scripts/test-server.sh)" \
	 $(VENV)/bin/pytest tests/bench --run-bench -s $(PYTEST_ARGS)

# The site's endpoint reference is generated from the API at build time (scripts/docs_site.py).
# Only the venv is needed: no Temporal binary.
docs:
	@scripts/bootstrap.sh
	@NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .stagecoach .mypy_cache .ruff_cache .pytest_cache site
