"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    # `kedro run --pipelines X` makes Kedro discover only X, so training may be absent.
    if "training" in pipelines:
        pipelines["__default__"] = pipelines["training"]
    return pipelines
