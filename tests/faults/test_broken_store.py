"""`kedro run` on an MLflow store that cannot be read: a damaged ``mlflow.db`` stops
the run before anything runs, naming the file and what to do, where SQLAlchemy would
end hundreds of lines with ``file is not a database``."""

import os

import pytest

from tests.e2e.conftest import copy_project, kedro

pytestmark = pytest.mark.e2e


def test_a_corrupt_mlflow_db_is_named_with_what_to_do(small_digits, tmp_path):
    project = copy_project(tmp_path / "project")
    store = project / "mlflow.db"
    store.write_bytes(os.urandom(50_000))
    result = kedro(project, "run", "--pipelines", "training",
                   "--params", f"raw_images_path={small_digits}", timeout=300)
    output = " ".join((result.stdout + result.stderr).split())  # as one line, unwrapped
    assert result.returncode != 0
    assert f"The MLflow store {store} (from server.mlflow_tracking_uri in mlflow.yml, " \
           "Kedro environment 'local') cannot be read" in output
    assert "file is not a database" in output
    assert f"mv {store} {store}.broken" in output
    assert not (project / "data" / "02_intermediate").exists()  # nothing ran
