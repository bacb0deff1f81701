# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Two stamps: the server needs only the package; the check also needs the test extras.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## Install the package and start the server on embedded SQLite (./headwater-data).
run: $(VENV)/.installed-run
	$(BIN)/headwater serve

## Install with the test extras and run the whole check: ruff, mypy, pytest.
test: $(VENV)/.installed
	$(BIN)/ruff check headwater tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 4

## Run the benchmarks: ingest (wrk, PostgreSQL and redis-server installed with apt when missing),
## trigger rules, facts and challenges, and the backends side by side.
bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq postgresql)
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/gamification.py
	$(BIN)/python bench/backends.py
	$(BIN)/python bench/fairness.py

clean:
	rm -rf $(VENV) build *.egg-info
