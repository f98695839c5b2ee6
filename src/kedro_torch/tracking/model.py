"""The trained classifier as an MLflow model that takes raw images, and its place in
the MLflow model registry.

The model is a ``mlflow.pyfunc.PythonModel`` whose artifacts are the weights
(a ``state_dict``, loaded with ``weights_only=True``), the label map and the
:class:`~kedro_torch.pytorch.inference.ModelSpec`. It is logged as code (MLflow's "models
from code", :mod:`kedro_torch.tracking.model_code`), not pickled, and the
``kedro_torch`` package travels with it, so a caller needs nothing but the
environment the model declares.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.models.model import ModelInfo

from kedro_torch.pytorch.checkpoints import load_weights, state_dict_from
from kedro_torch.pytorch.inference import ImageClassifier, ModelSpec

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # kedro_torch, carried inside the model
REQUIREMENTS = ("torch", "torchvision", "mlflow", "pillow", "pandas", "numpy", "fsspec")


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes image paths or uint8 pixel arrays; returns one row per input.

    Accepted inputs: a list, a pandas Series, a DataFrame (its ``path`` or ``image``
    column, else its first), or a numpy array: of strings (paths, any fsspec URL)
    or of pixels, shaped (N, H, W) or (N, H, W, C). Columns: ``label`` and
    ``probability`` of the best class, ``top1_label`` ... ``topK_probability``; for
    paths also ``path`` and ``error`` (why a file could not be read; such a row
    has no label).
    """

    # Paths or pixel arrays in many containers: no type hint MLflow can validate
    # covers them, so opt out of its type-hint validation (as MLflow's own models do).
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = context.artifacts
        spec = ModelSpec.from_dict(json.loads(Path(artifacts["model_spec"]).read_text()))
        label_map = json.loads(Path(artifacts["label_map"]).read_text())
        with open(artifacts["state_dict"], "rb") as file:
            state_dict = state_dict_from(load_weights(file, "state_dict"), "state_dict")
        self._classifier = ImageClassifier.from_state_dict(state_dict, spec, label_map)
        self._top_k = int(context.model_config["top_k"])
        self._batch_size = int(context.model_config["batch_size"])

    def predict(self, context, model_input, params=None):  # untyped: see above
        inputs = as_input_list(model_input)
        if inputs and all(isinstance(item, str) for item in inputs):
            predictions, failures = self._classifier.predict_paths(
                inputs, self._top_k, self._batch_size
            )
            predictions["error"] = None
            return pd.concat([predictions, failures]).sort_index().reset_index(drop=True)
        return self._classifier.predict_arrays(inputs, self._top_k, self._batch_size)


def as_input_list(model_input: Any) -> list:
    """Paths or pixel arrays as a plain list, whatever container they came in."""
    if isinstance(model_input, pd.DataFrame):
        column = next((c for c in ("path", "image") if c in model_input), model_input.columns[0])
        return model_input[column].tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, np.ndarray):
        if model_input.dtype.kind in "US":
            return [str(item) for item in model_input.ravel()]
        if model_input.dtype.kind == "O":
            return list(model_input.ravel())
        return list(model_input) if model_input.ndim >= 3 else [model_input]
    if isinstance(model_input, str):
        return [model_input]
    return list(model_input)


def log_image_classifier(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    label_map: Mapping[str, int],
    top_k: int,
    batch_size: int,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the pyfunc model to the active run; register it when a name is given.

    pip requirements are given, not inferred: inferring them imports the model
    in a subprocess, which takes longer than the whole evaluation.
    """
    with tempfile.TemporaryDirectory() as folder:
        artifacts = {
            "state_dict": Path(folder, "state_dict.pt"),
            "model_spec": Path(folder, "model_spec.json"),
            "label_map": Path(folder, "label_map.json"),
        }
        torch.save(dict(state_dict), artifacts["state_dict"])
        artifacts["model_spec"].write_text(json.dumps(spec.to_dict(), indent=2))
        artifacts["label_map"].write_text(json.dumps(dict(label_map), indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={key: str(path) for key, path in artifacts.items()},
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
            model_config={"top_k": top_k, "batch_size": batch_size},
            registered_model_name=registered_model_name,
        )


def promote_if_better(
    client: MlflowClient,
    model_name: str,
    model_version: str,
    metric: str,
    value: float,
    alias: str = "champion",
) -> bool:
    """Point ``alias`` at the new version only if its ``metric`` beats the current
    holder's (higher is better), read from the run that logged that version.

    A champion whose run lacks the metric is replaced: it cannot be compared.
    """
    holder = client.get_registered_model(model_name).aliases.get(alias)
    if holder is not None:
        run_id = client.get_model_version(model_name, holder).run_id
        best = client.get_run(run_id).data.metrics.get(metric) if run_id else None
        if best is not None and value <= best:
            logger.info("'%s' stays on %s version %s: version %s has %s %.4f, not above %.4f",
                        alias, model_name, holder, model_version, metric, value, best)
            return False
    client.set_registered_model_alias(model_name, alias, model_version)
    logger.info("%s version %s is now '%s' (%s %.4f)", model_name, model_version, alias,
                metric, value)
    return True
