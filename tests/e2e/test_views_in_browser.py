"""The views as a person sees them, in a real browser: kedro-viz draws the training
pipeline's stages, and the MLflow UI lists the training run and shows its curves and
its confusion matrix. Playwright drives the system's Chromium (Debian's `chromium`
package); without one these tests are skipped, saying so. Screenshots of what was
checked are left in the test's temporary folder."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import KEDRO
from tests.faults.conftest import START_TIMEOUT_S, answers, free_port

pytestmark = pytest.mark.e2e

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_MS = 90_000  # a page of a server on a busy 2-core machine
STAGES = ("ingest", "transform", "build_dataloaders", "build_model", "train", "evaluate",
          "package_model")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright, or a skip that says what is missing."""
    executable = next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install chromium): the views are not "
                    "checked in a browser")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable,
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


def free_port_below_49152() -> int:
    """A free local port where kedro-viz takes one: it refuses those above 49151,
    where the system's own picks usually are."""
    for port in random.sample(range(20_000, 49_152), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 49151")


@contextmanager
def serving(command: list[str], cwd: Path, log: Path, health: str, port: int
            ) -> Iterator[str]:
    """Start a server on local ``port`` (``{port}`` in ``command``); its URL once
    ``health`` answers. Stopped with its process group at the end."""
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [part.format(port=port) for part in command], cwd=cwd, stdout=log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                   f"{os.environ['PATH']}"},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(url, health):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_kedro_viz_draws_the_training_stages(browser, finished_run, project, tmp_path):
    command = [KEDRO, "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", "{port}",
               "--pipeline", "training"]
    with serving(command, project, tmp_path / "viz.log", "/api/main",
                 free_port_below_49152()) as url:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        graph = page.locator(".pipeline-node")
        graph.first.wait_for(timeout=TIMEOUT_MS)
        names = set(page.locator(".pipeline-node__text").all_text_contents())
        layers = page.locator(".pipeline-layer-name").all_text_contents()
        page.screenshot(path=tmp_path / "kedro_viz.png")
        # The run-status view: the last `kedro run` (kedro-viz's hooks record it in .viz/).
        page.goto(f"{url}/workflow")
        page.locator(".run-status-notification").wait_for(timeout=TIMEOUT_MS)
        tasks = page.locator(".pipeline-node--task")
        statuses = tasks.evaluate_all(
            "nodes => nodes.map(n => [...n.classList].some(c => c.includes('--status-')))")
        page.screenshot(path=tmp_path / "kedro_viz_workflow.png")
    shown = {name.strip().lower().replace(" ", "_") for name in names}
    assert set(STAGES) <= shown, sorted(shown)
    # Drawn only when the layers form no cycle.
    assert {name.strip() for name in layers} == {
        "raw", "intermediate", "model_input", "models", "model_output", "reporting"}
    assert statuses and all(statuses)


def test_mlflow_ui_lists_the_run_and_shows_its_curves_and_confusion_matrix(
    browser, finished_run, project, tmp_path
):
    _, run = finished_run
    command = [MLFLOW, "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    experiment = f"#/experiments/{run.info.experiment_id}"
    view = "workflowType=machine_learning"
    with serving(command, project, tmp_path / "ui.log", "/health", free_port()) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/{experiment}?{view}")
        page.get_by_text(run.info.run_name).first.wait_for(timeout=TIMEOUT_MS)
        page.screenshot(path=tmp_path / "experiment.png")

        page.goto(f"{url}/{experiment}/runs/{run.info.run_id}?{view}")
        page.get_by_text("val_accuracy", exact=True).first.wait_for(timeout=TIMEOUT_MS)
        page.get_by_text("Test accuracy").first.wait_for(timeout=TIMEOUT_MS)  # description
        page.screenshot(path=tmp_path / "run.png", full_page=True)

        page.goto(f"{url}/{experiment}/runs/{run.info.run_id}/artifacts?{view}")
        page.get_by_text("confusion_matrix.png").first.click(timeout=TIMEOUT_MS)
        image = page.locator("img[alt='confusion_matrix.png']").first
        image.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=image.element_handle(), timeout=TIMEOUT_MS)
        width = image.evaluate("img => img.naturalWidth")  # decoded by the browser
        page.screenshot(path=tmp_path / "confusion_matrix.png")
    assert width > 500  # the figure as saved, not an icon
