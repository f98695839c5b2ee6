"""Bad data given to a real `kedro run --pipelines training`, as a user would give it:
judged before MLflow opens a run, and every problem named in one short block, with
exit status 1 and no traceback; the findings saved as the data-quality report.

The table of the issue goes through the `kedro` command; the folders through a
KedroSession in this process (seconds cheaper each), printed by the function the
command prints errors with."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from mlflow import MlflowClient
from mlflow.entities import ViewType

from kedro_torch import errors
from kedro_torch.pytorch.data import DataError
from tests.e2e.conftest import bootstrapped, kedro

# The end-to-end tests' project copy, under a name of its own: a copy for this module.
from tests.e2e.conftest import project as bad_data_project  # noqa: F401
from tests.image_files import image_folder, write_text_as_jpeg
from tests.servers import free_port

pytestmark = pytest.mark.e2e

MAX_LINES = 25  # Kedro's start-up lines, the block of four rows, the advice and the log file


@pytest.fixture(scope="module")
def project(request) -> Path:
    return bootstrapped(request, "bad_data_project")


def mlflow_runs(project: Path) -> int:
    """The runs in the project's MLflow store, deleted ones too (none without a store)."""
    if not (project / "mlflow.db").exists():
        return 0
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
    return len(client.search_runs(experiments, run_view_type=ViewType.ALL)) if experiments else 0


def reports(project: Path) -> list[Path]:
    return sorted((project / "data" / "08_reporting").glob("data_quality_report.json/*/*"))


def test_a_table_with_four_bad_rows_is_refused_in_one_run_naming_them_all(project, tmp_path):
    """A missing file, a file that is not an image, a URL nobody answers and an empty
    label, among 20 good rows."""
    image_folder(tmp_path / "images", {"a": 10, "b": 10})
    rows = [(f"images/{label}/{i:04d}.png", label) for label in "ab" for i in range(10)]
    write_text_as_jpeg(tmp_path / "images" / "b" / "note.jpg")
    url = f"http://127.0.0.1:{free_port()}/a/0042.png"
    rows[2:2] = [("images/a/gone.png", "a")]  # row 3
    rows[10:10] = [("images/b/note.jpg", "b")]  # row 11
    rows += [(url, "a"), ("images/a/0001.png", "")]  # rows 23 and 24
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "labels.csv", index=False)
    runs, earlier = mlflow_runs(project), reports(project)

    result = kedro(project, "run", "--pipelines", "training", "--params",
                   f"data.source=manifest,raw_manifest_path={tmp_path / 'labels.csv'}")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "Running node" not in output
    assert len(output.splitlines()) <= MAX_LINES, output
    block = output[output.index("Error: "):]
    assert block.startswith(f"Error: the image table '{tmp_path / 'labels.csv'}' cannot be "
                            "used: 4 of 24 rows have problems:\n")
    named = [line.strip() for line in block.splitlines() if line.strip().startswith("- row")]
    assert named[0] == "- row 3 'images/a/gone.png': no file at this path"
    assert named[1] == "- row 11 'images/b/note.jpg': not an image: PIL cannot identify it"
    assert named[2].startswith(f"- row 23 '{url}': cannot read: Cannot connect to host "
                               f"127.0.0.1:")
    assert named[3] == ("- row 24 'images/a/0001.png': no label in column 'label' "
                        "(data.manifest.label_column)")
    assert len(named) == 4
    assert mlflow_runs(project) == runs == 0
    (report,) = sorted(set(reports(project)) - set(earlier))
    assert f"The data-quality report lists every problem: {report.relative_to(project)}" \
        in " ".join(block.split())
    found = json.loads(report.read_text())
    assert [row["row"] for row in found["bad_files"]] == [3, 11, 23, 24]
    assert found["images_used"] == 0


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, "is empty: it holds no image files"),
    ({"a": 1, "b": 1}, "2 classes have too few images for data.split (at least 7 each"),
], ids=["empty folder", "two classes of one image"])
def test_a_folder_the_run_cannot_use_is_refused_before_mlflow(project, tmp_path, capsys,
                                                              counts, expected):
    folder = image_folder(tmp_path / "images", counts)
    folder.mkdir(exist_ok=True)
    runs, earlier = mlflow_runs(project), reports(project)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(DataError) as refusal:
        patch.chdir(project)  # the catalog's relative paths resolve from here
        with KedroSession.create(project_path=project,
                                 runtime_params={"raw_images_path": str(folder)}) as session:
            session.run(pipeline_names=["training"])
    assert expected in str(refusal.value)
    assert mlflow_runs(project) == runs == 0
    (report,) = sorted(set(reports(project)) - set(earlier))
    assert json.loads(report.read_text())["refused"] in str(refusal.value)
    capsys.readouterr()
    assert errors.report(refusal.value) == 1
    printed = capsys.readouterr().err
    assert printed.startswith(f"Error: the image folder {str(folder)!r} ")
    assert "Traceback" not in printed
