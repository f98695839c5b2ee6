"""Predicting a folder of raw images: with `kedro run --pipelines inference`, and with
the MLflow model the training run logged (in this process, through the
`mlflow models predict` CLI and over HTTP from `mlflow models serve`)."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image

from tests.e2e.conftest import kedro, latest_run, latest_version
from tests.servers import free_port, serving

pytestmark = pytest.mark.e2e

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture(scope="module")
def test_table(finished_run, project) -> pd.DataFrame:
    """The per-image predictions of the test split, by the model inference will use."""
    return pd.read_csv(latest_version(project / "data/07_model_output/test_predictions.csv"))


@pytest.fixture(scope="module")
def image_folder(test_table, tmp_path_factory) -> Path:
    """Five test-split PNGs (one in a subfolder), a JPEG, a broken PNG and a text file."""
    folder = tmp_path_factory.mktemp("to_predict")
    (folder / "nested").mkdir()
    for index, source in enumerate(test_table["path"].head(5)):
        target = folder / ("nested" if index == 0 else "") / f"test_{index}.png"
        shutil.copy(source, target)
    Image.open(test_table["path"].iloc[5]).convert("RGB").save(folder / "photo.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def pipeline_output(project, image_folder):
    result = kedro(project, "run", "--pipelines", "inference",
                   "--params", f"inference_images_path={image_folder}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    predictions = pd.read_csv(
        latest_version(project / "data/07_model_output/inference_predictions.csv")
    )
    failures = pd.read_csv(latest_version(project / "data/08_reporting/inference_failures.csv"))
    return output, predictions, failures


def test_pipeline_predicts_good_files_and_reports_the_broken_one(pipeline_output):
    output, predictions, failures = pipeline_output
    assert sorted(predictions["relative_path"]) == [
        "nested/test_0.png", "photo.jpg", "test_1.png", "test_2.png", "test_3.png", "test_4.png",
    ]
    assert {"label", "probability", "top3_label", "top3_probability"} <= set(predictions.columns)
    assert failures["relative_path"].tolist() == ["broken.png"]
    assert failures["error"].iloc[0] == "not an image file PIL can decode"
    assert "broken.png" in output
    assert "Skipped files: 1 not an image" in output


def test_pipeline_labels_equal_those_of_the_test_predictions(pipeline_output, test_table,
                                                             image_folder):
    _, predictions, _ = pipeline_output
    by_path = predictions.set_index("relative_path")["label"].astype(str)
    for index in range(5):
        relative = f"{'nested/' if index == 0 else ''}test_{index}.png"
        assert by_path[relative] == str(test_table["predicted"].iloc[index]), relative


def test_mlflow_model_gives_the_pipeline_labels_for_the_same_paths(project, pipeline_output):
    _, predictions, _ = pipeline_output
    _, run = latest_run(project)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    result = model.predict(pd.DataFrame({"path": predictions["path"]}))
    assert result["path"].tolist() == predictions["path"].tolist()
    assert result["label"].astype(str).tolist() == predictions["label"].astype(str).tolist()
    assert result["probability"].tolist() == pytest.approx(predictions["probability"].tolist(),
                                                           abs=1e-6)


def test_mlflow_models_predict_cli_on_raw_image_paths(project, pipeline_output, tmp_path):
    """`--env-manager local` uses this environment: the others create one, which
    needs the network."""
    _, predictions, failures = pipeline_output
    _, run = latest_run(project)
    paths = tmp_path / "paths.csv"
    pd.DataFrame({"path": [*predictions["path"], *failures["path"]]}).to_csv(paths, index=False)
    output = tmp_path / "predictions.json"
    result = subprocess.run(
        [MLFLOW, "models", "predict", "-m", f"runs:/{run.info.run_id}/model", "-i", str(paths),
         "-t", "csv", "-o", str(output), "--env-manager", "local"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(output.read_text())["predictions"]
    assert [str(row["label"]) for row in rows[:-1]] == predictions["label"].astype(str).tolist()
    assert rows[-1]["error"] == "not an image file PIL can decode"


def test_served_champion_labels_a_base64_png_posted_to_invocations(project, test_table,
                                                                    tmp_path):
    """What a REST client does: the file's bytes, base64-encoded, in a JSON body."""
    command = [MLFLOW, "models", "serve", "-m", "models:/kedro_torch@champion", "--env-manager",
               "local", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    with serving(command, project, tmp_path / "serve.log", "/ping", free_port(), store) as url:
        images = [base64.b64encode(Path(path).read_bytes()).decode("ascii")
                  for path in test_table["path"].head(3)]
        body = {"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}}
        request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            rows = json.loads(response.read())["predictions"]
    champion = mlflow.pyfunc.load_model("models:/kedro_torch@champion")
    expected = champion.predict(pd.DataFrame({"path": test_table["path"].head(3)}))
    assert [str(row["label"]) for row in rows] == expected["label"].astype(str).tolist()
    assert [row["probability"] for row in rows] == pytest.approx(
        expected["probability"].tolist(), abs=1e-6)
    assert all(row["path"] is None and row["error"] is None for row in rows)


def test_inference_runs_while_the_tracking_server_is_down(project, image_folder):
    """The inference pipeline tracks nothing, so an environment whose mlflow.yml names a
    server that does not answer neither refuses it nor keeps it waiting on MLflow's
    retries."""
    env = project / "conf" / "server_down"
    env.mkdir(exist_ok=True)
    (env / "mlflow.yml").write_text(
        f"server:\n  mlflow_tracking_uri: http://127.0.0.1:{free_port()}\n")
    started = time.monotonic()
    result = kedro(project, "run", "--pipelines", "inference", "--env", "server_down",
                   "--params", f"inference_images_path={image_folder}", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 60
