"""The tuning pipeline's node: parameters to a study of trials that each call the
plain training API (:mod:`kedro_torch.pytorch.tuning`), each trial an MLflow run
nested under the kedro run's; the study's summary to the catalog."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from kedro_torch.pytorch import tuning
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import TuningConfig, parse
from kedro_torch.tracking.tuning import in_nested_runs


def tune(
    model_input: pd.DataFrame, label_map: dict[str, int], normalization: dict,
    decoded_images: ImageStore, pretrained_state_dict: dict[str, torch.Tensor] | None,
    study_storage: str, data_params: dict[str, Any], model_params: dict[str, Any],
    training_params: dict[str, Any], tuning_params: dict[str, Any],
) -> dict[str, Any]:
    """Add ``tuning.n_trials`` trials to the study (in ``tuning.storage``, else the
    catalog's ``study_storage``); return its best parameters, metrics, trials and plots."""
    config = parse(TuningConfig, tuning_params, "tuning")
    parameters = {"data": data_params, "model": model_params, "training": training_params}
    objective = tuning.Objective(parameters, config, model_input, label_map, normalization,
                                 decoded_images, pretrained_state_dict)
    summary = tuning.run_study(objective, config.storage or study_storage, in_nested_runs)
    # Printed, not logged: the log wraps long lines, and this one is for copying.
    print(f"Best trial of study {config.study_name!r}: {summary.best_params}. Train with:\n"
          f"  kedro run --pipelines training --params {summary.params}")
    metrics = {name: {"value": value, "step": 0} for name, value in summary.metrics.items()}
    return {"best_params": summary.best_params, "metrics": metrics, "trials": summary.trials,
            **summary.figures}
