# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest workers (pytest-xdist); each builds the session fixtures once
TEST_WORKERS ?= 2
# torch is pinned to the version whose CPU build pip finds on this project's machines (and CI's)
# before any index; a bare `torch` or a wider range would pull PyPI's CUDA build (several GB).
# Elsewhere, pass PyTorch's CPU wheel index: `make TORCH_INDEX=<that index URL> setup`.
TORCH := torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test lint typecheck format bench clean

$(BIN)/autoimmuneai: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/autoimmuneai

demo: setup
	$(BIN)/autoimmuneai demo --out demo_out

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the package as `autoimmuneai` through a link (config in pyproject.toml)
typecheck: setup
	mkdir -p $(VENV)/mypy
	ln -sfn "$(CURDIR)/AutoimmuneAI/Logic" $(VENV)/mypy/autoimmuneai
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python Testing/Benchmarks/run_all.py --out bench_out

clean:
	rm -rf $(VENV) demo_out bench_out
