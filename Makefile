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

.PHONY: demo test setup build bench dist wheels stubs typecheck clean help
help:
	@echo "make demo      - set up .venv, build, and run the main job (metaedge demo)"
	@echo "make test      - set up .venv, build, and run the tests (includes the packaging and mypy checks)"
	@echo "make bench     - run the benchmark suites that apply to this machine"
	@echo "make dist      - sdist + a CPU-only wheel of this machine in dist/ (python -m build)"
	@echo "make wheels    - manylinux CPU wheels, x86-64 + aarch64, in wheelhouse/ (cibuildwheel; needs docker)"
	@echo "make stubs     - regenerate metaedge/_C.pyi from a CUDA build (after changing csrc/bindings.cpp)"
	@echo "make typecheck - mypy on the public API (pyproject.toml [tool.mypy])"
	@echo "make clean     - remove build products (keeps .venv)"

$(STAMP): requirements/dev.txt requirements/runtime.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	rm -f $(VENV)/.metaedge-deps-*
	touch $@

# Incremental: setup.py recompiles only the sources whose file, headers or flags changed (objects are kept in
# build/editable-*), so this rule costs seconds after a one-file edit.
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

dist: $(STAMP)
	METAEDGE_CUDA=$${METAEDGE_CUDA:-0} $(PY) -m build --no-isolation --outdir dist .

wheels: $(STAMP)
	$(VENV)/bin/cibuildwheel --platform linux --output-dir wheelhouse .

stubs: $(STAMP)
	METAEDGE_CUDA=1 METAEDGE_CUDA_ARCHS=$${METAEDGE_CUDA_ARCHS:-90} $(PY) setup.py build_ext --inplace -q
	$(PY) tools/gen_native_stubs.py
	rm -f $(BUILT)  # the in-place build replaced the module that `make build` made

typecheck: $(BUILT)
	$(PY) -m mypy

clean:
	rm -rf build dist wheelhouse *.egg-info metaedge/_C*.so metaedge/.built metaedge/_build_config.json
