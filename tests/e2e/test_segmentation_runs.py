"""Semantic segmentation end to end: the commands of the segmentation guide
(docs/guides/segmentation.md) run as typed on the bundled shapes, in a copy of the
project laid out as a fresh clone (conf/, the shapes in data/01_raw and the
environment in .venv); a VOC-format root written here, trained through the torchvision
source; and the pairs the data-quality report sets aside."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kedro_torch.pytorch.segmentation_inference import SegmentationSpec, Segmenter
from tests.conftest import PROJECT_ROOT
from tests.docs.blocks import block
from tests.e2e.conftest import KEDRO, copy_project, kedro, latest_run, latest_version
from tests.e2e.test_distributed_run import runs, torchrun
from tests.e2e.test_docs_commands import VENV, shell, without_virtualenv
from tests.e2e.test_tuning_run import runs as all_runs
from tests.e2e.test_tuning_run import study_of
from tests.faults.conftest import start_mlflow_server, stop_mlflow_server, write_mlflow_yml
from tests.faults.test_signals import newest_run
from tests.faults.test_tracking_outage import SPOOL, the_run, wait_for_epoch
from tests.segmentation_data import write_bad_pairs, write_folder_pair, write_voc_root
from tests.servers import free_port, serving

pytestmark = pytest.mark.e2e

SHAPES = PROJECT_ROOT / "data" / "01_raw" / "shapes_segmentation"
CLASSES = ["background", "circle", "square", "triangle"]
QUICK = "training.epochs=2,training.progress_bar=false"
# A user's own small pair folder, as conf/local would train on it: tiny images, a
# narrow U-Net, so that the runs below test what they run, not the model.
LOCAL_PARAMETERS = """
data:
  task: semantic_segmentation
  source: mask_folder
  segmentation: {classes: [background, a, b]}
  image_size: 32
  channels: 3
  batch_size: 8
  num_workers: 0
model: {name: unet, kwargs: {width: 4, depth: 2}}
training: {monitor: val_miou}
tuning:
  metric: val_miou
  space:
    training.optimizer.kwargs.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
    data.batch_size: null
    model.kwargs.width: {type: int, low: 4, high: 8, step: 4}
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("clone") / "kedro-torch")
    (project / "data" / "01_raw").mkdir()
    shutil.copytree(SHAPES, project / "data" / "01_raw" / "shapes_segmentation")
    (project / ".venv").symlink_to(VENV)
    return project


@pytest.fixture(scope="module")
def shapes_run(clone):
    shell(clone, block("segmentation-train"))
    return latest_run(clone)


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy whose conf/local trains on a small folder of pairs written here."""
    project = copy_project(tmp_path / "project")
    pairs = write_folder_pair(tmp_path / "pairs", count=40, size=32, classes=3)
    (project / "conf" / "local" / "parameters.yml").write_text(LOCAL_PARAMETERS)
    (project / "conf" / "local" / "catalog.yml").write_text(
        f"raw_images:\n  type: kedro_torch.datasets.ImageFolderDataset\n  path: {pairs}\n")
    return project


def newest(project: Path, entry: str) -> Path:
    return latest_version(project / "data" / "shapes_segmentation" / entry)


def test_the_shapes_run_segments_well_and_logs_its_classes_and_overlays(shapes_run):
    client, run = shapes_run
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_miou"] >= 0.80
    assert {"val_miou", "train_pixel_accuracy"} <= run.data.metrics.keys()
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "per_class.json" in artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "per_class.json"))
                       .read_text())
    per_class = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert list(per_class["class"]) == CLASSES
    assert all(0 <= iou <= 1 for iou in per_class["iou"])
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert {"plots/overlays.png", "plots/confusion_matrix.png"} <= set(plots)
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "kedro_torch_shapes_segmentation"


def test_the_served_champion_returns_the_mask_evaluation_predicted(clone, shapes_run,
                                                                   tmp_path):
    documented = re.search(r"--port (\d+)", block("segmentation-serve")).group(1)
    port = free_port()
    command = block("segmentation-serve").replace(f"--port {documented}", f"--port {port}")
    request = block("segmentation-serve-request").replace(f":{documented}", f":{port}")
    predictions = pd.read_csv(newest(clone, "07_model_output/test_predictions.csv"))
    image = Path(predictions["path"][0])
    with serving(["bash", "-c", command], clone, tmp_path / "serve.log", "/ping", port,
                 without_virtualenv()) as url:
        documented_answer = json.loads(shell(clone, request).stdout)["predictions"]
        body = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(image.read_bytes()).decode()]]}}
        sent = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                      {"Content-Type": "application/json"})
        with urllib.request.urlopen(sent, timeout=120) as response:
            (answer,) = json.loads(response.read())["predictions"]
    assert documented_answer[0]["mask"] and not documented_answer[0].get("error")
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
    spec = SegmentationSpec.from_dict(json.loads(
        newest(clone, "06_models/model_spec.json").read_text()))
    weights = torch.load(newest(clone, "06_models/model_state_dict.pt"), weights_only=True)
    (evaluated,) = Segmenter.from_state_dict(weights, spec).predict_files([str(image)])
    np.testing.assert_array_equal(served, evaluated)
    for name in CLASSES:  # the shares evaluation wrote for that image
        assert answer[f"share_{name}"] == pytest.approx(predictions[f"share_{name}"][0])


def test_the_inference_pipeline_writes_a_mask_for_every_image(clone, shapes_run):
    shell(clone, block("segmentation-inference"))
    predictions = pd.read_csv(newest(clone, "07_model_output/inference_predictions.csv"))
    images = sorted((SHAPES / "images").glob("*.png"))
    assert len(predictions) == len(images)
    masks = sorted((clone / "data" / "shapes_segmentation" / "07_model_output"
                    / "inference_masks").rglob("*.png"))
    assert len(masks) == len(images)
    first = np.asarray(Image.open(masks[0]))
    assert first.shape == (64, 64) and set(np.unique(first)) <= {0, 1, 2, 3}


def test_the_exports_agree_with_the_eager_model(clone, shapes_run):
    shell(clone, block("segmentation-export"))
    report = json.loads(newest(clone, "08_reporting/export_report.json").read_text())
    assert report["within_tolerance"]


def test_a_voc_root_trains_through_the_torchvision_source(project, tmp_path):
    root = write_voc_root(tmp_path / "voc", count=30, size=32, classes=3)
    (project / "conf" / "local" / "parameters.yml").write_text(LOCAL_PARAMETERS.replace(
        "  source: mask_folder\n",
        "  source: torchvision\n  torchvision:\n    name: VOCSegmentation\n"
        f"    root: {root}\n    kwargs: {{year: '2012'}}\n    train_split: train\n"
        "    test_split: val\n"))
    result = kedro(project, "run", "--pipelines", "training", "--params", QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = latest_run(project)
    assert run.info.status == "FINISHED"
    assert "test_miou" in run.data.metrics
    report = json.loads(latest_version(project / "data" / "08_reporting"
                                       / "data_quality_report.json").read_text())
    assert report["source"]["dataset"] == "VOCSegmentation"
    assert report["pixels_per_class"]["a"]["pixels"] > 0


def test_a_wrong_sized_mask_and_an_unknown_class_are_named_in_the_report(project, tmp_path):
    broken = write_bad_pairs(tmp_path / "pairs")
    result = kedro(project, "run", "--pipelines", "training", "--params",
                   f"data.max_bad_fraction=0.2,{QUICK}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(latest_version(project / "data" / "08_reporting"
                                       / "data_quality_report.json").read_text())
    reasons = {Path(row["relative_path"]).stem: row["reason"] for row in report["bad_pairs"]}
    assert set(reasons) == set(broken)
    by_kind = {kind: reasons[stem] for stem, kind in broken.items()}
    assert "mask is" in by_kind["wrong_size"] and "px" in by_kind["wrong_size"]
    assert "77" in by_kind["unknown_class"]
    assert "no mask" in by_kind["no_mask"]


# --- the features images have -----------------------------------------------------------


def test_torchrun_trains_a_segmentation_run_in_two_processes(project):
    result = subprocess.run([*torchrun(project), QUICK], cwd=project, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(project)
    assert run.data.tags["world_size"] == "2"
    assert {"val_miou", "test_miou"} <= run.data.metrics.keys()


def test_a_study_maximizes_the_validation_miou(project):
    result = kedro(project, "run", "--pipelines", "tuning", "--params",
                   f"tuning.n_trials=2,{QUICK}")
    assert result.returncode == 0, result.stderr[-3000:]
    _, every = all_runs(project)
    parent, children = study_of(every)
    finals = {int(run.data.tags["trial_number"]): run.data.metrics["final_val_miou"]
              for run in children}
    assert len(finals) == 2
    best = parent.data.metrics["best_trial_number"]
    assert parent.data.metrics["best_val_miou"] == finals[best] == max(finals.values())


def test_sigint_stops_a_segmentation_run_as_killed_and_it_resumes(project):
    checkpoints = project / "data" / "06_models" / "checkpoints"
    training = subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--params",
         "training.progress_bar=false,training.epochs=5000"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("*/step-*.pt")):  # an epoch is done
        assert training.poll() is None and time.monotonic() < deadline, training.stdout.read()
        time.sleep(0.05)
    training.send_signal(signal.SIGINT)
    output, _ = training.communicate(timeout=60)
    assert training.returncode == 130, output
    run = newest_run(project)
    assert run.info.status == "KILLED"
    epoch = int(run.data.tags["interrupted_epoch"])
    resumed = kedro(project, "run", "--pipelines", "training", "--params",
                    f"training.progress_bar=false,training.epochs={epoch},"
                    "training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    continued = newest_run(project)
    assert continued.info.run_id == run.info.run_id
    assert continued.info.status == "FINISHED"
    assert "test_miou" in continued.data.metrics


def test_a_segmentation_run_keeps_its_records_while_the_tracking_server_is_away(
        project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    write_mlflow_yml(project, "local", uri)
    epochs = 40
    started = time.time()
    training = subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--params",
         f"training.epochs={epochs},training.progress_bar=false"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "300"})
    try:
        wait_for_epoch(project, training, 1, started)
        stop_mlflow_server(server)
        wait_for_epoch(project, training, 3, time.time())
        server = start_mlflow_server(tmp_path, port)
        output, _ = training.communicate(timeout=600)
        assert training.returncode == 0, output
        client, run = the_run(uri)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
        assert sorted(steps) == list(range(1, epochs + 1))
        assert "test_miou" in run.data.metrics
        assert not list((project / SPOOL).glob("*/records.jsonl"))
    finally:
        training.kill()
        stop_mlflow_server(server)
