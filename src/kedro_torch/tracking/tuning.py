"""A study in MLflow: each trial an MLflow run of its own, nested under the run of
the ``kedro run`` (kedro-mlflow's), so the UI shows the study as one run that
unfolds into its trials."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import mlflow
import optuna

from kedro_torch.pytorch.config import EvaluationConfig, InferenceConfig
from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.pytorch.interrupts import Interrupted
from kedro_torch.pytorch.tuning import Objective
from kedro_torch.tracking.callbacks import MlflowEpochLogger
from kedro_torch.tracking.datasets import MlflowServedModelDataset

logger = logging.getLogger(__name__)

# How long an error message a failed trial's run keeps as its tag.
ERROR_TAG_LENGTH = 5000


def in_nested_runs(objective: Objective) -> Callable[[optuna.Trial], float]:
    """``objective``, each call in a child run of the active run: the trial's values
    as parameters, each epoch's metrics, ``final_<metric>``, and the tag
    ``trial_state`` (COMPLETE, PRUNED or FAIL; a run stopped by a signal is KILLED).
    The trial keeps the run's id as its user attribute ``mlflow_run_id``; the parent
    and its children carry the tag ``optuna_study``.

    Without an active run (tracking off), or off the main process, trials run untracked.
    """
    metric = objective.config.metric

    def run_trial(trial: optuna.Trial) -> float:
        if mlflow.active_run() is None or not is_main_process():
            return objective(trial)
        study = trial.study.study_name
        mlflow.set_tag("optuna_study", study)  # on the parent
        run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags={
            "optuna_study": study, "trial_number": str(trial.number)})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        state, status = "FAIL", "FAILED"
        try:
            value = objective(trial, callbacks=[MlflowEpochLogger()])
            mlflow.log_metric(f"final_{metric}", value)
            state, status = "COMPLETE", "FINISHED"
            return value
        except optuna.TrialPruned as pruned:
            state, status = "PRUNED", "FINISHED"
            mlflow.set_tag("pruned_at", str(pruned))
            raise
        except Interrupted:
            status = "KILLED"
            raise
        except Exception as error:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:ERROR_TAG_LENGTH])
            raise
        finally:
            mlflow.flush_async_logging()  # the epochs' metrics, before the run closes
            if trial.params:
                mlflow.log_params(trial.params)
            mlflow.set_tag("trial_state", state)
            mlflow.end_run(status)

    return run_trial


def final_model_in_nested_run(objective: Objective, best_params: Mapping[str, Any],
                              evaluation: EvaluationConfig, inference: InferenceConfig,
                              registered_model_name: str) -> None:
    """Train the final model with the best trial's values on the training and
    validation splits (:meth:`Objective.train_final`) in a child run, ``final-model``,
    of the active run: its values as parameters, its epochs, the test metrics, the
    evaluation report and figures, and the model, logged and registered as a training
    run's is (the ``champion`` alias moves only to a better model)."""
    if mlflow.active_run() is None or not is_main_process():
        logger.warning("tuning.retrain_best: no MLflow run to keep the final model in; "
                       "it is not trained")
        return
    with mlflow.start_run(run_name="final-model", nested=True,
                          tags={"optuna_study": objective.config.study_name}):
        mlflow.log_params(dict(best_params))
        final = objective.train_final(best_params, evaluation, [MlflowEpochLogger()])
        mlflow.log_metrics(final.evaluation.metrics)
        mlflow.log_dict(final.evaluation.report, "evaluation_report.json")
        for name, figure in final.evaluation.figures.items():
            mlflow.log_figure(figure, f"{name}.png")
        MlflowServedModelDataset().save({
            "state_dict": final.result.state_dict, "model_spec": final.spec.to_dict(),
            "label_map": dict(objective.label_map), "top_k": inference.top_k,
            "batch_size": inference.batch_size, "registered_model_name": registered_model_name,
            "metrics": final.evaluation.metrics,
        })
