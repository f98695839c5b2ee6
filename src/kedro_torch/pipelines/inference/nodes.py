"""Thin Kedro node: the trained model, its spec and label map from the catalog, one
folder of images in, a predictions table and a table of unreadable files out."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from kedro_torch.pytorch import engine
from kedro_torch.pytorch.config import InferenceConfig, parse
from kedro_torch.pytorch.inference import ImageClassifier, ModelSpec, image_files

logger = logging.getLogger(__name__)


def predict_folder(
    listing: pd.DataFrame,
    state_dict: dict[str, torch.Tensor],
    model_spec: dict[str, Any],
    label_map: dict[str, int],
    inference_params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every image under the folder; report the files that do not decode."""
    config = parse(InferenceConfig, inference_params, "inference")
    images = image_files(listing)
    classifier = ImageClassifier.from_state_dict(
        state_dict, ModelSpec.from_dict(model_spec), label_map, engine.resolve_device("auto")
    )
    predictions, failures = classifier.predict_paths(
        images["path"].tolist(), config.top_k, config.batch_size
    )
    relative = images["relative_path"]
    predictions.insert(1, "relative_path", relative[predictions.index].to_numpy())
    failures.insert(1, "relative_path", relative[failures.index].to_numpy())
    logger.info("Predicted %d images; %d could not be read%s", len(predictions), len(failures),
                " (see inference_failures)" if len(failures) else "")
    return predictions.reset_index(drop=True), failures.reset_index(drop=True)
