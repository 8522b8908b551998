# Two entry points, each sets up the virtualenv on first use:
#   make quickstart   pretrain a tiny OpenVision 2 on the built-in scenes and report
#   make test         run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= distributed,data,bench,dev,eval

.PHONY: quickstart test lint setup

# The quickstart needs only the core dependencies, so it does not wait for the evaluation
# frameworks; the full set (every extra + the original LLaVA code) is what the tests need.
$(VENV)/.installed-core: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.installed-core
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps llava-torch==1.2.2.post1  # the original LLaVA code; its pinned deps would downgrade transformers
	touch $@

setup: $(VENV)/.installed

quickstart: $(VENV)/.installed-core
	$(VENV)/bin/ov2 quickstart

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check ov2_plugin tests bench
