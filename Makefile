# The two commands a new user runs (see README.md): `make demo` and `make test`.
# Everything they need is installed by the targets below; nothing is assumed pre-installed
# beyond Python 3.11, Java 17, Maven and apt (Debian).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install infra lint test test-unit demo schema contracts bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The Kafka broker's and HAPI FHIR's jars (Maven Central), Debian's PostgreSQL (all started per
# run) and Debian's chromium (the console's browser test).
infra:
	scripts/kafka.sh fetch
	scripts/fhir.sh fetch
	scripts/postgres.sh install
	scripts/browser.sh install

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# pytest exits 5 when it collected no test: make treats that, like any non-zero, as failure.
test: install infra lint
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m unit -q

demo: install
	scripts/kafka.sh fetch
	scripts/demo.sh $(ARGS)

# Benchmarks write bench/results/<bench>.json and regenerate bench/RESULTS.md.
# Each of router, api and flow starts its own Kafka broker and PostgreSQL. The whole target
# fits in 20 minutes on 2 cores (README: Benchmarks); reconciliation's full 1M-member figure
# is a separate run: `.venv/bin/python -m bench.reconcile --members 1000000`, and so is the
# 100,000-event soak: `.venv/bin/python -m bench.soak --events 100000 --name soak_100k`.
bench: install infra
	$(BIN)/python -m bench.adapters
	$(BIN)/python -m bench.seal
	$(BIN)/python -m bench.signing
	$(BIN)/python -m bench.router --events 10000
	$(BIN)/python -m bench.api
	$(BIN)/python -m bench.soak --events 8000
	$(BIN)/python -m bench.flow
	$(BIN)/python -m bench.flow --rate 250 --name flow_250
	$(BIN)/python -m bench.reconcile --members 100000 --peer-engine python

schema: install
	$(BIN)/jokko schema export

# openapi/openapi.json and openapi/asyncapi.yaml (committed; tests fail when they drift).
contracts: install
	$(BIN)/jokko contracts export

clean:
	rm -rf $(VENV) .jokko .mypy_cache .ruff_cache .pytest_cache .hypothesis
