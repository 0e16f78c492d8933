# Set-up commands, each on a fresh machine with only Python 3.11 and pip:
#   make demo  - own venv, install, run configs/default.yaml on images/, write outputs/demo/
#   make test  - own venv with the dev, napari and slides extras, run the whole test suite (GUI tests need Xvfb)
#   make docs  - the demo, then every figure in README.md and docs/ regenerated from it
#                (report screenshot needs Debian's chromium, the napari ones xvfb-run)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo docs test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,napari,slides]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/pellet-analysis demo configs/default.yaml

# figures drawn from a fresh demo (a demo of an older config would sit in outputs/demo), so README.md and
# docs/ cannot show numbers it no longer gives
docs: $(VENV)/.installed-dev
	rm -rf outputs/demo
	$(BIN)/pellet-analysis demo configs/default.yaml
	$(BIN)/python docs/make_figure.py
	$(BIN)/python docs/make_calibration_figure.py
	bash docs/make_report_screenshot.sh
	xvfb-run -a $(BIN)/python docs/make_napari_screenshot.py
	xvfb-run -a $(BIN)/python docs/make_batch_screenshot.py

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) outputs/demo .pytest_cache
