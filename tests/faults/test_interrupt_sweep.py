"""Ctrl-C at any moment of a real `kedro run`, as a terminal sends it (SIGINT to the
whole process group): during start-up, ingest, the file check and its workers,
transform, training, evaluation or packaging. Every try must end with status 130,
leave no FINISHED MLflow run (a run it opened is KILLED) and no model version
registered by its run. The moments are drawn at random over the length of an uninterrupted run, in
two project copies at once; a signal that comes after Kedro has said the pipeline
completed does not count (the run did finish), and at least 30 must come before."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests.e2e.conftest import KEDRO, copy_project

pytestmark = pytest.mark.e2e

TRIES = 38  # at least 30 land before the pipeline completes
STREAMS = 2
DONE = "Pipeline execution completed"  # Kedro's line once the last node has run


def command(digits: Path) -> list[str]:
    return [KEDRO, "run", "--pipelines", "training", "--params",
            f"raw_images_path={digits},training.epochs=2,training.progress_bar=false,"
            "data.batch_size=16,data.num_workers=2"]


def run_and_interrupt(project: Path, digits: Path, after: float | None) -> tuple[int, str, bool]:
    """The run, sent SIGINT ``after`` seconds (None: left alone): its status, its
    output, and whether the signal came before the pipeline had completed."""
    process = subprocess.Popen(command(digits), cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    sent = False
    if after is not None:
        time.sleep(after)
        if process.poll() is None:
            sent = True
            os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=300)
    reader.join(timeout=30)
    output = "".join(lines)
    # Judged by what the process wrote, not by when this thread read it: a signal is
    # handled at once, so one sent before the last node ended leaves no DONE line.
    return process.returncode, output, sent and DONE not in output


def test_ctrl_c_at_any_moment_is_an_interrupt(tmp_path, small_digits):
    projects = [copy_project(tmp_path / f"project{i}") for i in range(STREAMS)]
    # An uninterrupted run of its own, for the length of the window the signals fall in.
    started = time.monotonic()
    status, output, _ = run_and_interrupt(copy_project(tmp_path / "reference"), small_digits,
                                          None)
    length = time.monotonic() - started
    assert status == 0, output
    moments = [random.uniform(0, 0.85 * length) for _ in range(TRIES)]

    def stream(index: int) -> list[tuple[float, int, str, bool, list]]:
        """The tries of one project, each with the MLflow runs it opened."""
        tries = []
        for after in moments[index::STREAMS]:
            before = {run.info.run_id for run in all_runs(projects[index])}
            outcome = run_and_interrupt(projects[index], small_digits, after)
            opened = [run for run in all_runs(projects[index]) if run.info.run_id not in before]
            tries.append((after, *outcome, opened))
        return tries

    with ThreadPoolExecutor(STREAMS) as pool:
        tries = [outcome for results in pool.map(stream, range(STREAMS)) for outcome in results]
    counted = [(after, status, output, opened)
               for after, status, output, in_time, opened in tries if in_time]
    assert len(counted) >= 30, f"only {len(counted)} signals came before the pipeline completed"
    # Before Kedro has imported enough to run the project's code, Python itself dies of
    # the signal: the shell reports 130 for that too. Within the interpreter's own
    # start-up (importing `site`, the first milliseconds) Python reports a fatal error.
    wrong = [(round(after, 2), status, output[-1500:]) for after, status, output, _ in counted
             if status not in (130, -signal.SIGINT)
             and not output.startswith("Fatal Python error: init_import_site")]
    assert not wrong, f"{len(wrong)} of {len(counted)} tries did not end with 130: {wrong[:3]}"
    lies = [(round(after, 2), run.info.status) for after, _, _, opened in counted
            for run in opened if run.info.status != "KILLED"]
    assert not lies, f"interrupted runs not recorded as KILLED: {lies}"
    interrupted = {run.info.run_id for *_, opened in counted for run in opened}
    for project in projects:
        client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        registered = [version for version in client.search_model_versions()
                      if version.run_id in interrupted]
        assert not registered, f"interrupted runs registered {registered}"


def all_runs(project: Path) -> list:
    """Every run of the project's store, deleted ones too."""
    if not (project / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
    return client.search_runs(experiments, run_view_type=ViewType.ALL) if experiments else []
