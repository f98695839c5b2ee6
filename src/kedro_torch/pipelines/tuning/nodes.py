"""The tuning pipeline's nodes: parameters to a study of trials that each call the
plain training API (:mod:`kedro_torch.pytorch.tuning`), each trial an MLflow run
nested under the kedro run's; the study's summary to the catalog; and, if asked, the
final model trained with the best values."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from kedro_torch.pytorch import tuning
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    EvaluationConfig,
    InferenceConfig,
    MlflowConfig,
    TuningConfig,
    parse,
)
from kedro_torch.tracking.tuning import final_model_in_nested_run, in_nested_runs


def tune(
    model_input: pd.DataFrame, label_map: dict[str, int], preprocessing: dict,
    decoded_images: ImageStore, pretrained_state_dict: dict[str, torch.Tensor] | None,
    study_storage: str, data_params: dict[str, Any], model_params: dict[str, Any],
    training_params: dict[str, Any], tuning_params: dict[str, Any],
) -> dict[str, Any]:
    """Add ``tuning.n_trials`` trials to the study (in ``tuning.storage``, else the
    catalog's ``study_storage``); return its best parameters, metrics, trials and plots."""
    config = parse(TuningConfig, tuning_params, "tuning")
    parameters = {"data": data_params, "model": model_params, "training": training_params}
    objective = tuning.Objective(parameters, config, model_input, label_map, preprocessing,
                                 decoded_images, pretrained_state_dict)
    summary = tuning.run_study(objective, config.storage or study_storage, in_nested_runs)
    # Printed, not logged: the log wraps long lines, and this one is for copying.
    print(f"Best trial of study {config.study_name!r}: {summary.best_params}. Train with:\n"
          f"  kedro run --pipelines training --params {summary.params}")
    metrics = {name: {"value": value, "step": 0} for name, value in summary.metrics.items()}
    return {"best_params": summary.best_params, "metrics": metrics, "trials": summary.trials,
            **summary.figures}


def train_final_model(
    best_params: dict[str, Any], model_input: pd.DataFrame, label_map: dict[str, int],
    preprocessing: dict, decoded_images: ImageStore,
    pretrained_state_dict: dict[str, torch.Tensor] | None, data_params: dict[str, Any],
    model_params: dict[str, Any], training_params: dict[str, Any],
    tuning_params: dict[str, Any], evaluation_params: dict[str, Any],
    inference_params: dict[str, Any], mlflow_params: dict[str, Any],
) -> None:
    """With ``tuning.retrain_best``, the best values trained on train + val, evaluated
    on the test split and registered, in an MLflow run nested under the kedro run's."""
    config = parse(TuningConfig, tuning_params, "tuning")
    if not config.retrain_best:
        return
    parameters = {"data": data_params, "model": model_params, "training": training_params}
    objective = tuning.Objective(parameters, config, model_input, label_map, preprocessing,
                                 decoded_images, pretrained_state_dict)
    final_model_in_nested_run(
        objective, best_params, parse(EvaluationConfig, evaluation_params, "evaluation"),
        parse(InferenceConfig, inference_params, "inference"),
        parse(MlflowConfig, mlflow_params, "mlflow").registered_model_name)
