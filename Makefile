# The two commands a newcomer needs: `make run` and `make test`.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# Material for MkDocs otherwise prints a banner about its successor at every build.
export NO_MKDOCS_2_WARNING := 1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast viz ui docs docs-serve screenshots benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/kedro run --pipelines training

test: install
	$(BIN)/ruff check src tests benchmarks data/01_raw/write_digits.py data/01_raw/write_penguins.py \
		data/01_raw/write_shapes_segmentation.py data/01_raw/write_shapes_detection.py
	$(BIN)/python -m pytest

# Everything but the whole-pipeline runs (marker e2e): the loop while editing.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e"

viz: install
	$(BIN)/kedro viz run

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# The documentation site: built into site/ (any warning fails), or served at
# http://127.0.0.1:8000 while you edit docs/.
docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve --strict

# The screenshots in docs/assets/screenshots, taken afresh by the browser tests.
screenshots: install
	SCREENSHOTS_DIR=docs/assets/screenshots $(BIN)/python -m pytest -m e2e tests/e2e/test_views_in_browser.py

benchmark: install
	$(BIN)/python benchmarks/parity.py
	$(BIN)/python benchmarks/process_cost.py
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/tabular_baseline.py

clean:
	rm -rf $(VENV) mlruns mlflow.db .viz build site
