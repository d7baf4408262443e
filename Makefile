# The whole set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

# No pip cache: a CUDA build of torch is several GB, and a CI disk may not hold it twice.
$(BIN)/slade: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -e ".[dev]"
	touch $@

demo: $(BIN)/slade
	$(BIN)/slade demo --out runs/demo

test: $(BIN)/slade
	$(BIN)/python -m pytest -q

lint: $(BIN)/slade
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
