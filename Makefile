# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
export PRUNELAB_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
export OMP_NUM_THREADS ?= 2

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# the post-training leaderboard's first rank: uniform L1 + distillation (tied with CHEX + kd over
# two seeds, and cheaper; bench/RESULTS.md)
DEMO_DISTILL := train.distill.teacher=dense train.distill.weight=0.9 train.distill.temperature=4

demo: $(STAMP)
	$(BIN)/prunelab prune $(DEMO_DISTILL)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: $(STAMP) lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/speedup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
