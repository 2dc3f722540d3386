# Entry points: `make demo`, `make test`, `make bench`, `make lint`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned to the CPU build for the dev environment; the package itself accepts torch>=2.1.
TORCH_PIN ?= torch==2.13.0

.PHONY: env demo test test-fast bench lint clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(STAMP)

demo: env
	$(BIN)/python examples/demo.py --out demo-out

test: env
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: env
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

bench: env
	$(BIN)/python bench/run_all.py

lint: env
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
