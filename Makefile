# Quick start (README): `make demo` runs the main job, `make test` runs the test suite. Both create or reuse
# the virtual environment .venv with the pinned versions of requirements/dev.txt and build metaedge into it
# (CUDA kernels too when nvcc is found; METAEDGE_CUDA=0 for a CPU-only build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.metaedge-deps-$(shell cat requirements/*.txt | sha256sum | cut -c1-12)
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py
BUILT := metaedge/.built
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test setup build bench clean help
help:
	@echo "make demo   - set up .venv, build, and run the main job (metaedge demo)"
	@echo "make test   - set up .venv, build, and run the tests"
	@echo "make bench  - run the benchmark suites that apply to this machine"
	@echo "make clean  - remove build products (keeps .venv)"

$(STAMP): requirements/dev.txt requirements/runtime.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	rm -f $(VENV)/.metaedge-deps-*
	touch $@

$(BUILT): $(STAMP) $(NATIVE_SOURCES) pyproject.toml
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

setup: $(BUILT)
build: $(BUILT)

demo: $(BUILT)
	$(VENV)/bin/metaedge demo $(DEMO_ARGS)

test: $(BUILT)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(BUILT)
	$(VENV)/bin/metaedge bench

clean:
	rm -rf build dist *.egg-info metaedge/_C*.so metaedge/.built metaedge/_build_config.json
