# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
MNIST_DIR ?= $(abspath ../shared/mnist)
export MNIST_DIR

.PHONY: venv demo test bench clean test-tools test-packages bench-packages

# uv installs the venv (from PyPI, into the venv first): it fetches and unpacks in parallel, 52 s
# against pip's 2:29 here with empty caches, and resolves the extras to what a user's
# `pip install 'pyserving[s3]'` gets (pip's resolver, given moto's boto3, backtracked to s3fs 0.4).
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, an uncompiled venv parses
# TensorFlow's sources at every start (its import: 3.8 s -> 8 s).
UV_INSTALL := $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(UV_INSTALL) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/pyserving mnist demo --data-dir "$(MNIST_DIR)"

# System packages, installed with apt-get only when missing: the status page's test runs Chromium,
# the README test runs curl, the gRPC flood test h2load (nghttp2-client);
# the benchmarks drive load with h2load (nghttp2-client) and wrk. The Azure tests run Azurite,
# installed with npm into .tools/npm when missing (3.35.0: the last release that runs on Node 20).
# KServe's Python clients run from a venv of their own (.tools/kserve-venv): its protobuf pin
# can't share the server's venv. scikit-learn (the iris example's) is a folder on that test server's
# PYTHONPATH (.tools/sklearn), not in the venv: installed there, every TensorFlow import loads it.
# YDF (the decision-forest example's) is one too (.tools/ydf), as a model's own library.
# test-tools need no venv: `make test` installs them while the venv installs.
test-tools:
	tools/ensure-debian-packages.sh chromium fonts-dejavu-core:- npm curl nghttp2-client:h2load
	tools/ensure-npm-tools.sh azurite@3.35.0:azurite-blob
	tools/ensure-python-client.sh $(PYTHON) kserve kserve==0.21.0

# An example's pinned libraries: its requirements.txt, what its README tells users to install.
requirements = $(shell sed '/^\#/d' $(1)/requirements.txt)

test-packages: venv test-tools
	tools/ensure-python-client.sh --path $(PY) sklearn $(call requirements,examples/sklearn_iris)
	tools/ensure-python-client.sh --path $(PY) ydf $(call requirements,examples/ydf_forest)

bench-packages:
	tools/ensure-debian-packages.sh nghttp2-client:h2load wrk

# The venv and the test tools side by side (pip's install waits on the disk about as much as on
# the CPU), then the tests in two phases (tools/run-tests.sh): the parallel one over 3 processes,
# then the `serial` tests alone.
test:
	$(MAKE) --no-print-directory -j2 venv test-tools
	$(MAKE) --no-print-directory test-packages
	tools/run-tests.sh $(PY)

bench: venv bench-packages
	$(UV_INSTALL) -e '.[bench]'
	$(PY) benchmarks/compare_mlserver.py

clean:
	rm -rf $(VENV) demo-work test-artifacts
