"""The views as a person sees them, in a real browser: kedro-viz draws the training
pipeline's stages, and the MLflow UI lists the training run and shows its curves and
its confusion matrix. Playwright drives the system's Chromium (Debian's `chromium`
package); without one these tests are skipped, saying so (they fail in CI). Screenshots
of what was checked are left in the test's temporary folder and, when SCREENSHOTS_DIR
is set (`make screenshots`), under the names the documentation shows them by."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import KEDRO, copy_project, kedro
from tests.servers import free_port, free_port_below_49152, serving

pytestmark = pytest.mark.e2e

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
TIMEOUT_MS = 90_000  # a page of a server on a busy 2-core machine
STAGES = ("ingest", "transform", "build_dataloaders", "build_model", "train", "evaluate",
          "package_model")
VIEWPORT = {"width": 1400, "height": 900}
# Read once, before any test changes the working directory.
SCREENSHOTS = (Path(os.environ["SCREENSHOTS_DIR"]).resolve()
               if os.environ.get("SCREENSHOTS_DIR") else None)
MAX_SCREENSHOT_BYTES = 400_000  # larger whole pages are kept to what the window shows
# kedro-viz's settings as a returning user leaves them: no tour of new features popping up
# over the graph a few seconds in, no minimap over its lower corner.
KEDRO_VIZ_SETTINGS = """if (!localStorage.getItem("KedroViz")) {
    localStorage.setItem("KedroViz", JSON.stringify({showFeatureHints: false,
                                                     visible: {miniMap: false}}));
}"""


def screenshot(page, tmp_path: Path, name: str, full_page: bool = False) -> None:
    """``name`` in the test's folder and, with SCREENSHOTS_DIR, in the documentation's."""
    image = page.screenshot(full_page=full_page)
    if full_page and len(image) > MAX_SCREENSHOT_BYTES:
        image = page.screenshot()
    (tmp_path / name).write_bytes(image)
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / name).write_bytes(image)


def drawn(page) -> None:
    """Wait until kedro-viz has stopped showing its loading icon; then clear the view of
    its notice of a newer version (which it cannot name, offline) and of the pointer's
    highlight."""
    page.locator(".pipeline-loading-icon--visible").wait_for(state="hidden", timeout=TIMEOUT_MS)
    if (notice := page.get_by_role("button", name="Dismiss")).is_visible():
        notice.click()
    page.mouse.move(VIEWPORT["width"] // 5, VIEWPORT["height"] - 1)  # below the filters


def test_kedro_viz_draws_the_training_stages_and_the_last_run(browser, small_digits, tmp_path):
    # A project of its own, with a run from the command line: kedro-viz's hooks record
    # such runs of whole pipelines (in .viz/) for its workflow view.
    project = copy_project(tmp_path / "project")
    trained = kedro(project, "run", "--pipelines", "training", "--params",
                    f"raw_images_path={small_digits},training.epochs=1,"
                    "training.progress_bar=false")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    # All the pipelines, as `kedro viz run` shows them: its workflow view draws the
    # default one (training), and keeps loading for ever when that one is left out.
    command = [KEDRO, "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", "{port}"]
    with serving(command, project, tmp_path / "viz.log", "/api/main",
                 free_port_below_49152()) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.add_init_script(KEDRO_VIZ_SETTINGS)
        page.goto(f"{url}/?pid=training")
        page.locator(".pipeline-node").first.wait_for(timeout=TIMEOUT_MS)
        page.locator(".pipeline-layer-name").first.wait_for(timeout=TIMEOUT_MS)
        drawn(page)
        names = set(page.locator(".pipeline-node__text").all_text_contents())
        layers = page.locator(".pipeline-layer-name").all_text_contents()
        screenshot(page, tmp_path, "kedro_viz.png")
        page.goto(f"{url}/workflow")  # the run-status view
        notice = page.locator(".run-status-notification")
        notice.wait_for(timeout=TIMEOUT_MS)
        outcome = notice.inner_text()
        succeeded = page.locator(".pipeline-node--task.pipeline-node--status-success")
        succeeded.nth(len(STAGES) - 1).wait_for(timeout=TIMEOUT_MS)  # the graph is drawn
        drawn(page)
        succeeded = succeeded.count()
        screenshot(page, tmp_path, "kedro_viz_workflow.png")
    shown = {name.strip().lower().replace(" ", "_") for name in names}
    assert set(STAGES) <= shown, sorted(shown)
    # Drawn only when the layers form no cycle.
    assert {name.strip() for name in layers} == {
        "raw", "intermediate", "model_input", "models", "model_output", "reporting"}
    assert "completed successfully" in outcome
    assert succeeded == len(STAGES)


def settled(page) -> None:
    """Wait until the MLflow UI has filled in the parts it shows as busy placeholders."""
    page.wait_for_function("() => !document.querySelector('[aria-busy=true]')",
                           timeout=TIMEOUT_MS)


def test_mlflow_ui_lists_the_run_and_shows_its_curves_and_confusion_matrix(
    browser, finished_run, project, tmp_path
):
    _, run = finished_run
    command = [MLFLOW, "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    experiment = f"#/experiments/{run.info.experiment_id}"
    view = "workflowType=machine_learning"
    with serving(command, project, tmp_path / "ui.log", "/health", free_port()) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{url}/{experiment}?{view}")
        page.get_by_text(run.info.run_name).first.wait_for(timeout=TIMEOUT_MS)
        # The UI's chat assistant opens beside the runs; closed, the pages get the room.
        assistant = page.get_by_role("button", name="Close")
        if assistant.count() == 1:
            assistant.click()
        settled(page)
        screenshot(page, tmp_path, "mlflow_experiment.png")

        page.goto(f"{url}/{experiment}/runs/{run.info.run_id}?{view}")
        page.get_by_text("val_accuracy", exact=True).first.wait_for(timeout=TIMEOUT_MS)
        page.get_by_text("Test accuracy").first.wait_for(timeout=TIMEOUT_MS)  # description
        settled(page)
        screenshot(page, tmp_path, "mlflow_run.png", full_page=True)

        page.goto(f"{url}/{experiment}/runs/{run.info.run_id}/artifacts?{view}")
        page.get_by_text("plots", exact=True).first.click(timeout=TIMEOUT_MS)  # the folder
        page.get_by_text("confusion_matrix.png").first.click(timeout=TIMEOUT_MS)
        image = page.locator("img[alt='plots/confusion_matrix.png']").first
        image.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=image.element_handle(), timeout=TIMEOUT_MS)
        width = image.evaluate("img => img.naturalWidth")  # decoded by the browser
        screenshot(page, tmp_path, "mlflow_confusion_matrix.png")
    assert width > 500  # the figure as saved, not an icon
