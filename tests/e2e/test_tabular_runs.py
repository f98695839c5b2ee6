"""Tables end to end: the commands of the tables guide (docs/guides/tables.md) run as
typed, and the features that images have (torchrun, tuning, the tracking outbox,
signals and resume, a model given by import path) in whole `kedro run`s on the
bundled penguins.

The guide's commands run in a copy of the project laid out as a fresh clone is for
a table: conf/, the bundled penguins table in data/01_raw and the environment in
.venv, but not the digits, which no table command should read. The copy's
conf/local is empty, and the `--env penguins` runs do not read it: their epochs are
the environments' own. The other runs each have a copy of their own whose conf/local
holds conf/penguins' parameters and catalog, as a user's own table's settings would
be, so that a plain `kedro run` trains the species classifier and its files are
under data/, where the image tests' helpers look; with fewer epochs where no
assertion needs an accurate model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from kedro_torch.pytorch.tables import TablePreprocessing
from tests.conftest import PROJECT_ROOT
from tests.docs.blocks import block
from tests.e2e.conftest import KEDRO, copy_project, kedro, latest_run, latest_version
from tests.e2e.test_distributed_run import OUTPUTS, runs, torchrun
from tests.e2e.test_docs_commands import VENV, shell, without_virtualenv
from tests.e2e.test_tuning_run import runs as all_runs
from tests.e2e.test_tuning_run import study_of
from tests.faults.conftest import start_mlflow_server, stop_mlflow_server, write_mlflow_yml
from tests.faults.test_signals import newest_run
from tests.faults.test_tracking_outage import SPOOL, the_run, wait_for_epoch
from tests.servers import free_port, serving
from tests.tracking.test_table_model import invocations

pytestmark = pytest.mark.e2e

PENGUINS = PROJECT_ROOT / "data" / "01_raw" / "penguins.csv"
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island",
            "sex"]
SPECIES = {"Adelie", "Chinstrap", "Gentoo"}
QUICK = "training.epochs=3,training.progress_bar=false"


def with_penguins(root: Path) -> Path:
    """A project copy in ``root`` with the bundled table where conf/penguins reads it."""
    project = copy_project(root)
    (project / "data" / "01_raw").mkdir()
    shutil.copy(PENGUINS, project / "data" / "01_raw" / "penguins.csv")
    return project


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    project = with_penguins(tmp_path_factory.mktemp("clone") / "kedro-torch")
    (project / ".venv").symlink_to(VENV)
    return project


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy whose conf/local trains the species classifier."""
    project = with_penguins(tmp_path / "project")
    for name in ("parameters.yml", "catalog.yml"):
        shutil.copy(PROJECT_ROOT / "conf" / "penguins" / name, project / "conf" / "local")
    return project


@pytest.fixture(scope="module")
def mass_run(clone):
    shell(clone, block("tables-train-mass"))
    return latest_run(clone)


@pytest.fixture(scope="module")
def species_run(clone):
    """Its MLflow client and run, and how many MLflow runs the command added."""
    before = len(all_runs(clone)[1])
    shell(clone, block("tables-train"))
    return (*latest_run(clone), len(all_runs(clone)[1]) - before)


def newest(project: Path, entry: str) -> Path:
    """The newest version's file of a versioned catalog entry of ``--env penguins``."""
    return latest_version(project / "data" / "penguins" / entry)


def model_info(project: Path, uri: str) -> mlflow.models.model.ModelInfo:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        return mlflow.models.get_model_info(uri)
    finally:
        mlflow.set_tracking_uri(previous)


# --- the tables guide -------------------------------------------------------------------


def test_the_species_run_registers_an_accurate_model_that_takes_the_feature_columns(
        clone, species_run):
    client, run, added = species_run
    assert added == 1
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] >= 0.95
    assert "preprocessing.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "kedro_torch_penguins"
    info = model_info(clone, f"models:/kedro_torch_penguins/{version.version}")
    assert sorted(info.signature.inputs.input_names()) == sorted(FEATURES)


def test_the_mass_run_reports_its_errors_and_plots_predictions_against_the_truth(mass_run):
    client, run = mass_run
    assert run.info.status == "FINISHED"
    assert {"test_rmse", "test_mae", "test_r2"} <= run.data.metrics.keys()
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert "plots/predicted_vs_actual.png" in plots


def test_the_served_champion_answers_rows_with_gaps_and_names_a_missing_column(
        clone, species_run, tmp_path):
    # The documented port, on a free one: another server on it would answer instead.
    documented = re.search(r"--port (\d+)", block("tables-serve")).group(1)
    port = free_port()
    command, request = (text.replace(f":{documented}", f":{port}")
                        .replace(f"--port {documented}", f"--port {port}")
                        for text in (block("tables-serve"), block("tables-serve-request")))
    sent = json.loads(re.search(r"-d '(.*)'", request, re.DOTALL).group(1))["dataframe_split"]
    coding = TablePreprocessing.from_dict(json.loads(
        newest(clone, "05_model_input/preprocessing.json").read_text()))
    rows = [dict(zip(sent["columns"], row, strict=True)) for row in sent["data"]]
    # The documented request holds what a served model meets: a gap, a new island.
    assert any(None in row.values() for row in rows)
    assert any(row["island"] not in coding.categories["island"] for row in rows)

    with serving(["bash", "-c", command], clone, tmp_path / "serve.log", "/ping", port,
                 without_virtualenv()) as url:
        answer = json.loads(shell(clone, request).stdout)
        columns = [c for c in sent["columns"] if c != "flipper_length_mm"]
        status, refused = invocations(url, columns, [[row[c] for c in columns] for row in rows])
    assert len(answer["predictions"]) == len(rows)
    for prediction in answer["predictions"]:
        assert prediction["label"] in SPECIES
        probabilities = [prediction[f"probability_{name}"] for name in sorted(SPECIES)]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert prediction["probability"] == max(probabilities)
    assert status == 400
    assert "flipper_length_mm" in refused["message"]


def test_the_inference_pipeline_labels_every_row_of_the_table(clone, species_run):
    shell(clone, block("tables-inference"))
    predictions = pd.read_csv(newest(clone, "07_model_output/inference_predictions.csv"))
    assert len(predictions) == len(pd.read_csv(PENGUINS))
    assert set(predictions["label"]) <= SPECIES


def test_the_exports_load_and_agree_with_the_eager_model(clone, species_run):
    shell(clone, block("tables-export"))
    report = json.loads(newest(clone, "08_reporting/export_report.json").read_text())
    assert report["within_tolerance"]
    differences = [d for sizes in report["max_abs_difference"].values() for d in sizes.values()]
    assert len(differences) == 4 and max(differences) <= report["tolerance"]
    spec = json.loads(newest(clone, "06_models/model_spec.json").read_text())
    features = TablePreprocessing.from_dict(spec["preprocessing"]).features(
        pd.read_csv(PENGUINS).head(5))
    # Files this test's run wrote: torch.export.load unpickles, so only trusted files.
    scripted = torch.jit.load(newest(clone, "06_models/model_torchscript.pt"))
    program = torch.export.load(newest(clone, "06_models/model_exported.pt2")).module()
    torch.testing.assert_close(scripted(features), program(features))
    assert program(features).shape == (5, len(SPECIES))


def test_a_table_of_ones_own_trains_from_the_command_line(clone):
    shell(clone, block("tables-own"))
    client, run = latest_run(clone)
    assert run.data.params["data.task"] == "tabular_classification"
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "my_table_model"


# --- the features images have -----------------------------------------------------------


def test_torchrun_trains_a_module_of_ones_own_on_a_table_in_two_processes(project):
    """Two Gloo processes, one MLflow run and one set of outputs, for a model given by
    the import path of a class outside the project's package, importable as a user's
    would be: on PYTHONPATH."""
    own = "model.name=tests.own_models:WideAndDeep,model.kwargs.hidden=8"
    result = subprocess.run([*torchrun(project), f"{own},{QUICK}"], cwd=project,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(project)
    assert {key: run.data.tags[key] for key in ("world_size", "strategy", "backend",
                                                "global_batch_size")} == {
        "world_size": "2", "strategy": "ddp", "backend": "gloo", "global_batch_size": "64"}
    assert run.data.params["model.name"] == "tests.own_models:WideAndDeep"
    assert run.data.params["model.kwargs.hidden"] == "8"
    for output in OUTPUTS:
        assert len(list((project / "data" / output).iterdir())) == 1, output
    history = pd.read_csv(latest_version(project / "data/08_reporting/training_history.csv"))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "kedro_torch_penguins"


def test_a_study_of_a_regression_minimizes_the_validation_rmse(project):
    result = kedro(project, "run", "--pipelines", "tuning", "--env", "penguins_mass",
                   "--params", f"tuning.n_trials=2,{QUICK}")
    assert result.returncode == 0, result.stderr[-3000:]
    client, every = all_runs(project)
    parent, children = study_of(every)
    assert [run.info.run_name for run in children] == ["trial-0", "trial-1"]
    finals = {}
    for run in children:
        assert len(client.get_metric_history(run.info.run_id, "val_rmse")) == 3
        finals[int(run.data.tags["trial_number"])] = run.data.metrics["final_val_rmse"]
    best = parent.data.metrics["best_trial_number"]
    assert parent.data.metrics["best_val_rmse"] == finals[best] == min(finals.values())


def test_a_table_run_keeps_its_records_while_the_tracking_server_is_away(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    write_mlflow_yml(project, "local", uri)
    epochs = 150
    started = time.time()
    training = subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--params",
         f"training.epochs={epochs},training.progress_bar=false"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "300"})  # each warning on one line
    try:
        wait_for_epoch(project, training, 1, started)
        stop_mlflow_server(server)
        wait_for_epoch(project, training, 3, time.time())  # training goes on without it
        server = start_mlflow_server(tmp_path, port)
        output, _ = training.communicate(timeout=600)
        assert training.returncode == 0, output
        assert "does not answer" in output and "answers again" in output
        client, run = the_run(uri)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, epochs + 1))
        assert "test_accuracy" in run.data.metrics
        (version,) = client.search_model_versions("name='kedro_torch_penguins'")
        assert version.run_id == run.info.run_id
        assert not list((project / SPOOL).glob("*/records.jsonl"))
    finally:
        training.kill()
        stop_mlflow_server(server)


def test_sigint_stops_a_table_run_as_killed_and_it_resumes(project):
    params = "training.progress_bar=false"
    checkpoints = project / "data" / "06_models" / "checkpoints"
    training = subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--params", f"{params},training.epochs=5000"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("*/step-*.pt")):  # an epoch is done
        assert training.poll() is None and time.monotonic() < deadline, training.stdout.read()
        time.sleep(0.05)
    training.send_signal(signal.SIGINT)
    output, _ = training.communicate(timeout=60)
    assert training.returncode == 130, output
    assert "training.resume=auto" in output
    run = newest_run(project)
    assert run.info.status == "KILLED"
    assert run.data.tags["interrupted_by"] == "SIGINT"
    epoch = int(run.data.tags["interrupted_epoch"])

    resumed = kedro(project, "run", "--pipelines", "training", "--params",
                    f"{params},training.epochs={epoch},training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout + resumed.stderr
    continued = newest_run(project)
    assert continued.info.run_id == run.info.run_id
    assert continued.info.status == "FINISHED"
    assert "test_accuracy" in continued.data.metrics
