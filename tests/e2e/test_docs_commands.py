"""The commands the docs and a run's closing summary tell a user to type, run as typed,
in a copy of the project laid out as a fresh clone is after `make run`: the bundled
digits in data/01_raw, the Makefile, the environment in .venv, no virtualenv
activated. The summary's commands are typed into a plain shell; the docs' shell
blocks run from the project root after `source .venv/bin/activate`, as the docs say,
their Python blocks with the project's python. Only the copy's conf/local differs
from a clone: it keeps every epoch to a few batches, as a user's own conf/local may,
so that the commands stay quick; no command is changed."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
import torch
import torchvision
import yaml

from tests.conftest import BUNDLED_DIGITS, PROJECT_ROOT, copy_digits
from tests.docs.blocks import block
from tests.e2e.conftest import copy_project, latest_run, latest_version
from tests.image_files import image_folder
from tests.servers import START_TIMEOUT_S, answers, free_port, stop
from tests.torchvision_roots import write_mnist

pytestmark = pytest.mark.e2e

VENV = PROJECT_ROOT / ".venv"
QUICK = {"epochs": 3, "max_batches_per_epoch": 2, "progress_bar": False}
DIGITS = [str(path) for path in (Path("data/01_raw/digits/3/0003.png"),
                                 Path("data/01_raw/digits/7/0007.png"))]


def without_virtualenv() -> dict[str, str]:
    """This environment as a shell where no virtualenv was activated."""
    scripts = {(VENV / "bin").resolve(), Path(sys.executable).parent.resolve()}
    path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and Path(entry).resolve() not in scripts]
    env = {key: value for key, value in os.environ.items()
           if key not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    # MLflow's CLI takes its port from MLFLOW_PORT: a free one, as a user may set it.
    return {**env, "PATH": os.pathsep.join(path), "COLUMNS": "200",
            "MLFLOW_PORT": str(free_port())}


@pytest.fixture(scope="module")
def after_make_run(tmp_path_factory) -> tuple[Path, dict[str, str], list[str]]:
    """`make run` in the copy, as the get-started page's first command: the copy, the
    shell's environment and the closing summary's lines."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    clone = copy_project(tmp_path_factory.mktemp("clone") / "kedro-torch")
    (clone / "Makefile").symlink_to(PROJECT_ROOT / "Makefile")
    (clone / ".venv").symlink_to(VENV)
    # No newer than the installed environment, so that `make` finds nothing to install.
    shutil.copystat(PROJECT_ROOT / "pyproject.toml", clone / "pyproject.toml")
    (clone / "conf/local/parameters.yml").write_text(yaml.safe_dump({"training": QUICK}))
    copy_digits(clone / "data" / "01_raw" / "digits", per_class=20)
    env = without_virtualenv()
    if subprocess.run(["make", "-q", "install"], cwd=clone, env=env).returncode != 0:
        pytest.skip("the project's virtualenv is older than pyproject.toml: `make` would "
                    "reinstall it (run make install)")
    result = subprocess.run(["make", "run"], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = result.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Run "))
    return clone, env, lines[start:]


@pytest.fixture(scope="module")
def clone(after_make_run) -> Path:
    return after_make_run[0]


def shell(clone: Path, code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A shell block as a user types it, in the project with the environment active."""
    script = f"source .venv/bin/activate\nset -e\n{code}"
    result = subprocess.run(["bash", "-c", script], cwd=clone, capture_output=True, text=True,
                            timeout=timeout, env=without_virtualenv())
    assert result.returncode == 0, f"{code}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def python(clone: Path, code: str, timeout: float = 300) -> str:
    """A Python block run with the project's python, from the project root."""
    result = subprocess.run([str(clone / ".venv/bin/python"), "-c", code], cwd=clone,
                            capture_output=True, text=True, timeout=timeout,
                            env=without_virtualenv())
    assert result.returncode == 0, f"{code}\n{result.stderr[-5000:]}"
    return result.stdout


def training_runs(clone: Path) -> int:
    client, _ = latest_run(clone)
    experiment = client.get_experiment_by_name("kedro_torch")
    return len(client.search_runs([experiment.experiment_id], "tags.pipeline = 'training'"))


def test_make_run_trains_and_registers_a_champion(clone):
    _, run = latest_run(clone)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics


def printed(summary: list[str], label: str) -> str:
    (text,) = [line[len(label) + 2:].strip() for line in summary
               if line.startswith(f"  {label} ")]
    return text


@contextmanager
def typed(command: str, folder: Path, env: dict[str, str], log: Path) -> Iterator[
        subprocess.Popen]:
    """``command`` typed into a shell in ``folder``; stopped, with all it started, at the
    end."""
    process = subprocess.Popen(["sh", "-c", command], cwd=folder, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield process
    finally:
        stop(process)


def wait_for(ready, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        assert process.poll() is None, f"it stopped:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not ready in {START_TIMEOUT_S} s:\n{log.read_text()}"
        time.sleep(0.5)


def read_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_see_it_starts_the_mlflow_ui_on_the_run(after_make_run, tmp_path):
    copy, env, summary = after_make_run
    run_id = summary[0].split()[-1]
    command, url = printed(summary, "see it").split(", then ")
    page = urlsplit(url)
    assert page.fragment == (f"/experiments/1/runs/{run_id}?workflowType=machine_learning")
    server = f"{page.scheme}://{page.netloc}"
    assert server == f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    log = tmp_path / "ui.log"
    with typed(command, copy, env, log) as process:
        wait_for(lambda: answers(server, "/health"), process, log)
        run = read_json(f"{server}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        assert (run["info"]["run_id"], run["info"]["experiment_id"]) == (run_id, "1")
        assert run["info"]["status"] == "FINISHED"
        with urllib.request.urlopen(url, timeout=30) as response:  # the UI's page
            assert "<html" in response.read().decode().lower()
    assert command == "make ui"  # the project's own store


def test_pipeline_opens_kedro_viz_on_the_training_pipeline(after_make_run, tmp_path):
    copy, env, summary = after_make_run
    command = printed(summary, "pipeline")
    # The browser kedro-viz opens (Python's webbrowser reads BROWSER) notes the address.
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    log = tmp_path / "viz.log"
    with typed(command, copy, {**env, "BROWSER": str(browser)}, log) as process:
        wait_for(lambda: opened.exists() and opened.read_text().strip(), process, log)
        url = opened.read_text().strip()
        assert urlsplit(url).hostname == "127.0.0.1"
        graph = read_json(f"{url.rstrip('/')}/api/main")
        tasks = [node["name"] for node in graph["nodes"] if node["type"] == "task"]
        assert "train" in tasks and "evaluate" in tasks
    assert command == "make viz"


def test_evaluate_again_opens_a_run_of_its_own(clone):
    before = training_runs(clone)
    shell(clone, block("evaluate-again"))
    assert training_runs(clone) == before + 1


def test_the_inference_pipeline_predicts_the_folder(clone):
    shell(clone, block("inference"))
    table = pd.read_csv(latest_version(clone / "data/07_model_output/inference_predictions.csv"))
    assert len(table) == len(list((clone / "data/01_raw/digits/3").glob("*.png")))
    assert set(table["label"].astype(str)) <= {str(digit) for digit in range(10)}


def test_the_mlflow_model_predicts_paths_and_bytes(clone):
    output = python(clone, block("mlflow-model"))
    assert output.count("top1_label") == 2  # two tables printed, with their columns


def test_mlflow_models_predict_reads_the_table_of_paths(clone):
    result = shell(clone, block("mlflow-models-predict"))
    predictions = json.loads(result.stdout.strip().splitlines()[-1])["predictions"]
    assert [row["path"] for row in predictions] == DIGITS


def test_the_served_champion_answers_the_docs_request(clone, tmp_path):
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate\n{block('serve')}"],
                              cwd=clone, stdout=log, stderr=subprocess.STDOUT,
                              env=without_virtualenv(), start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not answers("http://127.0.0.1:5001", "/ping"):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "mlflow models serve did not start"
            time.sleep(0.5)
        answer = json.loads(shell(clone, block("serve-request")).stdout)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    (prediction,) = answer["predictions"]
    assert prediction["error"] is None
    assert prediction["label"] in {str(digit) for digit in range(10)}


def test_the_exported_files_are_written_and_load_as_the_docs_show(clone):
    shell(clone, block("export"))
    indices = python(clone, block("exported-with-spec"))
    labels = python(clone, block("exported-without-project"))
    assert indices.startswith("tensor([") and labels.startswith("['")
    label_map = json.loads(latest_version(clone / "data/05_model_input/label_map.json")
                           .read_text())
    classes = sorted(label_map, key=label_map.get)
    predicted = [int(index) for index in indices.strip()[len("tensor(["):-2].split(",")]
    assert ast.literal_eval(labels) == [classes[index] for index in predicted]


def test_your_own_image_folder_trains(clone):
    image_folder(clone / "data/01_raw/my_images", {"cat": 12, "dog": 12}, size=20)
    shell(clone, block("image-folder"))
    _, run = latest_run(clone)
    assert run.data.params["data.channels"] == "3"
    assert run.data.params["data.image_size"] == "64"


def test_a_table_of_paths_trains_with_patients_kept_together(clone):
    folder = clone / "data/01_raw/xray"
    rows = []
    (folder / "images").mkdir(parents=True)
    for patient in range(12):
        finding = ("normal", "effusion")[patient % 2]
        shots = sorted((BUNDLED_DIGITS / str(patient % 2)).glob("*.png"))[patient::12][:3]
        for shot, image in zip("abc", shots, strict=True):
            name = f"images/p{patient:03d}_{shot}.png"
            shutil.copy(image, folder / name)
            rows.append({"file": name, "finding": finding, "patient_id": f"p{patient:03d}"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    shell(clone, block("manifest"))
    model_input = pd.read_parquet(latest_version(clone / "data/05_model_input/model_input.parquet"))
    assert (model_input.groupby("patient_id")["split"].nunique() == 1).all()


def test_fine_tuning_starts_from_a_state_dict_file(clone):
    torch.save(torchvision.models.resnet18().state_dict(), clone / "resnet18_weights.pt")
    result = shell(clone, block("fine-tune"))
    loaded = re.search(r"Pretrained weights: (\d+) tensors loaded", result.stdout + result.stderr)
    assert loaded and int(loaded.group(1)) > 100  # all but the head sized for 1000 classes


def test_an_mnist_root_trains_through_torchvision(clone):
    write_mnist(clone / "data/01_raw/mnist", train_per_class=6, test_per_class=3)
    shell(clone, block("mnist"))
    _, run = latest_run(clone)
    assert run.data.params["data.source"] == "torchvision"


def test_the_tuning_commands_run_and_continue_one_study(clone):
    result = shell(clone, block("tuning"), timeout=900)
    assert "Best trial" in result.stdout + result.stderr


def test_two_processes_train_with_torchrun_and_with_training_devices(clone):
    before = training_runs(clone)
    shell(clone, block("two-processes"))
    assert training_runs(clone) == before + 2
    _, run = latest_run(clone)
    assert run.data.tags["world_size"] == "2"

