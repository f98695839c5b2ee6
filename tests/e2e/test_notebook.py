"""notebooks/compare_runs.ipynb runs top to bottom against runs this session made."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.e2e


def test_compare_runs_notebook_runs_top_to_bottom(finished_run, project, monkeypatch):
    _, run = finished_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "compare_runs.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(project)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    texts = "\n".join(output.get("data", {}).get("text/plain", "") for output in outputs)
    assert run.info.run_name in texts  # the runs table
    assert "champion" in texts  # the registered versions
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 2  # validation curves; test accuracy against the parameters
