"""A throw-away copy of the project (pyproject.toml, conf/, empty data/) per test
session, so whole runs write their data and MLflow store there, not here; one
training run in it that the end-to-end tests share; and the system's Chromium for the
tests that look at pages as a person would."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import mlflow
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.conftest import PROJECT_ROOT

KEDRO = str(Path(sys.executable).with_name("kedro"))
EPOCHS = 6  # of the shared training run
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless, and nothing the browser would fetch on its own: the tests run without network.
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


def copy_project(root: Path) -> Path:
    """The project's configuration in ``root``, with empty data and no MLflow store."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    shutil.copy(PROJECT_ROOT / ".telemetry", root)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # Kedro wants the source folder; the package is installed
    (root / "data").mkdir()
    return root


def bootstrapped(request: pytest.FixtureRequest, fixture: str) -> Path:
    """The project copy of ``fixture`` (an alias a module imported the ``project``
    fixture under: a copy of its own), set up for KedroSessions in this process.
    Requested by name: a parameter named like the imported fixture would shadow it."""
    copy = request.getfixturevalue(fixture)
    bootstrap_project(copy)
    return copy


def kedro(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the kedro CLI in ``project`` as a user would; output captured as text."""
    return subprocess.run(
        [KEDRO, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def run_pipeline(project: Path, pipeline: str, runtime_params: dict) -> None:
    """A `kedro run` in this process, through a KedroSession (faster than a subprocess)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)  # the catalog's relative paths resolve from here
        bootstrap_project(project)
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline])


def latest_version(folder: Path) -> Path:
    """The file of the newest version of a versioned catalog entry."""
    return sorted(folder.glob(f"*/{folder.name}"))[-1]


def latest_run(project: Path) -> tuple[MlflowClient, Run]:
    """The project's MLflow client and its most recent run."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kedro_torch")
    (run,) = client.search_runs([experiment.experiment_id],
                                order_by=["attributes.start_time DESC"], max_results=1)
    return client, run


@pytest.fixture(scope="session")
def finished_run(project, small_digits) -> tuple[MlflowClient, Run]:
    """One training run on 200 digits, shared by every test that needs a trained model:
    its MLflow client and run."""
    run_pipeline(project, "training", {
        "raw_images_path": str(small_digits),
        "data": {"batch_size": 16},
        "training": {"epochs": EPOCHS, "progress_bar": False},
        # Sample often enough that a run of a few seconds records system metrics.
        "mlflow": {"system_metrics_interval": 0.5},
    })
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return latest_run(project)


def missing(reason: str) -> NoReturn:
    """Skip, saying what is missing; but fail in CI (``CI=true``), whose set-up installs
    the browser: there a skip would leave the pages unchecked without anyone noticing."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's ``chromium`` package) driven by Playwright, which
    downloads no browser of its own."""
    executable = next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:
        missing("no Chromium installed (apt-get install chromium): the pages are not "
                "checked in a browser")
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415  (may be absent)
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
