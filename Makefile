# Quick start (see README.md):
#   make run    install into .venv, then run the main job
#   make test   install into .venv, then run the tests
#
# torch goes in first, from TORCH_SPEC, so that nothing else pulls a CUDA build onto a CPU
# machine. On a machine without the local CPU wheel, set e.g.
#   TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
ALIGNER_VENV ?= .venv-aligner

.PHONY: install run test test-all test-aligner install-py312 test-py312 clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test,slurm]"
	touch $@

run: install
	$(PY) launcher/run.py conf=gift_tiny

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS)

# NeMo-Aligner 0.7.0 + nemo-toolkit 2.4.1 in their own venv (docs/nemo-aligner.md): 6-17 min, 2.6 GB.
$(ALIGNER_VENV)/.installed: scripts/install_aligner_env.sh containers/aligner-stack.txt setup.py
	rm -rf $(ALIGNER_VENV)
	PYTHON=$(PYTHON) bash scripts/install_aligner_env.sh $(ALIGNER_VENV)
	touch $@

test-aligner: $(ALIGNER_VENV)/.installed
	$(ALIGNER_VENV)/bin/python -m pytest -q tests/unit/integrations $(PYTEST_ARGS)

# The GPU images' stack: Python 3.12 and megatron-core 0.19.x, in its own venv. torch 2.13.0
# from the registry is a CUDA build there (it runs on CPU; about 4.8 GB with triton, which
# megatron-core 0.19 imports). The pins are constraints.txt's, with megatron-core swapped.
PY312 ?= env PYENV_VERSION=3.12.1 python3.12
PY312_VENV ?= .venv-py312
PY312_MCORE ?= megatron-core==0.19.2

install-py312: $(PY312_VENV)/.installed

$(PY312_VENV)/.installed: setup.py constraints.txt
	$(PY312) -m venv $(PY312_VENV)
	$(PY312_VENV)/bin/python -m pip install -q --upgrade pip
	grep -v '^megatron-core==' constraints.txt > $(PY312_VENV)/constraints.txt
	echo "$(PY312_MCORE)" >> $(PY312_VENV)/constraints.txt
	$(PY312_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" triton
	$(PY312_VENV)/bin/python -m pip install -q -c $(PY312_VENV)/constraints.txt -e ".[test]"
	touch $@

test-py312: install-py312
	$(PY312_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(ALIGNER_VENV) $(PY312_VENV) *.egg-info .pytest_cache
