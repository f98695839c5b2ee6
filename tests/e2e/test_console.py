"""What a user sees of a `kedro run` in a plain shell: no third-party warnings, log
lines unwrapped when written to a file, a closing summary saying where the results
are, and no file of the project changed by telemetry."""

import os
import subprocess
from importlib.metadata import entry_points

import pytest

from tests.e2e.conftest import KEDRO, copy_project

pytestmark = pytest.mark.e2e

WARNINGS = ("UserWarning", "DeprecationWarning", "FutureWarning")


def test_a_run_shows_no_warning_and_ends_with_where_its_results_are(tmp_path, small_digits):
    if not any(point.name == "kedro_torch" for point in entry_points(group="kedro.init")):
        pytest.skip("the installed kedro_torch predates its kedro.init plugin "
                    "(kedro_torch.console): reinstall it (make install)")
    project = copy_project(tmp_path)  # its own: the shared one's runs are counted elsewhere
    pyproject = (project / "pyproject.toml").read_text()
    # As in a shell without the Makefile's variables, and output to a file, not a terminal.
    env = {key: value for key, value in os.environ.items()
           if key not in {"KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK", "COLUMNS"}}
    result = subprocess.run(
        [KEDRO, "run", "--pipelines", "training", "--params",
         f"raw_images_path={small_digits},training.epochs=1,training.progress_bar=false"],
        cwd=project, capture_output=True, text=True, timeout=300, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if any(w in line for w in WARNINGS)]
    # A log line longer than 80 columns stays whole in a file.
    assert ("Using synchronous mode for loading and saving data. Use the --async flag for "
            "potential performance gains.") in output
    summary = result.stdout.rstrip().splitlines()[-7:]
    assert summary[0].startswith("Run small_cnn-AdamW-lr0.003-1ep-")
    assert summary[1].split() == ["test", "accuracy", summary[1].split()[-1]]
    assert summary[2].split()[:4] == ["see", "it", "make", "ui,"]
    assert "workflowType=machine_learning" in summary[2]
    assert summary[3].split() == ["pipeline", "make", "viz"]
    assert summary[4].split()[0] == "artifacts"
    assert summary[5].split()[0] == "model"
    assert summary[5].split()[1].startswith("models:/kedro_torch/")
    assert summary[6].startswith("  files          data/02_intermediate, data/05_model_input, "
                                  "data/06_models")
    assert (project / "pyproject.toml").read_text() == pyproject  # telemetry wrote nothing
