# make demo: set up .venv (if needed) and run the main job on the embedded default.
# make test: set up .venv (if needed) and run the test suite offline (both tiers: what CI runs).
# make test-fast: the unit tier only (pytest -m "not integration"): no training, notebooks, browser or entry-point runs.
# make lint: ruff (lint, then format check) and the import layers check (tests/test_layers.py).
# make lock: re-resolve requirements.txt to the newest versions its ranges admit, pin them in constraints.txt, test.
# .venv installs the pinned stack: requirements.txt's ranges, constrained to constraints.txt's exact versions (with uv,
# itself pinned there; pip if uv fails).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK_VENV := .venv-lock

.PHONY: demo test test-fast lint setup lock clean-artifacts

# uv installs the same pins as pip in a third of the time (parallel downloads); pip where uv cannot be had or used.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c constraints.txt
	{ $(PY) -m pip install --quiet uv -c constraints.txt && \
	  $(PY) -m uv pip install --quiet --python $(PY) -r requirements.txt -c constraints.txt; } || \
	  $(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) scripts/demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not integration"

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m pytest -q tests/test_layers.py

lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install --quiet -r requirements.txt uv
	{ sed -n '1,2p' constraints.txt; \
	  echo "# Resolved $$(date -u +%F) on Python $$($(LOCK_VENV)/bin/python -c 'import platform as p; print(p.python_version() + ", " + p.system() + " " + p.machine())')."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)
	$(MAKE) test

clean-artifacts:
	rm -rf artifacts
