# Two commands do all the set-up on a fresh machine:
#   make demo   install, then train briefly on the bundled Tiny Shakespeare and print samples
#   make test   install, then run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench

$(BIN)/textgen: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/textgen
	$(BIN)/textgen train --out runs/demo --overwrite --max-minutes 2 --eval-every 200 --sample-length 300

test: $(BIN)/textgen
	$(BIN)/python -m pytest

lint: $(BIN)/textgen
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(BIN)/textgen
	$(BIN)/python benchmarks/bench.py
