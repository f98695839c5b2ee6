"""`kedro run --pipelines export`: TorchScript and torch.export files that match the
eager model on the test split at batch sizes 1 and 7."""

import json

import pandas as pd
import pytest
import torch

from kedro_torch.pytorch.export import max_abs_difference
from kedro_torch.pytorch.inference import ModelSpec
from tests.e2e.conftest import kedro, latest_version

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def exported(finished_run, project):
    result = kedro(project, "run", "--pipelines", "export")
    assert result.returncode == 0, result.stdout + result.stderr
    return project / "data"


def test_export_report_is_within_tolerance(exported):
    report = json.loads(latest_version(exported / "08_reporting/export_report.json").read_text())
    assert report["within_tolerance"]
    assert report["tolerance"] == 1e-5
    assert set(report["max_abs_difference"]) == {"torchscript", "exported_program"}
    for per_size in report["max_abs_difference"].values():
        assert set(per_size) == {"batch_size_1", "batch_size_7"}


@pytest.mark.parametrize("batch_size", [1, 7])
def test_exported_files_equal_the_eager_model_on_the_test_split(exported, batch_size):
    models = exported / "06_models"
    spec = ModelSpec.from_dict(json.loads(latest_version(models / "model_spec.json").read_text()))
    state_dict = torch.load(latest_version(models / "model_state_dict.pt"), weights_only=True)
    label_map = json.loads(latest_version(exported / "05_model_input/label_map.json").read_text())
    eager = spec.build_model(state_dict, len(label_map))
    model_input = pd.read_parquet(latest_version(exported / "05_model_input/model_input.parquet"))
    images = spec.load_batch(model_input.loc[model_input["split"] == "test", "path"].tolist())
    # Files we produced ourselves: torch.export.load unpickles, so only load trusted files.
    torchscript = torch.jit.load(latest_version(models / "model_torchscript.pt"))
    program = torch.export.load(latest_version(models / "model_exported.pt2")).module()
    for candidate in (torchscript, program):
        assert max_abs_difference(eager, candidate, images, batch_size) <= 1e-5
