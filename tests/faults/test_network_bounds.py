"""`kedro run` against hosts that take the connection and never answer: every network
read has a bound, set small here through the environment variables the docs give.

A manifest row whose URL hangs fails the check of the table's files before the run
within ``KEDRO_TORCH_READ_TIMEOUT``, naming the URL; a tracking server that answers
``/health`` but not its API is refused at start-up, and one that stops answering its
API during the run sends the run's records to the outbox, as one that is down does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import KEDRO, copy_project
from tests.faults.conftest import start_mlflow_server, stop_mlflow_server, write_mlflow_yml
from tests.faults.hanging import HoldingProxy, health_only, silent_host
from tests.faults.test_tracking_outage import SPOOL, assert_complete, the_run, wait_for_epoch
from tests.servers import free_port

pytestmark = pytest.mark.e2e

BOUND_S = 2  # each bound, in these tests
SLACK_S = 30  # what a run may take beyond the bound: Kedro's start-up, the other images


def kedro_env(**bounds: str) -> dict[str, str]:
    """The environment of a `kedro run` as a user would start it, with ``bounds``."""
    return {**os.environ, "COLUMNS": "300", **bounds}


def one_line(result: subprocess.CompletedProcess | str) -> str:
    text = result if isinstance(result, str) else result.stdout + result.stderr
    return " ".join(text.split())


def run_from(marker: str, command: list[str], cwd: Path, env: dict[str, str]
             ) -> tuple[int, str, float]:
    """Run ``command``: its status, its output, and the seconds from the first line
    holding ``marker`` to its end."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines, since = [], None
    try:
        for line in process.stdout:
            lines.append(line)
            if since is None and marker in line:
                since = time.monotonic()
        process.wait(timeout=60)
    finally:
        process.kill()
    output = "".join(lines)
    assert since is not None, output
    return process.returncode, output, time.monotonic() - since


def test_a_manifest_url_whose_host_never_answers_ends_the_run_naming_it(
    small_digits, tmp_path
):
    """Timed from the check of the table's files, before the run: on a busy machine
    Kedro's start-up and a new MLflow store take half a minute of their own."""
    project = copy_project(tmp_path / "project")
    with silent_host() as host:
        url = f"{host}/digits/7/hanging.png"
        rows = sorted(str(path) for path in small_digits.rglob("*.png"))
        manifest = tmp_path / "images.csv"
        pd.DataFrame({"path": [*rows, url],
                      "label": [Path(row).parent.name for row in rows] + ["7"]}
                     ).to_csv(manifest, index=False)
        status, output, elapsed = run_from(
            "rows of the image table before the run",
            [KEDRO, "run", "--pipelines", "training", "--params",
             f"data.source=manifest,raw_manifest_path={manifest},data.max_bad_fraction=0"],
            project, kedro_env(KEDRO_TORCH_READ_TIMEOUT=str(BOUND_S)),
        )
    assert status != 0
    assert elapsed < BOUND_S + SLACK_S, output
    assert f"{host} did not send {url} within {BOUND_S} s (KEDRO_TORCH_READ_TIMEOUT)" \
        in one_line(output)


def test_a_tracking_server_that_answers_health_but_not_its_api_is_refused_at_start_up(
    small_digits, tmp_path
):
    project = copy_project(tmp_path / "project")
    with health_only() as uri:
        write_mlflow_yml(project, "hanging", uri)
        started = time.monotonic()
        result = subprocess.run(
            [KEDRO, "run", "--pipelines", "training", "--env", "hanging",
             "--params", f"raw_images_path={small_digits}"],
            cwd=project, capture_output=True, text=True, timeout=300,
            env=kedro_env(MLFLOW_HTTP_REQUEST_TIMEOUT=str(BOUND_S)),
        )
        elapsed = time.monotonic() - started
    output = one_line(result)
    assert result.returncode != 0
    assert elapsed < BOUND_S + SLACK_S, output
    assert f"The MLflow tracking server {uri}" in output
    assert "it answers /health, but not its API" in output
    assert not (project / "data" / "02_intermediate").exists()  # nothing ran


def test_a_tracking_server_that_stops_answering_its_api_mid_run_gets_the_records_later(
    small_digits, tmp_path
):
    """The run goes on with the server holding every request, fails at its end saying
    the server went away (``mlflow.outage_wait=1``), and the outbox's command sends the
    whole record once the server answers again."""
    project = copy_project(tmp_path / "project")
    port = free_port()
    (tmp_path / "server").mkdir()
    server = start_mlflow_server(tmp_path / "server", port)
    proxy = HoldingProxy(port)
    write_mlflow_yml(project, "holding", proxy.uri)
    started = time.time()
    training = subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--env", "holding", "--params",
         f"raw_images_path={small_digits},training.epochs=12,training.progress_bar=false,"
         "data.batch_size=8,mlflow.outage_wait=1"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=kedro_env(MLFLOW_HTTP_REQUEST_TIMEOUT=str(BOUND_S)),
    )
    try:
        wait_for_epoch(project, training, 1, started)
        proxy.hold()
        held = time.time()
        wait_for_epoch(project, training, 3, held)  # training goes on without it
        output, _ = training.communicate(timeout=600)
        ended = time.time()
        text = one_line(output)
        assert training.returncode != 0, output
        assert proxy.held_requests > 0
        # Found away by the probe's request to the API or by a send, whichever came first.
        assert f"The MLflow tracking server {proxy.uri} does not answer (" in text, output
        assert "Training goes on" in text
        assert f"{proxy.uri} went away during the run and did not come back within " \
               "mlflow.outage_wait (1 s)" in text
        # Once the pipeline's outputs were saved, the run waited for the server no
        # longer than its bounds allow.
        outputs = [path for path in (project / "data").rglob("*") if path.is_file()
                   and not path.is_relative_to(project / SPOOL)]
        assert ended - max(path.stat().st_mtime for path in outputs) < 1 + 4 * BOUND_S + SLACK_S
        (spool,) = (project / SPOOL).glob("*/records.jsonl")
        assert str(spool.parent) in re.sub(r"\s+", "", output.replace("\n", ""))

        proxy.relay()
        sent = subprocess.run(
            [sys.executable, "-m", "kedro_torch.tracking.outbox", str(spool.parent)],
            cwd=project, capture_output=True, text=True, timeout=300,
        )
        assert sent.returncode == 0, sent.stderr
        assert_complete(*the_run(proxy.uri))
    finally:
        training.kill()
        proxy.close()
        stop_mlflow_server(server)
