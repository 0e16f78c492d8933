# Two set-up commands, each on a fresh machine with only Python 3.11 and pip:
#   make demo  - own venv, install, run configs/default.yaml on images/, write outputs/demo/
#   make test  - own venv with the dev and napari extras, run the whole test suite (GUI tests need Xvfb)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,napari]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/pellet-analysis demo configs/default.yaml

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) outputs/demo .pytest_cache
