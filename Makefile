# One way to run things. The README names `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCALE ?= small
PG_PORT ?= 54329
EXECUTOR ?= local
export PYTHONPATH := $(CURDIR)

.PHONY: setup test test-fast demo stop env bench constraints

# The venv is rebuilt when the pins change.
$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.9.30
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt -c constraints.txt
	touch $@

setup: $(VENV)/.installed

test: setup browser
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

demo: setup
	$(PY) -m local_runtime.demo run --scale $(SCALE) --port $(PG_PORT) --executor $(EXECUTOR)

stop: setup
	$(PY) -m local_runtime.demo stop --port $(PG_PORT)

env: setup
	$(PY) -m local_runtime.demo env --port $(PG_PORT)

bench: setup
	$(PY) -m local_runtime.bench --scale $(SCALE)

# Regenerate the full pin list from a real resolve of requirements.txt.
constraints:
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install -q uv==0.9.30
	.constraints-venv/bin/uv pip install -q --python .constraints-venv/bin/python -r requirements.txt
	.constraints-venv/bin/uv pip freeze --python .constraints-venv/bin/python | grep -v '^uv==' > constraints.txt
	rm -rf .constraints-venv

# The console's browser test drives Debian's chromium: installed here when missing (root with apt-get),
# else the test skips and says why.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	      echo "chromium could not be installed (apt-get failed): the browser test will skip"; \
	  else echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser test will skip"; fi; }
