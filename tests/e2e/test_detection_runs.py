"""Object detection end to end: the commands of the detection guide
(docs/guides/detection.md) run as typed on the bundled shapes, in a copy of the project
laid out as a fresh clone (conf/, the shapes in data/01_raw and the environment in
.venv); COCO and PASCAL VOC folders written here, trained through their sources; and
the boxes the data-quality report sets aside."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kedro_torch.pytorch.detection_inference import DetectionSpec, Detector
from tests.conftest import PROJECT_ROOT
from tests.detection_data import write_bad_boxes, write_coco_root, write_voc_root
from tests.docs.blocks import block
from tests.e2e.conftest import KEDRO, copy_project, kedro, latest_run, latest_version
from tests.e2e.test_distributed_run import runs, torchrun
from tests.e2e.test_docs_commands import VENV, shell, without_virtualenv
from tests.e2e.test_tuning_run import runs as all_runs
from tests.e2e.test_tuning_run import study_of
from tests.faults.conftest import start_mlflow_server, stop_mlflow_server, write_mlflow_yml
from tests.faults.test_signals import newest_run
from tests.faults.test_tracking_outage import SPOOL, the_run, wait_for_epoch
from tests.servers import free_port, serving

pytestmark = pytest.mark.e2e

SHAPES = PROJECT_ROOT / "data" / "01_raw" / "shapes_detection"
DOCUMENTED_IMAGE = "data/01_raw/shapes_detection/images/0001.png"
CLASSES = ["circle", "square", "triangle"]
# The shapes run takes a few minutes on a quiet CPU, and half an hour on one that other
# tests share.
SHAPES_TIMEOUT_S = 3600
QUICK = "training.epochs=2,training.progress_bar=false"
COLUMNS = ["image_id", "path", "relative_path", "label", "score", "x_min", "y_min", "x_max",
           "y_max"]
CORNERS = ["x_min", "y_min", "x_max", "y_max"]
# A user's own small COCO folder, as conf/local would train on it: tiny images, a narrow
# FCOS, so that the runs below test what they run, not the model.
LOCAL_PARAMETERS = """
data:
  task: object_detection
  source: coco
  detection: {classes: [square, circle]}
  image_size: 48
  channels: 3
  normalize: {mean: null, std: null}
  batch_size: 8
  num_workers: 0
model: {name: small_fcos, kwargs: {width: 8, fpn_channels: 32}}
training: {monitor: val_map}
tuning:
  metric: val_map
  space:
    training.optimizer.kwargs.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
    data.batch_size: null
    model.kwargs.width: {type: int, low: 8, high: 16, step: 8}
"""


def local_catalog(folder: Path) -> str:
    return f"raw_images:\n  type: kedro_torch.datasets.ImageFolderDataset\n  path: {folder}\n"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("clone") / "kedro-torch")
    (project / "data" / "01_raw").mkdir()
    shutil.copytree(SHAPES, project / "data" / "01_raw" / "shapes_detection")
    (project / ".venv").symlink_to(VENV)
    return project


@pytest.fixture(scope="module")
def shapes_run(clone):
    shell(clone, block("detection-train"), timeout=SHAPES_TIMEOUT_S)
    return latest_run(clone)


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy whose conf/local trains on a small COCO folder written here."""
    project = copy_project(tmp_path / "project")
    root = write_coco_root(tmp_path / "coco", count=32, size=48)
    (project / "conf" / "local" / "parameters.yml").write_text(LOCAL_PARAMETERS)
    (project / "conf" / "local" / "catalog.yml").write_text(local_catalog(root))
    return project


def newest(project: Path, entry: str) -> Path:
    return latest_version(project / "data" / "shapes_detection" / entry)


def quality_report(project: Path) -> dict:
    return json.loads(latest_version(project / "data" / "08_reporting"
                                     / "data_quality_report.json").read_text())


def test_the_shapes_run_detects_well_and_logs_its_classes_and_boxes(shapes_run):
    client, run = shapes_run
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_map50"] >= 0.70
    assert {"val_map", "val_map50", "train_loss", "test_map", "test_recall"} <= (
        run.data.metrics.keys())
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "per_class.json" in artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "per_class.json"))
                       .read_text())
    per_class = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert list(per_class["class"]) == CLASSES
    assert all(0 <= ap <= 1 for ap in per_class["ap"])
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert {"plots/boxes.png", "plots/precision_recall.png"} <= set(plots)
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "kedro_torch_shapes_detection"


def test_the_served_champion_returns_the_boxes_evaluation_predicted(clone, shapes_run,
                                                                    tmp_path):
    documented = re.search(r"--port (\d+)", block("detection-serve")).group(1)
    port = free_port()
    command = block("detection-serve").replace(f"--port {documented}", f"--port {port}")
    request = block("detection-serve-request").replace(f":{documented}", f":{port}")
    assert DOCUMENTED_IMAGE in request
    predictions = pd.read_csv(newest(clone, "07_model_output/test_predictions.csv"))
    image = predictions["path"][0]  # a test image
    with serving(["bash", "-c", command], clone, tmp_path / "serve.log", "/ping", port,
                 without_virtualenv()):
        (documented_answer,) = json.loads(shell(clone, request).stdout)["predictions"]
        (answer,) = json.loads(shell(clone, request.replace(DOCUMENTED_IMAGE, image))
                               .stdout)["predictions"]
    assert documented_answer["boxes"] and not documented_answer.get("error")
    assert not answer.get("error")
    evaluated = json.loads(predictions["found"][0])
    assert evaluated, "evaluation found nothing in the test image"
    assert answer["labels"] == [found["label"] for found in evaluated]
    assert answer["scores"] == pytest.approx([found["score"] for found in evaluated],
                                             abs=1e-4)
    assert answer["boxes"] == [pytest.approx([found[c] for c in CORNERS], abs=1e-4)
                               for found in evaluated]
    spec = DetectionSpec.from_dict(json.loads(
        newest(clone, "06_models/model_spec.json").read_text()))
    weights = torch.load(newest(clone, "06_models/model_state_dict.pt"), weights_only=True)
    (detected,) = Detector.from_state_dict(weights, spec, "cpu").predict_files([image])
    assert answer["labels"] == [spec.classes[label - 1] for label in detected["labels"].tolist()]
    assert answer["scores"] == pytest.approx(detected["scores"].tolist(), abs=1e-4)
    assert answer["boxes"] == [pytest.approx(box, abs=1e-4)
                               for box in detected["boxes"].tolist()]


def test_the_inference_pipeline_writes_a_row_per_detection_and_coco_results(clone,
                                                                           shapes_run):
    shell(clone, block("detection-inference"))
    predictions = pd.read_csv(newest(clone, "07_model_output/inference_predictions.csv"))
    assert list(predictions.columns) == COLUMNS
    assert len(predictions) >= len(list((SHAPES / "images").glob("*.png")))  # 2-5 shapes each
    assert set(predictions["label"]) <= set(CLASSES)
    assert (predictions["score"] >= 0.5).all()
    assert (predictions["x_min"] < predictions["x_max"]).all()
    assert (predictions["y_min"] < predictions["y_max"]).all()
    results = json.loads(newest(clone, "07_model_output/inference_coco_results.json")
                         .read_text())
    assert len(results) == len(predictions)
    for row, result in zip(predictions.itertuples(), results, strict=True):
        assert result["image_id"] == row.image_id
        assert result["category_id"] == CLASSES.index(row.label) + 1
        assert result["score"] == pytest.approx(row.score)
        assert result["bbox"] == pytest.approx(
            [row.x_min, row.y_min, row.x_max - row.x_min, row.y_max - row.y_min])


def test_the_exports_agree_with_the_eager_model(clone, shapes_run):
    shell(clone, block("detection-export"))
    report = json.loads(newest(clone, "08_reporting/export_report.json").read_text())
    assert set(report["max_abs_difference"]) == {"torchscript", "exported_program"}
    assert report["within_tolerance"]
    assert all(value <= report["tolerance"] for per_size in report["max_abs_difference"].values()
               for value in per_size.values())


def test_a_coco_folder_trains_through_the_coco_source(project):
    result = kedro(project, "run", "--pipelines", "training", "--params", QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = latest_run(project)
    assert run.info.status == "FINISHED"
    assert 0 <= run.data.metrics["test_map"] <= 1
    report = quality_report(project)
    assert report["source"]["type"] == "coco"
    assert report["images_used"] == 32
    assert report["boxes_per_class"]["square"] > 0 and report["boxes_per_class"]["circle"] > 0


def test_a_voc_folder_trains_through_the_voc_source(project, tmp_path):
    root = write_voc_root(tmp_path / "voc", count=30, size=48)
    (project / "conf" / "local" / "parameters.yml").write_text(LOCAL_PARAMETERS.replace(
        "  source: coco\n", "  source: voc\n"))
    (project / "conf" / "local" / "catalog.yml").write_text(local_catalog(root))
    result = kedro(project, "run", "--pipelines", "training", "--params", QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = latest_run(project)
    assert run.info.status == "FINISHED"
    assert 0 <= run.data.metrics["test_map"] <= 1
    report = quality_report(project)
    assert report["images_used"] == 30
    assert report["boxes_per_class"]["square"] > 0 and report["boxes_per_class"]["circle"] > 0


def with_more_images(root: Path, count: int) -> None:
    """Adds ``count`` good images (``images/more_iNNN.png``) to the COCO folder at ``root``:
    the 8 good images of :func:`write_bad_boxes` may leave the hash split's test part empty."""
    more = write_coco_root(root.with_name(f"{root.name}_more"), count=count, seed=1)
    added = json.loads((more / "annotations.json").read_text())
    coco = json.loads((root / "annotations.json").read_text())
    image_ids = {image["id"]: len(coco["images"]) + index
                 for index, image in enumerate(added["images"], 1)}
    for image in added["images"]:
        name = image["file_name"]
        shutil.copy(more / "images" / name, root / "images" / f"more_{name}")
        image["file_name"] = f"more_{name}"
    coco["images"] += [{**image, "id": image_ids[image["id"]]} for image in added["images"]]
    coco["annotations"] += [{**note, "id": len(coco["annotations"]) + index,
                             "image_id": image_ids[note["image_id"]]}
                            for index, note in enumerate(added["annotations"], 1)]
    (root / "annotations.json").write_text(json.dumps(coco))


def test_a_box_outside_its_image_and_an_unknown_label_are_named_in_the_report(project,
                                                                             tmp_path):
    root = tmp_path / "broken"
    broken = write_bad_boxes(root)
    with_more_images(root, 16)
    (project / "conf" / "local" / "catalog.yml").write_text(local_catalog(root))
    result = kedro(project, "run", "--pipelines", "training", "--params",
                   f"data.max_bad_fraction=0.5,{QUICK}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = quality_report(project)
    reasons = {Path(row["relative_path"]).name: row["reason"] for row in report["bad_boxes"]}
    assert set(reasons) == set(broken.values())
    assert "outside" in reasons[broken["outside"]]
    assert "unknown label" in reasons[broken["unknown"]] and "9" in reasons[broken["unknown"]]
    (outside,) = [row for row in report["bad_boxes"]
                  if Path(row["relative_path"]).name == broken["outside"]]
    assert outside["box"][2] == 48 + 5  # past the right edge of the 48-px image
    assert {Path(row["relative_path"]).name for row in report["bad_images"]} == set(
        broken.values())
    assert report["images_used"] == 8 + 16


# --- the features images have -----------------------------------------------------------


def test_torchrun_trains_a_detection_run_in_two_processes(project):
    result = subprocess.run([*torchrun(project), QUICK], cwd=project, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2"
    assert {"val_map", "val_map50", "test_map"} <= run.data.metrics.keys()


def test_a_study_maximizes_the_validation_map(project):
    result = kedro(project, "run", "--pipelines", "tuning", "--params",
                   f"tuning.n_trials=2,{QUICK}")
    assert result.returncode == 0, result.stderr[-3000:]
    _, every = all_runs(project)
    parent, children = study_of(every)
    finals = {int(run.data.tags["trial_number"]): run.data.metrics["final_val_map"]
              for run in children}
    assert len(finals) == 2
    best = parent.data.metrics["best_trial_number"]
    assert parent.data.metrics["best_val_map"] == finals[best] == max(finals.values())


def test_sigint_stops_a_detection_run_as_killed_and_it_resumes(project):
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
    assert "test_map" in continued.data.metrics


def test_a_detection_run_keeps_its_records_while_the_tracking_server_is_away(
        project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    write_mlflow_yml(project, "local", uri)
    epochs = 16
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
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_map")]
        assert sorted(steps) == list(range(1, epochs + 1))
        assert "test_map" in run.data.metrics
        assert not list((project / SPOOL).glob("*/records.jsonl"))
    finally:
        training.kill()
        stop_mlflow_server(server)
