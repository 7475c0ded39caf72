# labtel: `make run` starts the collector and query API; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run demo test lint typecheck format pytest bench bench-ingest bench-query bench-soak dashboards clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP) ## create the virtual environment and install labtel with server and dev extras

run: $(STAMP) ## run labtel: OTLP gRPC :4317, HTTP :4318, query API :8000, data in ./labtel-data
	$(BIN)/labtel serve

demo: $(STAMP) ## simulated labs: a day of history at once, then live (starts labtel serve if needed)
	$(BIN)/labtel demo --backfill 1d --live

test: $(STAMP) lint typecheck pytest ## everything CI runs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# mypy checks the installed names (labtel.sdk, ...) through a tree of symlinks to the folders.
typecheck: $(STAMP)
	@rm -rf .typecheck && mkdir -p .typecheck/labtel
	@for d in sdk collector query_api cli demo; do ln -s ../../$$d .typecheck/labtel/$$d; done
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p labtel

pytest: $(STAMP)
	$(BIN)/python -m pytest -n $${PYTEST_WORKERS:-2}

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info

bench: $(STAMP) bench-ingest bench-sdk bench-query ## every benchmark (figures for the issue notes)

bench-ingest: $(STAMP) ## ingest throughput, latency and loss check (bench/ingest.py)
	$(BIN)/python bench/ingest.py --clients 32 --duration 30

bench-query: $(STAMP) ## the query API over 10M events: filters, search, selector, stats, export, utilization (bench/query.py)
	$(BIN)/python bench/query.py --rows 10000000 --repeat 20

bench-soak: $(STAMP) ## 10 minutes of mixed load, two kill -9 restarts and a 30 s storage fault; loss, RSS and fds (bench/soak.py; not in `make bench`)
	$(BIN)/python bench/soak.py --duration 600

dashboards: $(STAMP) ## regenerate the Grafana dashboards and provisioning (dashboards/generate.py)
	$(BIN)/python dashboards/generate.py

bench-sdk: $(STAMP) ## cost per logging call and CPU per delivered event, labtel.sdk vs stock OTel (bench/sdk.py)
	$(BIN)/python bench/sdk.py --events 20000 --repeat 3
