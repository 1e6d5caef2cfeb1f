# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install the package with its extras, run `mdn demo`
#   make test   install dev tools, lint, type-check, run the fast test suite, build the docs
#               (examples with small settings) and the benchmark smoke runs
#   make docs   build the site into docs/_build/html (warnings are errors); open
#               docs/_build/html/index.html
# torch is pinned in constraints.txt to 2.13.0: pip takes the CPU wheel on local disk;
# an open range would pull a multi-GB CUDA build. Use pip, not uv/poetry (they miss that wheel).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CONSTRAINTS := constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck pytest test-slow bench-smoke bench install dev format clean docs docs-quick

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamp files so that a second `make` does not reinstall anything.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install -q -c $(CONSTRAINTS) "torch==2.13.0"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[all]"
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev,bench]"
	touch $@

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[docs]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: install
	$(VENV)/bin/mdn demo

lint: dev
	$(VENV)/bin/ruff check src tests benchmarks examples docs
	$(VENV)/bin/ruff format --check src tests benchmarks examples docs

typecheck: dev
	$(VENV)/bin/mypy

pytest: dev
	$(PY) -m pytest -m "not slow" -n 2 -q --doctest-modules tests src/mixture_density

bench-smoke: dev
	$(PY) benchmarks/speed.py --quick
	$(PY) benchmarks/uci.py --quick
	$(PY) benchmarks/forecast.py --quick
	$(PY) benchmarks/onnx_latency.py --quick
	$(PY) benchmarks/targets.py --quick
	$(PY) benchmarks/sizes.py --quick

# The site, with every warning an error (-W; -n: every cross-reference must resolve). The
# gallery runs every script of examples/; MIXTURE_DENSITY_QUICK=1 (docs-quick, make test)
# gives them small settings, a few seconds each.
docs: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -b html -W --keep-going -n -q docs docs/_build/html
	@echo "built docs/_build/html/index.html"

docs-quick:
	MIXTURE_DENSITY_QUICK=1 $(MAKE) docs

test: lint typecheck pytest docs-quick bench-smoke

test-slow: dev
	$(PY) -m pytest -m slow -q

format: dev
	$(VENV)/bin/ruff format src tests benchmarks examples docs
	$(VENV)/bin/ruff check --fix src tests benchmarks examples docs

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	rm -rf docs/_build docs/auto_examples docs/api/generated
