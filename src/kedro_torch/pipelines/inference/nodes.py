"""Thin Kedro node: the trained model, its spec and label map from the catalog, new
samples in (a folder of images, or a table), a predictions table and a table of the
samples that could not be read out."""

from __future__ import annotations

import io
import logging
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
import torch
from PIL import Image

from kedro_torch.pytorch import engine, tasks
from kedro_torch.pytorch.config import InferenceConfig, ParameterError, parse
from kedro_torch.pytorch.detection_inference import DetectionSpec, coco_results

logger = logging.getLogger(__name__)


def predict(
    listing: pd.DataFrame,
    table: pd.DataFrame | None,
    state_dict: dict[str, torch.Tensor],
    model_spec: dict[str, Any],
    label_map: dict[str, int],
    inference_params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Image.Image], list[dict[str, Any]]]:
    """Predict every image under the folder, or every row of the table, as the trained
    model's task reads its samples; report what could not be read. Masks and a COCO
    results file are outputs of their own (empty but for segmentation and detection)."""
    spec = tasks.load_spec(model_spec)
    task = tasks.create(spec.task, getattr(spec, "preprocessing", None))
    samples = table if "table" in task.sources else listing
    if samples is None:
        raise ParameterError(
            f"the trained model ({spec.task}) predicts a table, but the catalog entry "
            "'inference_table' loaded nothing: pass it at run time (--params "
            "inference_table_path=table.csv) or set the entry in conf/local/catalog.yml")
    config = parse(InferenceConfig, inference_params, "inference")
    predictions, failures = task.predict(state_dict, spec, label_map, samples, config,
                                         engine.resolve_device("auto"))
    logger.info("Predicted %d samples; %d could not be read%s", len(predictions),
                len(failures), " (see inference_failures)" if len(failures) else "")
    return predictions, failures, mask_files(predictions), results_file(predictions, spec)


def results_file(predictions: pd.DataFrame, spec: Any) -> list[dict[str, Any]]:
    """A detector's detections as a COCO results file; empty for other tasks."""
    return coco_results(predictions, spec.classes) if isinstance(spec, DetectionSpec) else []


def mask_files(predictions: pd.DataFrame) -> dict[str, Image.Image]:
    """A segmentation model's masks (its ``mask_png`` column, taken out of the table)
    as images named as theirs; none for other tasks."""
    if "mask_png" not in predictions:
        return {}
    return {str(PurePosixPath(name).with_suffix("")): Image.open(io.BytesIO(png))
            for name, png in zip(predictions["relative_path"], predictions.pop("mask_png"),
                                 strict=True)}
