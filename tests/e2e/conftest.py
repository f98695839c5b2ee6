"""A throw-away copy of the project (pyproject.toml, conf/, empty data/) per test
session, so whole runs write their data and MLflow store there, not here."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

KEDRO = str(Path(sys.executable).with_name("kedro"))


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # Kedro wants the source folder; the package is installed
    (root / "data").mkdir()
    return root


def kedro(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the kedro CLI in ``project`` as a user would; output captured as text."""
    return subprocess.run(
        [KEDRO, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )
