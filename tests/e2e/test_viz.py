"""`kedro viz build` renders the training pipeline's stages and layers and, after a
run, previews of the evaluation outputs."""

import json

import pytest

from tests.e2e.conftest import kedro

pytestmark = pytest.mark.e2e

# evaluation_plots is a folder of PNGs, which kedro-viz's preview of a figure (one
# image file) cannot show.
EVALUATION_PREVIEWS = {
    "evaluation_report": "JSONPreview",
    "test_predictions": "TablePreview",
}


def test_viz_build_shows_the_stages_and_previews_the_evaluation(finished_run, project):
    result = kedro(project, "viz", "build", "--include-previews")
    assert result.returncode == 0, result.stdout + result.stderr
    api = project / "build" / "api"
    graph = json.loads((api / "main").read_text())
    tasks = [node["name"] for node in graph["nodes"] if node["type"] == "task"]
    assert tasks == ["ingest", "transform", "build_dataloaders", "build_model", "train",
                     "evaluate", "package_model"]
    data = {node["name"]: node for node in graph["nodes"] if node["type"] == "data"}
    assert {node.get("layer") for node in data.values()} == {
        "raw", "intermediate", "model_input", "models", "model_output", "reporting"
    }
    for name, preview_type in EVALUATION_PREVIEWS.items():
        details = json.loads((api / "nodes" / data[name]["id"]).read_text())
        assert details["preview_type"] == preview_type, name
        assert details["preview"], name
