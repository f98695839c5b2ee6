"""The bundled penguins table: its writer reproduces the committed file, and the conf
envs that read it name columns it has and a champion metric their task reports."""

import runpy

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader

from kedro_torch.pytorch import tasks
from kedro_torch.pytorch.config import DataConfig, parse
from kedro_torch.settings import CONFIG_LOADER_ARGS
from tests.conftest import PROJECT_ROOT

PENGUINS = PROJECT_ROOT / "data" / "01_raw" / "penguins.csv"
COLUMNS = ["species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
           "body_mass_g", "sex", "year"]


def test_the_script_writes_the_committed_file(tmp_path):
    script = runpy.run_path(str(PROJECT_ROOT / "data" / "01_raw" / "write_penguins.py"))
    script["main"](tmp_path / "penguins.csv")
    assert (tmp_path / "penguins.csv").read_bytes() == PENGUINS.read_bytes()


def test_the_table_has_its_columns_and_missing_values_as_empty_cells():
    table = pd.read_csv(PENGUINS, keep_default_na=False, dtype=str)
    assert list(table.columns) == COLUMNS
    assert len(table) == 344
    assert table["species"].value_counts().to_dict() == {
        "Adelie": 152, "Gentoo": 124, "Chinstrap": 68}
    missing = (table == "").sum().to_dict()
    assert missing == {"species": 0, "island": 0, "bill_length_mm": 2, "bill_depth_mm": 2,
                       "flipper_length_mm": 2, "body_mass_g": 2, "sex": 11, "year": 0}
    assert not table["flipper_length_mm"].str.endswith(".0").any()  # whole numbers stay whole


@pytest.mark.parametrize(("env", "task", "target", "champion_metric"), [
    ("penguins", "tabular_classification", "species", "test_accuracy"),
    ("penguins_mass", "tabular_regression", "body_mass_g", "test_r2"),
])
def test_each_env_reads_the_table_and_names_its_columns(env, task, target, champion_metric):
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
    config = parse(DataConfig, loader["parameters"]["data"], "data")
    assert (config.task, config.source, config.table.target) == (task, "table", target)
    assert {config.table.target, *config.table.drop} <= set(COLUMNS)
    catalog = loader["catalog"]
    assert catalog["raw_table"]["filepath"].endswith("data/01_raw/penguins.csv")
    # The registry's champion is judged by the task's headline metric.
    assert catalog["mlflow_model"]["champion_metric"] is None
    assert tasks.get(task).headline[0] == champion_metric
