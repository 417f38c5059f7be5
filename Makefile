# The verbs people type. Every target creates the virtualenv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/check_java.sh
	@bash scripts/check_java.sh
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(PY) -m cdc_pipeline.demo --workdir demo-data

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check cdc_pipeline tests benchmarks
	$(PY) -m mypy

bench: setup
	$(PY) -m benchmarks.run_benchmarks

clean:
	rm -rf $(VENV) demo-data .pytest_cache
