# Two user-facing targets: `make demo` (the main job) and `make test` (the test suite).
# Both create or reuse the virtual environment in .venv and install the project into it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slicer-pins lint bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so that pip takes the CPU build and never pulls CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m cac.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q Testing

# The cine I/O and synchronization tests once more with what Slicer 5.10.0 bundles (Python 3.12,
# numpy 2.0.2, scipy 1.13.1, pydicom 2.4.4): inside Slicer the Lib must work with those.
# Slicer 5.10's Python is 3.12: the first python3.12 that runs (a pyenv shim may not), else $(PYTHON).
PINS_PYTHON ?= $(or $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12); do \
	$$p -c "" 2>/dev/null && { echo $$p; break; }; done),$(PYTHON))
PINS_VENV := .venv-slicer-pins
PINS_STAMP := $(PINS_VENV)/.installed
SLICER_PINS := numpy==2.0.2 scipy==1.13.1 pydicom==2.4.4

$(PINS_STAMP): pyproject.toml
	@test -x $(PINS_VENV)/bin/python || $(PINS_PYTHON) -m venv $(PINS_VENV)
	$(PINS_VENV)/bin/python -m pip install --quiet --upgrade pip
	# The pins and the Lib's other dependencies (no torch, no slicer-core: these tests need neither).
	$(PINS_VENV)/bin/python -m pip install --quiet $(SLICER_PINS) scikit-image SimpleITK matplotlib \
		pylibjpeg pylibjpeg-libjpeg pylibjpeg-rle pynrrd slicerio pytest
	$(PINS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	@touch $(PINS_STAMP)

test-slicer-pins: $(PINS_STAMP)
	$(PINS_VENV)/bin/python -c "import numpy, scipy, pydicom, sys; print('Python', sys.version.split()[0], \
		'numpy', numpy.__version__, 'scipy', scipy.__version__, 'pydicom', pydicom.__version__)"
	$(PINS_VENV)/bin/python -m pytest -q -p no:cacheprovider Testing/test_cine_io.py Testing/test_sync.py

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
