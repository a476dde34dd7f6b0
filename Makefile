# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned so that a CPU-only machine takes the CPU build on local disk and a GPU
# machine the CUDA build of the same version.
TORCH  ?= torch==2.13.0

.PHONY: demo test test-fast lint bench clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) run.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench run.py

clean-cache:
	rm -rf .cache/reasonft
