# Two commands do all the set-up on a fresh machine:
#   make demo   # builds .venv, loads the simulated deployment into monitor.db, serves API + dashboard
#   make test   # builds .venv, runs ruff, mypy and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e './client[numpy,dicom]' -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	DO_NOT_TRACK=1 $(BIN)/monitor demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	DO_NOT_TRACK=1 $(BIN)/pytest

clean:
	rm -rf $(VENV) monitor.db monitor.db-wal monitor.db-shm .monitor .pytest_cache
