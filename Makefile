# The two commands a newcomer needs: `make run` and `make test`.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast viz ui benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/kedro run --pipelines training

test: install
	$(BIN)/ruff check src tests benchmarks data/01_raw/write_digits.py
	$(BIN)/python -m pytest

# Everything but the whole-pipeline runs (marker e2e): the loop while editing.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e"

viz: install
	$(BIN)/kedro viz run

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

benchmark: install
	$(BIN)/python benchmarks/parity.py
	$(BIN)/python benchmarks/process_cost.py
	$(BIN)/python benchmarks/data_throughput.py

clean:
	rm -rf $(VENV) mlruns mlflow.db .viz build
