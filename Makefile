# Hakobune — everything starts here.  `make drill` runs the whole pipeline on embedded defaults;
# `make test` installs what the tests need and runs them.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup drill test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py hakobune/_jisdecode.c agent/ssmix2/_fastmap.c agent/ssmix2/_fastwalk.c restore/fhir/_fastlabs.c scripts/system-deps
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11)"; exit 1; }
	scripts/system-deps
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

drill: setup
	$(BIN)/hakobune drill

test: setup
	$(BIN)/pytest -q -n 2 --dist loadgroup

test-fast: setup
	$(BIN)/pytest -q -m "not integration"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	HAKOBUNE_BENCH_DEPS=1 scripts/system-deps
	$(BIN)/python bench/parse_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
