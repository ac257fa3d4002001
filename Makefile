# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
MNIST_DIR ?= $(abspath ../shared/mnist)
export MNIST_DIR

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/pyserving mnist demo --data-dir "$(MNIST_DIR)"

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/compare_mlserver.py

clean:
	rm -rf $(VENV) demo-work
