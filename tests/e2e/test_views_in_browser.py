"""The views as a person sees them, in a real browser: kedro-viz draws the training
pipeline's stages, and the MLflow UI lists the training run and shows its curves and
its confusion matrix. Playwright drives the system's Chromium (Debian's `chromium`
package); without one these tests are skipped, saying so. Screenshots of what was
checked are left in the test's temporary folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import KEDRO, copy_project, kedro
from tests.servers import free_port, free_port_below_49152, serving

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


def test_kedro_viz_draws_the_training_stages_and_the_last_run(browser, small_digits, tmp_path):
    # A project of its own, with a run from the command line: kedro-viz's hooks record
    # such runs of whole pipelines (in .viz/) for its workflow view.
    project = copy_project(tmp_path / "project")
    trained = kedro(project, "run", "--pipelines", "training", "--params",
                    f"raw_images_path={small_digits},training.epochs=1,"
                    "training.progress_bar=false")
    assert trained.returncode == 0, trained.stdout + trained.stderr
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
        page.goto(f"{url}/workflow")  # the run-status view
        notice = page.locator(".run-status-notification")
        notice.wait_for(timeout=TIMEOUT_MS)
        outcome = notice.inner_text()
        succeeded = page.locator(".pipeline-node--task.pipeline-node--status-success")
        succeeded.nth(len(STAGES) - 1).wait_for(timeout=TIMEOUT_MS)  # the graph is drawn
        succeeded = succeeded.count()
        page.screenshot(path=tmp_path / "kedro_viz_workflow.png")
    shown = {name.strip().lower().replace(" ", "_") for name in names}
    assert set(STAGES) <= shown, sorted(shown)
    # Drawn only when the layers form no cycle.
    assert {name.strip() for name in layers} == {
        "raw", "intermediate", "model_input", "models", "model_output", "reporting"}
    assert "completed successfully" in outcome
    assert succeeded == len(STAGES)


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
