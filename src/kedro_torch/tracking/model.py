"""The trained model as an MLflow model that takes raw inputs (image files, or a
table's rows), and its place in the MLflow model registry.

The model is a ``mlflow.pyfunc.PythonModel`` whose artifacts are the weights
(a ``state_dict``, loaded with ``weights_only=True``) and the JSON that rebuilds it:
the :class:`~kedro_torch.pytorch.inference.ModelSpec` and label map of an image
classifier, or the :class:`~kedro_torch.pytorch.table_inference.TableModelSpec` of a
table model. It is logged as code (MLflow's "models from code",
:mod:`kedro_torch.tracking.model_code`), not pickled, and the ``kedro_torch`` package
travels with it, so a caller needs nothing but the environment the model declares.
Its signature and input example tell ``mlflow models serve`` what a request holds
(the bytes of image files, which a REST client sends base64-encoded; a table's
feature columns) and show the model's inputs and outputs in the UI.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import AnyType, Array
from PIL import Image

from kedro_torch.pytorch.checkpoints import load_weights, state_dict_from
from kedro_torch.pytorch.detection_inference import DetectionSpec, Detector
from kedro_torch.pytorch.inference import ImageClassifier, ModelSpec
from kedro_torch.pytorch.segmentation import mask_png
from kedro_torch.pytorch.segmentation_inference import SegmentationSpec, Segmenter
from kedro_torch.pytorch.table_inference import TableModelSpec, TablePredictor
from kedro_torch.pytorch.tables import TablePreprocessing

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # kedro_torch, carried inside the model
REQUIREMENTS = ("torch", "torchvision", "mlflow", "pillow", "pandas", "numpy", "fsspec",
                "torchmetrics", "pycocotools")  # the last two: the package imports its detector
# MLflow's column type for each of TablePreprocessing's input types. Over HTTP MLflow
# refuses a null in a "long" column and reads it as False in a "boolean" one, so those
# (categorical) columns take any type: the preprocessing reads their values as strings,
# a null as unknown, as training did.
TABLE_INPUT_TYPES = {"double": DataType.double, "string": DataType.string,
                     "long": AnyType(), "boolean": AnyType()}
EXAMPLE_ROWS = 3


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a table of images, one per row, each as a ``path`` (any fsspec
    URL, read where the model runs) or an ``image`` (the file's bytes; base64 in a
    JSON request to ``mlflow models serve``, which decodes it by the signature).

    Returns one row per input, in input order: ``path`` (empty for bytes), ``label``
    and ``probability`` of the best class, ``top1_label`` ... ``topK_probability``
    and ``error`` (why a file could not be read; such a row has no label).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = context.artifacts
        spec = ModelSpec.from_dict(read_json(artifacts, "model_spec"))
        self._classifier = ImageClassifier.from_state_dict(
            read_state_dict(artifacts), spec, read_json(artifacts, "label_map")
        )
        self._top_k = int(context.model_config["top_k"])
        self._batch_size = int(context.model_config["batch_size"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        files = image_files(model_input)  # MLflow has checked it against the signature
        predictions, failures = self._classifier.predict_paths(
            files, self._top_k, self._batch_size
        )
        predictions["error"] = None
        table = pd.concat([predictions, failures]) if len(failures) else predictions
        return table.sort_index().reset_index(drop=True)


class TableModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a table of the feature columns the model was trained on (more
    columns are ignored) and returns :meth:`TablePredictor.predict`'s table: ``label``,
    ``probability`` and ``probability_<class>`` per row, or ``value``.

    MLflow refuses a request without a feature column, naming it, by the signature; a
    missing value or an unseen category gets a prediction, as in training.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        spec = TableModelSpec.from_dict(read_json(context.artifacts, "model_spec"))
        self._predictor = TablePredictor.from_state_dict(read_state_dict(context.artifacts),
                                                         spec)
        self._batch_size = int(context.model_config["batch_size"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self._predictor.predict(model_input, self._batch_size).reset_index(drop=True)


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a table of images as :class:`ImageClassifierModel` does (a
    ``path`` or the ``image`` bytes per row) and returns, per row in input order, the
    ``mask`` as a PNG of class indices at the image's own size (base64 in a JSON
    response), its ``width`` and ``height``, ``share_<class>`` of its pixels, and
    ``error`` (why a file could not be read; such a row has no mask)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        spec = SegmentationSpec.from_dict(read_json(context.artifacts, "model_spec"))
        self._segmenter = Segmenter.from_state_dict(
            read_state_dict(context.artifacts), spec,
            batch_size=int(context.model_config["batch_size"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        files = image_files(model_input)
        rows = []
        for file, mask in zip(files, self._segmenter.predict_each(files), strict=True):
            path = file if isinstance(file, str) else ""
            if isinstance(mask, str):  # one unreadable file is that row's error
                rows.append({"path": path, "error": mask})
                continue
            rows.append({"path": path, "mask": mask_png(mask, self._segmenter.spec.palette()),
                         "width": mask.shape[1], "height": mask.shape[0],
                         **{f"share_{name}": share
                            for name, share in self._segmenter.shares(mask).items()},
                         "error": None})
        return pd.DataFrame(rows, columns=[
            column.name for column in segmentation_signature(self._segmenter.spec).outputs])


class DetectionModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a table of images as :class:`ImageClassifierModel` does (a
    ``path`` or the ``image`` bytes per row) and returns, per row in input order, the
    ``boxes`` (``[x_min, y_min, x_max, y_max]`` in the image's own pixels), their
    ``labels`` and ``scores`` (those at least as sure as the training's
    ``data.detection.score_threshold``), and ``error`` (why a file could not be read)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        spec = DetectionSpec.from_dict(read_json(context.artifacts, "model_spec"))
        self._detector = Detector.from_state_dict(
            read_state_dict(context.artifacts), spec,
            batch_size=int(context.model_config["batch_size"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        files = image_files(model_input)
        rows = []
        for file, found in zip(files, self._detector.predict_each(files), strict=True):
            path = file if isinstance(file, str) else ""
            if isinstance(found, str):  # one unreadable file is that row's error
                rows.append({"path": path, "error": found})
                continue
            rows.append({"path": path, "boxes": found["boxes"].tolist(),
                         "labels": [self._detector.spec.classes[label - 1]
                                    for label in found["labels"].tolist()],
                         "scores": found["scores"].tolist(), "error": None})
        return pd.DataFrame(rows, columns=[
            column.name for column in detection_signature().outputs])


# What model_code.py builds, by the "kind" in the logged model's model_config.
MODEL_KINDS = {"image": ImageClassifierModel, "table": TableModel,
               "segmentation": SegmentationModel, "detection": DetectionModel}


def read_json(artifacts: Mapping[str, str], name: str) -> dict:
    return json.loads(Path(artifacts[name]).read_text())


def read_state_dict(artifacts: Mapping[str, str]) -> dict[str, torch.Tensor]:
    with open(artifacts["state_dict"], "rb") as file:
        return state_dict_from(load_weights(file, "state_dict"), "state_dict")


def image_files(table: pd.DataFrame) -> list[str | bytes]:
    """One file per row: its ``image`` bytes where given, else its ``path``.

    A row with neither is passed on as an empty path, which becomes that row's error.
    MLflow drops, before ``predict`` sees them, the inputs its signature does not name:
    a plain list of paths (its column ``0``) arrives as a table with no column and no
    row, which is refused with the one-line fix.
    """
    if "path" not in table and "image" not in table:
        got = (f"got columns {list(table.columns)}" if len(table.columns) else
               "got no column: MLflow leaves out any input the model's signature does not "
               "name, a plain list of paths among them")
        raise ValueError(
            "The model takes a table with one image per row, in a 'path' column (image "
            f"paths or URLs) or an 'image' column (the files' bytes); {got}. For a list "
            "of paths, pass pandas.DataFrame({'path': paths}).")
    missing = pd.Series([None] * len(table), index=table.index, dtype=object)
    images, paths = table.get("image", missing), table.get("path", missing)
    return [bytes(image) if isinstance(image, (bytes, bytearray)) else
            path if isinstance(path, str) else ""
            for image, path in zip(images, paths, strict=True)]


# What a model of images takes: a path or URL, or the file's bytes (base64 in JSON).
IMAGE_INPUTS = Schema([ColSpec(DataType.string, "path", required=False),
                       ColSpec(DataType.binary, "image", required=False)])


def signature(classes: int, top_k: int) -> ModelSignature:
    """Inputs: ``path`` (string) or ``image`` (binary) per row; outputs as ``predict``'s.

    Declared rather than inferred, so the model server knows to base64-decode
    ``image`` and the MLflow UI shows the inputs and outputs.
    """
    outputs = [ColSpec(DataType.string, "path", required=False),
               ColSpec(DataType.string, "label", required=False),
               ColSpec(DataType.double, "probability", required=False)]
    for rank in range(1, min(top_k, classes) + 1):
        outputs += [ColSpec(DataType.string, f"top{rank}_label", required=False),
                    ColSpec(DataType.double, f"top{rank}_probability", required=False)]
    outputs.append(ColSpec(DataType.string, "error", required=False))
    return ModelSignature(inputs=IMAGE_INPUTS, outputs=Schema(outputs))


def input_example(spec: ModelSpec | SegmentationSpec | DetectionSpec) -> pd.DataFrame:
    """A blank PNG of the model's input size, as the ``image`` column carries it."""
    mode = "L" if spec.channels == 1 else "RGB"
    buffer = io.BytesIO()
    Image.new(mode, (spec.image_size, spec.image_size), "gray").save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def segmentation_signature(spec: SegmentationSpec) -> ModelSignature:
    """Inputs as an image classifier's; outputs as :class:`SegmentationModel`'s."""
    outputs = [ColSpec(DataType.string, "path", required=False),
               ColSpec(DataType.binary, "mask", required=False),
               ColSpec(DataType.long, "width", required=False),
               ColSpec(DataType.long, "height", required=False),
               *(ColSpec(DataType.double, f"share_{name}", required=False)
                 for name in spec.classes),
               ColSpec(DataType.string, "error", required=False)]
    return ModelSignature(inputs=IMAGE_INPUTS, outputs=Schema(outputs))


def detection_signature() -> ModelSignature:
    """Inputs as an image classifier's; outputs as :class:`DetectionModel`'s."""
    outputs = [ColSpec(DataType.string, "path", required=False),
               ColSpec(Array(Array(DataType.double)), "boxes", required=False),
               ColSpec(Array(DataType.string), "labels", required=False),
               ColSpec(Array(DataType.double), "scores", required=False),
               ColSpec(DataType.string, "error", required=False)]
    return ModelSignature(inputs=IMAGE_INPUTS, outputs=Schema(outputs))


def table_signature(preprocessing: TablePreprocessing) -> ModelSignature:
    """Inputs: the feature columns, each required, so that MLflow refuses a request
    without one, naming it; outputs as :class:`TableModel`'s."""
    inputs = Schema([ColSpec(TABLE_INPUT_TYPES[preprocessing.input_types[column]], column)
                     for column in preprocessing.feature_names])
    if preprocessing.kind == "regression":
        outputs = [ColSpec(DataType.double, "value")]
    else:
        outputs = [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "probability"),
                   *(ColSpec(DataType.double, f"probability_{name}")
                     for name in preprocessing.classes)]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def table_example(rows: pd.DataFrame, preprocessing: TablePreprocessing) -> pd.DataFrame:
    """A few of ``rows``' feature columns, numbers as the doubles the signature declares
    (what is not a number, missing); rows whose values are all there come first, so that
    the example shows every column."""
    features = rows[preprocessing.feature_names]
    complete = features.notna().all(axis=1)
    chosen = pd.concat([features[complete], features[~complete]]).head(EXAMPLE_ROWS)
    numbers = {column: pd.to_numeric(chosen[column], errors="coerce").astype("float64")
               for column in preprocessing.numeric}
    return chosen.assign(**numbers).reset_index(drop=True)


def log_image_classifier(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    label_map: Mapping[str, int],
    top_k: int,
    batch_size: int,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the image classifier to the active run; register it when a name is given."""
    return log_pyfunc(
        name, state_dict, {"model_spec": spec.to_dict(), "label_map": dict(label_map)},
        {"kind": "image", "top_k": top_k, "batch_size": batch_size},
        signature(len(label_map), top_k), input_example(spec), registered_model_name,
        own_code(spec.model_name),
    )


def log_image_model(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    spec: SegmentationSpec | DetectionSpec,
    batch_size: int,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the segmentation model or detector to the active run; register it when a
    name is given."""
    kind, model_signature = (("detection", detection_signature())
                             if isinstance(spec, DetectionSpec)
                             else ("segmentation", segmentation_signature(spec)))
    return log_pyfunc(
        name, state_dict, {"model_spec": spec.to_dict()},
        {"kind": kind, "batch_size": batch_size}, model_signature,
        input_example(spec), registered_model_name, own_code(spec.model_name),
    )


def log_table_model(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    spec: TableModelSpec,
    input_example: pd.DataFrame,
    batch_size: int,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the table model to the active run; register it when a name is given.

    ``input_example``: real rows of the training table; a few of their feature columns
    become the example.
    """
    preprocessing = TablePreprocessing.from_dict(spec.preprocessing)
    return log_pyfunc(
        name, state_dict, {"model_spec": spec.to_dict()},
        {"kind": "table", "batch_size": batch_size}, table_signature(preprocessing),
        table_example(input_example, preprocessing), registered_model_name,
        own_code(spec.model_name),
    )


def log_pyfunc(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    documents: Mapping[str, Any],
    model_config: Mapping[str, Any],
    model_signature: ModelSignature,
    example: pd.DataFrame,
    registered_model_name: str | None,
    code: Sequence[str] = (),
) -> ModelInfo:
    """Log the weights and ``documents`` (each a JSON artifact of its name) as a model
    from code, which ``model_config["kind"]`` chooses in :data:`MODEL_KINDS`; ``code``
    travels with the ``kedro_torch`` package (a model class of the user's own).

    pip requirements are given, not inferred: inferring them imports the model
    in a subprocess, which takes longer than the whole evaluation. MLflow draws a
    progress bar for each of the model's small files it reads back; a user's own
    setting of ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is kept.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as folder:
        artifacts = {"state_dict": Path(folder, "state_dict.pt")}
        torch.save(dict(state_dict), artifacts["state_dict"])
        for key, document in documents.items():
            artifacts[key] = Path(folder, f"{key}.json")
            artifacts[key].write_text(json.dumps(document, indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={key: str(path) for key, path in artifacts.items()},
            code_paths=[str(PACKAGE_DIR), *code],
            pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
            model_config=dict(model_config),
            signature=model_signature,
            input_example=example,
            registered_model_name=registered_model_name,
        )


def own_code(model_name: str) -> list[str]:
    """The package (or module file) of a model given by import path,
    ``package.module:Class``, for the MLflow model to carry: where the model is served,
    that code is not installed. An installed package (in site-packages) is a
    requirement, not code to copy; project models need nothing."""
    if ":" not in model_name:
        return []
    top = model_name.split(":", maxsplit=1)[0].split(".", maxsplit=1)[0]
    module = importlib.import_module(top)
    location = Path(module.__file__).resolve()
    if "site-packages" in location.parts or top == "kedro_torch":
        return []
    return [str(location.parent if location.name == "__init__.py" else location)]


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
