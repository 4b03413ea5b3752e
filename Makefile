# ketamine-outcomes — two commands on a fresh machine: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export GX_ANALYTICS_ENABLED := false

.PHONY: run test soak dev lint bench sample clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: install, then run the whole pipeline headless on the bundled sample exports
run: $(STAMP)
	$(BIN)/python -m pipelines.cli run

## test: install, then run the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

## soak: the long reliability variants (marked soak, excluded from `make test`)
soak: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m soak tests/test_reliability_*.py

## dev: Dagster UI (webserver + daemon) on http://localhost:3000
dev: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp pipelines/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf data .pytest_cache
