"""The plain training API without Kedro: the docs' script runs as printed, and the
API called with a run's own parameters trains what that run trained."""

import re
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml

from kedro_torch.pytorch import api, data
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.inference import ModelSpec
from tests.conftest import PROJECT_ROOT
from tests.docs.blocks import block
from tests.e2e.conftest import latest_version

pytestmark = pytest.mark.e2e


def test_the_docs_script_trains_and_evaluates_without_kedro():
    leaked = ("\nimport sys\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'kedro', 'mlflow'}))")
    result = subprocess.run([sys.executable, "-c", block("python-api") + leaked], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"test accuracy (\S+)", result.stdout).group(1))
    assert accuracy > 0.9  # 3 epochs on the bundled digits; chance is 0.1
    assert result.stdout.strip().endswith("[]")  # neither Kedro nor MLflow was imported


def test_the_api_with_a_runs_parameters_trains_what_the_run_trained(
    finished_run, project, small_digits
):
    _, run = finished_run
    parameters = yaml.safe_load(
        mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/parameters.yml")
    )
    data_config = parse(DataConfig, parameters["data"], "data")
    model_config = parse(ModelConfig, parameters["model"], "model")
    training = parse(TrainingConfig, parameters["training"], "training")

    manifest = data.manifest_from_listing(data.list_folder(str(small_digits)))
    prepared = api.prepare_data(manifest, data_config)
    loaders = api.build_loaders(prepared.model_input, prepared.preprocessing, data_config,
                                training.seed, images=prepared.images)
    model = api.build_model(model_config, data_config, prepared.label_map,
                            prepared.preprocessing, training.seed)
    result = api.fit(model, loaders, training, num_classes=len(prepared.label_map),
                     model_config=model_config)
    spec = ModelSpec.from_configs(model_config, data_config, prepared.preprocessing)
    evaluation = api.evaluate(result.state_dict, spec, prepared.model_input, prepared.label_map,
                              parse(EvaluationConfig, parameters["evaluation"], "evaluation"),
                              data_config=data_config)

    history = pd.read_csv(latest_version(project / "data/08_reporting/training_history.csv"))
    pd.testing.assert_frame_equal(pd.DataFrame(result.history), history, check_exact=False,
                                  rtol=1e-12, atol=0)
    assert evaluation.metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert evaluation.metrics["test_ece"] == pytest.approx(run.data.metrics["test_ece"],
                                                           abs=1e-9)
