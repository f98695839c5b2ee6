"""`kedro viz build` renders the training pipeline with its six stages and layers."""

import json

from tests.e2e.conftest import kedro


def test_viz_build_shows_the_six_stages(project):
    result = kedro(project, "viz", "build")
    assert result.returncode == 0, result.stdout + result.stderr
    graph = json.loads((project / "build" / "api" / "main").read_text())
    tasks = [node["name"] for node in graph["nodes"] if node["type"] == "task"]
    assert tasks == ["ingest", "transform", "build_dataloaders", "build_model", "train",
                     "evaluate"]
    layers = {node.get("layer") for node in graph["nodes"] if node["type"] == "data"}
    assert layers == {"raw", "intermediate", "model_input", "models", "reporting"}
