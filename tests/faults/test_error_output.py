"""What a failed `kedro run` prints, through the real command: an error the project does
not anticipate keeps its traceback, then one line naming the node it came from and the
log file, which holds the traceback too; the switch the errors page documents prints
the traceback of a bad parameter above its block. (A bad parameter's block, and its
traceback in the log file: tests/faults/test_bad_parameters.py.)"""

import os
import subprocess
from pathlib import Path

import pytest

from kedro_torch import errors
from tests.docs.blocks import block
from tests.e2e.conftest import KEDRO, copy_project, kedro

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def no_traceback_switch(monkeypatch):
    """As a user runs it, unless a test sets it."""
    monkeypatch.delenv(errors.TRACEBACK_SWITCH, raising=False)


def test_an_unexpected_error_keeps_its_traceback_then_names_its_node_and_the_log(tmp_path):
    """Evaluation alone, in a project where no training has run: Kedro's own error, that
    the model evaluation loads has no version yet."""
    project = copy_project(tmp_path / "project")
    result = kedro(project, "run", "--pipelines", "training", "--from-nodes", "evaluate")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback (most recent call last)" in output
    assert "DatasetError: trained_state_dict: Did not find any versions" in output
    assert output.rstrip().splitlines()[-1] == (
        "The run failed in node 'evaluate' on the error above, which the project does not "
        "anticipate. The full log, with the traceback, is in kedro-torch.log.")
    log = (project / "kedro-torch.log").read_text()
    failure = log[log.rindex("ERROR kedro_torch.errors: The run failed"):]
    assert "Traceback (most recent call last):" in failure
    assert "kedro.io.core.DatasetError: trained_state_dict: Did not find any versions" in failure


def test_the_documented_switch_prints_the_traceback_above_the_block(tmp_path):
    project = copy_project(tmp_path / "project")
    # As the page's shell block runs after `source .venv/bin/activate`.
    path = f"{Path(KEDRO).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["bash", "-c", block("errors-traceback")], cwd=project,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": path, "COLUMNS": "200"})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    traceback = output.index("Traceback (most recent call last)")
    refusal = output.index("Bad parameter: training.epochs must be int, got str: 'abc'")
    assert traceback < refusal
    assert "in _scalar" in output[traceback:refusal]  # the frame that raised it
    assert output.rstrip().splitlines()[-1].endswith(
        "KEDRO_TORCH_TRACEBACK=1 prints the traceback here.")
