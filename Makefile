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

.PHONY: install run test test-all clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

run: install
	$(PY) -m nemo_gift.doctor

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
