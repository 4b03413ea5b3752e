# ketamine-outcomes — two commands on a fresh machine: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export GX_ANALYTICS_ENABLED := false

CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test soak dev lint bench sample clean dagster-home

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: install, then run the whole pipeline headless on the bundled sample exports
run: $(STAMP) dagster-home
	$(BIN)/python -m pipelines.cli run

## test: install, then run the whole test suite
test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Debian's Chromium for tests/test_ui_browser.py (Playwright drives it; its own browser
# download is never used). A file target: nothing happens when it is already installed.
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

## soak: the long reliability variants (marked soak, excluded from `make test`)
soak: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m soak tests/test_reliability_*.py

## bench: benchmark at SCALE patients (default 100000; `make bench SCALE=1000000`): the pipeline
## against a DuckDB floor and a pandas notebook, table of docs/performance.md (not in `make test`)
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --scale $(or $(SCALE),100000) $(BENCH_ARGS)

## dev: Dagster UI (webserver + daemon) on http://localhost:3000; the sensors and the daily
## schedule start RUNNING: drop export folders into data/landing (or OUTCOMES_LANDING_DIR)
dev: $(STAMP) dagster-home
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The project-local instance (data/dagster_home) follows pipelines/dagster.yaml (copied when
# that is newer); a DAGSTER_HOME of your own keeps its dagster.yaml, with a note if it differs.
dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@if [ ! -f $(DAGSTER_HOME)/dagster.yaml ] || { [ "$(DAGSTER_HOME)" = "$(CURDIR)/data/dagster_home" ] \
	    && [ pipelines/dagster.yaml -nt $(DAGSTER_HOME)/dagster.yaml ]; }; then \
		cp pipelines/dagster.yaml $(DAGSTER_HOME)/dagster.yaml; \
		echo "instance settings: pipelines/dagster.yaml -> $(DAGSTER_HOME)/dagster.yaml"; \
	elif ! cmp -s pipelines/dagster.yaml $(DAGSTER_HOME)/dagster.yaml; then \
		echo "note: $(DAGSTER_HOME)/dagster.yaml differs from pipelines/dagster.yaml"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf data .pytest_cache
