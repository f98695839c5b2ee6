"""Hyper-parameter search with Optuna over the plain training API.

A trial is a training run: the trial's values are written into the ``data``,
``model`` and ``training`` parameters under their own dotted names, checked as a
run's are, and trained with :mod:`kedro_torch.pytorch.api` on data prepared once
per study, so a trial gives what ``kedro run --pipelines training`` gives for the
same parameters. Each epoch reports ``tuning.metric`` to the trial, and a trial the
pruner gives up on stops there. Nothing here knows of Kedro or MLflow: callers pass
callbacks (an MLflow logger, say) into each trial.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
import pandas as pd
import sqlalchemy
import torch
from matplotlib.figure import Figure
from optuna.visualization import matplotlib as optuna_plots

from kedro_torch.pytorch import api, checks, engine, models, tasks
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ParameterError,
    SearchDimension,
    TrainingConfig,
    TuningConfig,
    parse,
)
from kedro_torch.pytorch.optimizers import classes_in, resolve
from kedro_torch.pytorch.tasks.base import Spec

# The sections a trial may change.
TUNED_SECTIONS = ("data", "model", "training")
# What the data stage reads: the images are checked, decoded and split once per
# study, so a trial cannot change these.
PREPARED_ONCE = ("data.source", "data.manifest", "data.image_size", "data.load_size",
                 "data.channels", "data.normalize", "data.max_bad_fraction", "data.cache",
                 "data.split")
# What fails a trial but not the study: a diverged loss (the NaN guard), a device out
# of memory, a combination of values a class refuses. Anything else stops the study.
TRIAL_ERRORS = (FloatingPointError, RuntimeError, ValueError)


def apply(parameters: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``parameters`` with each dotted key of ``values`` set, creating the
    mappings on the way (a key of ``model.kwargs``, say, need not be there yet)."""
    applied = copy.deepcopy(dict(parameters))
    for key, value in values.items():
        *path, last = key.split(".")
        node = applied
        for depth, name in enumerate(path):
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            elif not isinstance(child, Mapping):
                raise ParameterError(f"{key}: {'.'.join(path[:depth + 1])} is {child!r}, "
                                     "not a section that holds parameters")
            else:
                child = node[name] = dict(child)
            node = child
        node[last] = value
    return applied


def trial_configs(parameters: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The typed ``data``, ``model`` and ``training`` configs of ``parameters`` with
    ``values`` applied, checked as a run's parameters are (names, and the optimizer,
    scheduler and loss tried on a probe), and the model built once if its parameters
    changed, so a value a class refuses fails here naming the key."""
    configs = checks.validate_parameters(apply(parameters, values), set(TUNED_SECTIONS))
    if any(key.startswith("model.") for key in values):
        model, data = configs["model"], configs["data"]
        try:
            with torch.random.fork_rng(devices=[]):
                models.build(model.name, tasks.create(data.task).probe_arguments(data),
                             model.kwargs)
        except Exception as error:
            raise ParameterError(f"model.kwargs: {model.name}({model.kwargs}) failed: "
                                 f"{error}") from error
    return configs


def check_space(config: TuningConfig, parameters: Mapping[str, Any]) -> None:
    """Refuse, before any trial, a search space some of whose values no run would
    take: each key must name a parameter a trial can change, and its bounds (or each
    choice) must pass that parameter's checks. Then the sampler and pruner must build
    from their names and arguments, the storage be a database URL, and the splits
    hold what the metric and ``retrain_best`` need."""
    for key, dimension in config.dimensions.items():
        where = f"tuning.space.{key}"
        if key.split(".")[0] not in TUNED_SECTIONS or "." not in key:
            raise ParameterError(f"{where}: not a parameter a trial can change; keys start "
                                 f"with {', '.join(s + '.' for s in TUNED_SECTIONS)}")
        prepared = [name for name in PREPARED_ONCE if key == name or key.startswith(name + ".")]
        if prepared:
            raise ParameterError(f"{where}: {prepared[0]} shapes the data, which is checked "
                                 "and split once per study; it cannot vary between trials")
        for value in dimension.extremes:
            try:
                trial_configs(parameters, {key: value})
            except (ValueError, TypeError) as error:
                raise ParameterError(f"{where}: the value {value!r} is refused: {error}") from error
    build_sampler(config, trials_so_far=0)
    build_pruner(config)
    if config.storage is not None:
        try:
            sqlalchemy.engine.make_url(config.storage)
        except sqlalchemy.exc.ArgumentError as error:
            raise ParameterError(f"tuning.storage: not a database URL: {error}") from error
    data = parse(DataConfig, parameters.get("data"), "data")
    if config.metric not in tasks.get(data.task).monitors():
        raise ParameterError(
            f"tuning.metric: {data.task} records no {config.metric}; its epochs record "
            f"{', '.join(tasks.get(data.task).monitors())}")
    split = data.split
    if config.retrain_best:
        # Its training split takes in the validation split: nothing may need one.
        merged = {"data.split.train": split.train + split.val, "data.split.val": 0.0}
        try:
            trial_configs(parameters, merged)
        except ValueError as error:
            raise ParameterError(f"tuning.retrain_best trains on the training and validation "
                                 f"splits together, leaving none to validate on: {error}"
                                 ) from error
    if config.metric.startswith("val_") and not split.val:
        raise ParameterError(f"tuning.metric: {config.metric} needs a validation split, but "
                             "data.split.val is 0")


def build_sampler(config: TuningConfig, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """``tuning.sampler`` by name from ``optuna.samplers``. A class that takes a seed
    gets ``tuning.seed`` plus the trials the study already holds, so that a resumed
    study draws new values rather than those of its first run."""
    seed = None if config.seed is None else config.seed + trials_so_far
    return _build(optuna.samplers, optuna.samplers.BaseSampler, config.sampler.name,
                  config.sampler.kwargs, "tuning.sampler", seed=seed)


def build_pruner(config: TuningConfig) -> optuna.pruners.BasePruner:
    """``tuning.pruner`` by name from ``optuna.pruners``; ``name: null`` prunes nothing."""
    if config.pruner.name is None:
        return optuna.pruners.NopPruner()
    return _build(optuna.pruners, optuna.pruners.BasePruner, config.pruner.name,
                  config.pruner.kwargs, "tuning.pruner")


def _build(module: Any, base: type, name: str, kwargs: Mapping[str, Any], key: str,
           seed: int | None = None) -> Any:
    cls = resolve(name, classes_in(module, base), f"{key}.name")
    arguments = dict(kwargs)
    if seed is not None and "seed" in inspect.signature(cls).parameters:
        arguments.setdefault("seed", seed)
    try:
        return cls(**arguments)
    except Exception as error:
        raise ParameterError(f"{key}.kwargs: {cls.__name__}({kwargs}) failed: {error}") from error


def open_study(config: TuningConfig, storage_url: str) -> optuna.Study:
    """The study ``tuning.study_name`` in the RDB storage at ``storage_url``, created
    if it is not there yet: a run continues it, and several processes or machines
    given one database work on it together."""
    engine_kwargs = ({"connect_args": {"timeout": 60}}  # writers take turns on the file
                     if storage_url.startswith("sqlite") else {})
    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs)
    study = optuna.create_study(storage=storage, study_name=config.study_name,
                                direction=config.direction, load_if_exists=True,
                                pruner=build_pruner(config))
    if study.direction.name.lower() != config.direction:
        raise ParameterError(
            f"tuning.metric: study {config.study_name!r} was started to "
            f"{study.direction.name.lower()} its metric, and {config.metric} is to be "
            f"{config.direction}d; choose another tuning.study_name"
        )
    study.sampler = build_sampler(config, trials_so_far=len(study.trials))
    return study


class ReportToTrial(engine.Callback):
    """Reports each epoch's metric to the trial, and stops training when the pruner
    gives up on it."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[self.metric], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"{self.metric} = {metrics[self.metric]:.4f} after epoch {epoch}")


@dataclass(frozen=True)
class Objective:
    """Trains one trial on data prepared once for the whole study (what
    :func:`api.prepare_data` returned, as the catalog keeps it)."""

    parameters: Mapping[str, Any]  # the data, model and training sections of the run
    config: TuningConfig
    model_input: pd.DataFrame
    label_map: Mapping[str, int]
    preprocessing: Mapping[str, Any]
    images: ImageStore | None = None
    pretrained: Mapping[str, torch.Tensor] | None = None

    def __call__(self, trial: optuna.Trial,
                 callbacks: Sequence[engine.Callback] = ()) -> float:
        values = {key: suggest(trial, key, dimension)
                  for key, dimension in self.config.dimensions.items()}
        configs, result = self.train(values, self.model_input,
                                     [*callbacks, ReportToTrial(trial, self.config.metric)])
        return kept_epoch(result.history, configs["training"])[self.config.metric]

    def train(self, values: Mapping[str, Any], model_input: pd.DataFrame,
              callbacks: Sequence[engine.Callback]) -> tuple[dict[str, Any], api.FitResult]:
        """Train with ``values`` applied to the parameters, as the training pipeline
        would; return the configs used and the result. A trial starts afresh and draws
        no progress bar of its own."""
        configs = trial_configs(self.parameters, values)
        data_config, model_config = configs["data"], configs["model"]
        training = configs["training"] = replace(configs["training"], resume=False,
                                                 progress_bar=False)
        loaders = api.build_loaders(model_input, self.preprocessing, data_config,
                                    training.seed, images=self.images, device=training.device)
        model = api.build_model(model_config, data_config, self.label_map, self.preprocessing,
                                training.seed, self.pretrained)
        return configs, api.fit(model, loaders, training, num_classes=len(self.label_map),
                                model_config=model_config, callbacks=callbacks,
                                task=tasks.create(data_config.task, self.preprocessing))

    def train_final(self, values: Mapping[str, Any], evaluation: EvaluationConfig,
                    callbacks: Sequence[engine.Callback] = ()) -> FinalModel:
        """The final model: ``values`` (the best trial's) trained on the training and
        validation splits together, then evaluated on the test split, which no trial
        was judged on."""
        merged = self.model_input.assign(split=self.model_input["split"].replace("val", "train"))
        configs, result = self.train(values, merged, callbacks)
        spec = tasks.create(configs["data"].task, self.preprocessing).spec(
            configs["model"], configs["data"], self.preprocessing)
        report = api.evaluate(result.state_dict, spec, merged, self.label_map, evaluation,
                              data_config=configs["data"], history=result.history,
                              images=self.images, device=configs["training"].device)
        return FinalModel(result, spec, report)


@dataclass(frozen=True)
class FinalModel:
    result: api.FitResult
    spec: Spec
    evaluation: api.Evaluation


def suggest(trial: optuna.Trial, key: str, dimension: SearchDimension) -> Any:
    if dimension.type == "categorical":
        return trial.suggest_categorical(key, dimension.choices)
    if dimension.type == "int":
        return trial.suggest_int(key, dimension.low, dimension.high, step=dimension.step or 1,
                                 log=dimension.log)
    return trial.suggest_float(key, dimension.low, dimension.high, step=dimension.step,
                               log=dimension.log)


def kept_epoch(history: Sequence[Mapping[str, float]], training: TrainingConfig
               ) -> Mapping[str, float]:
    """The epoch whose weights training keeps: the best by ``training.monitor`` with
    early stopping or keep_best, else the last."""
    if not training.restores_best:
        return history[-1]
    sign = 1 if training.mode == "min" else -1
    return min(history, key=lambda row: sign * row[training.monitor])


def optimize(study: optuna.Study, config: TuningConfig,
             objective: Callable[[optuna.Trial], float]) -> None:
    """Run ``tuning.n_trials`` more trials (or until ``tuning.timeout``). A trial that
    fails with one of :data:`TRIAL_ERRORS` is recorded as failed and the study goes on."""
    study.optimize(objective, n_trials=config.n_trials, timeout=config.timeout,
                   catch=TRIAL_ERRORS)


def run_study(objective: Objective, storage_url: str,
              wrap: Callable[[Objective], Callable[[optuna.Trial], float]]) -> StudySummary:
    """Open the study, add the trials ``objective`` trains (each wrapped in ``wrap``,
    an MLflow run, say), and summarize the whole study."""
    study = open_study(objective.config, storage_url)
    optimize(study, objective.config, wrap(objective))
    return summarize(study, objective.config)


@dataclass(frozen=True)
class StudySummary:
    best_params: dict[str, Any]  # the best trial's values, by dotted parameter name
    metrics: dict[str, float]  # best_<metric>, best_trial_number, trials per state
    trials: pd.DataFrame  # one row per trial of the whole study
    figures: dict[str, Figure]  # optimization_history, param_importances, parallel_coordinate

    @property
    def params(self) -> str:
        """The best parameters as ``kedro run --params`` takes them: ``key=value,...``."""
        return ",".join(f"{key}={value}" for key, value in self.best_params.items())


def summarize(study: optuna.Study, config: TuningConfig) -> StudySummary:
    """The study so far, all its runs included: the best trial, counts of trials by
    state, the trials table and Optuna's figures."""
    states = [trial.state for trial in study.trials]
    if optuna.trial.TrialState.COMPLETE not in states:
        raise RuntimeError(f"no trial of study {config.study_name!r} completed "
                           f"({len(states)} trials: see the log for why each stopped)")
    best = study.best_trial
    metrics = {f"best_{config.metric}": best.value, "best_trial_number": best.number,
               "study_trials": len(states)}
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        metrics[f"study_trials_{state.lower()}"] = states.count(optuna.trial.TrialState[state])
    return StudySummary(dict(best.params), metrics, study.trials_dataframe(),
                        study_figures(study))




def study_figures(study: optuna.Study) -> dict[str, Figure]:
    """Optuna's optimization history, parameter importances and parallel coordinates.

    Importances need two completed trials that differ; with fewer the figure says so.
    """
    plots = {"optimization_history": optuna_plots.plot_optimization_history,
             "param_importances": optuna_plots.plot_param_importances,
             "parallel_coordinate": optuna_plots.plot_parallel_coordinate}
    figures = {}
    for name, plot in plots.items():
        try:
            # Optuna marks these plots experimental, and warns when a study of few
            # trials leaves nothing to compare: the figure shows as much.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                figure = plot(study).figure
        except (ValueError, RuntimeError) as error:
            figure = Figure()
            figure.text(0.5, 0.5, f"{name.replace('_', ' ')}: {error}", ha="center",
                        wrap=True)
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figures[name] = figure
    return figures
