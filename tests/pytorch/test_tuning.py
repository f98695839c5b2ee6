"""The search space checked at the door, trials that train as the training API does,
pruning, failing trials, and a study that resumes in its database."""

from __future__ import annotations

import copy

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kedro_torch.pytorch import api, data, tuning
from kedro_torch.pytorch.checks import validate_parameters
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    OptimizerConfig,
    ParameterError,
    SearchDimension,
    TrainingConfig,
    TuningConfig,
    parse,
)
from tests.conftest import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf" / "base"
LR = "training.optimizer.kwargs.lr"


@pytest.fixture(scope="module")
def parameters() -> dict:
    """The project's own parameters, as a run of the tuning pipeline reads them."""
    loaded = {}
    for name in ("training", "tuning"):
        loaded |= yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())
    return loaded


def test_the_projects_search_space_passes_the_door(parameters):
    configs = validate_parameters(parameters, {"data", "model", "training", "tuning"})
    assert LR in configs["tuning"].dimensions


def with_tuning(parameters: dict, **tuning_values) -> dict:
    changed = copy.deepcopy(parameters)
    changed["tuning"].update(tuning_values)
    return changed


@pytest.mark.parametrize(("tuning_values", "message"), [
    ({"space": {"training.learning_rate": {"type": "float", "low": 0.1, "high": 0.2}}},
     r"^tuning\.space\.training\.learning_rate: .*unknown parameter training\.learning_rate"),
    ({"space": {LR: {"type": "float", "low": 0.1, "high": 0.01}}},
     r"^tuning\.space\.training\.optimizer\.kwargs\.lr: low \(0\.1\) must not exceed high"),
    ({"space": {LR: {"type": "float", "low": -1.0, "high": 0.01}}},
     r"^tuning\.space\.training\.optimizer\.kwargs\.lr: the value -1\.0 is refused: .*"
     r"Invalid learning rate"),
    ({"space": {LR: {"type": "float", "low": 0.0, "high": 0.01, "log": True}}},
     r"^tuning\.space\.training\.optimizer\.kwargs\.lr\.log needs low > 0"),
    ({"space": {LR: {"low": 0.001, "high": 0.01}}},
     r"^tuning\.space\.training\.optimizer\.kwargs\.lr\.type is required"),
    ({"space": {LR: {"type": "float", "low": 0.001, "high": 0.01, "lo": 3}}},
     r"unknown parameter tuning\.space\.training\.optimizer\.kwargs\.lr\.lo"),
    ({"space": {"data.batch_size": {"type": "float", "low": 16, "high": 32}}},
     r"^tuning\.space\.data\.batch_size: .*data\.batch_size must be int"),
    ({"space": {"data.batch_size": {"type": "categorical"}}},
     r"^tuning\.space\.data\.batch_size\.choices"),
    ({"space": {"training.epochs": {"type": "int", "low": 1.5, "high": 3}}},
     r"^tuning\.space\.training\.epochs\.low must be an integer"),
    ({"space": {"model.name": {"type": "categorical", "choices": ["small_cnn", "resnet19"]}}},
     r"^tuning\.space\.model\.name: the value 'resnet19' is refused: .*unknown model"),
    ({"space": {"model.kwargs.widht": {"type": "int", "low": 16, "high": 32}}},
     r"^tuning\.space\.model\.kwargs\.widht: .*takes no argument 'widht'"),
    ({"space": {"data.image_size": {"type": "int", "low": 16, "high": 32}}},
     r"^tuning\.space\.data\.image_size: .*checked and split once per study"),
    ({"space": {"epochs": {"type": "int", "low": 1, "high": 3}}},
     r"^tuning\.space\.epochs: not a parameter a trial can change"),
    ({"space": {}}, r"^tuning\.space is empty"),
    ({"sampler": {"name": "TPE"}}, r"^tuning\.sampler\.name: unknown name 'TPE'"),
    ({"sampler": {"name": "TPESampler", "kwargs": {"n_startup": 3}}},
     r"^tuning\.sampler\.kwargs: TPESampler"),
    ({"pruner": {"name": "Median"}}, r"^tuning\.pruner\.name: unknown name 'Median'"),
    ({"metric": "val_f1"}, r"^tuning\.metric must be one of"),
    ({"n_trials": None}, r"^tuning\.n_trials and tuning\.timeout are both null"),
    ({"storage": "not a url"}, r"^tuning\.storage: not a database URL"),
])
def test_a_bad_search_is_refused_naming_the_key(parameters, tuning_values, message):
    with pytest.raises(ValueError, match=message):
        validate_parameters(with_tuning(parameters, **tuning_values),
                            {"data", "model", "training", "tuning"})


def test_retraining_on_train_and_val_is_refused_when_something_needs_validation(parameters):
    needs_val = with_tuning(parameters, retrain_best=True)
    needs_val["training"]["keep_best"] = True
    with pytest.raises(ParameterError, match=r"^tuning\.retrain_best trains on the training and "
                                             r"validation splits together, .*training\.monitor"):
        validate_parameters(needs_val, {"data", "model", "training", "tuning"})


def test_a_validation_metric_needs_a_validation_split(parameters):
    no_val = with_tuning(parameters)
    no_val["data"]["split"] |= {"train": 0.85, "val": 0.0}
    with pytest.raises(ParameterError, match=r"^tuning\.metric: val_accuracy needs a validation"):
        validate_parameters(no_val, {"data", "model", "training", "tuning"})


def test_a_bound_given_with_params_arrives_nested_and_changes_its_entry():
    """``--params tuning.space.model.kwargs.width.high=32`` nests what the YAML dots."""
    space = {"model.kwargs.width": {"type": "int", "low": 16, "high": 64},
             "model": {"kwargs": {"width": {"high": 32}, "dropout": {"type": "float",
                                                                    "low": 0, "high": 0.5}}}}
    assert parse(TuningConfig, {"space": space}, "tuning").dimensions == {
        "model.kwargs.width": SearchDimension("int", 16, 32),
        "model.kwargs.dropout": SearchDimension("float", 0.0, 0.5)}


def test_values_go_to_their_dotted_keys_creating_what_is_missing():
    parameters = {"model": {"kwargs": {}}, "training": {"optimizer": {"kwargs": {"lr": 1}}}}
    applied = tuning.apply(parameters, {LR: 0.5, "model.kwargs.width": 16})
    assert applied == {"model": {"kwargs": {"width": 16}},
                       "training": {"optimizer": {"kwargs": {"lr": 0.5}}}}
    assert parameters["training"]["optimizer"]["kwargs"]["lr"] == 1  # a copy was changed
    with pytest.raises(ParameterError, match=r"^training\.epochs\.x: training\.epochs is 3"):
        tuning.apply({"training": {"epochs": 3}}, {"training.epochs.x": 1})


# --- trials on real images ------------------------------------------------------------

EPOCHS = 3
TRAINING = {"epochs": EPOCHS, "progress_bar": False,
            "optimizer": {"kwargs": {"lr": 0.003, "weight_decay": 0.0001}}}
DATA = {"batch_size": 8}


@pytest.fixture(scope="module")
def prepared(small_digits) -> api.PreparedData:
    manifest = data.manifest_from_listing(data.list_folder(str(small_digits)))
    return api.prepare_data(manifest, parse(DataConfig, DATA, "data"))


def objective_for(prepared: api.PreparedData, **tuning_values) -> tuning.Objective:
    """Trials whose learning rate is enqueued: the space only bounds it."""
    config = parse(TuningConfig, {"space": {LR: {"type": "float", "low": -1.0, "high": 1.0e6}}}
                   | tuning_values, "tuning")
    return tuning.Objective({"data": DATA, "model": {}, "training": TRAINING}, config,
                            prepared.model_input, prepared.label_map, prepared.preprocessing,
                            prepared.images)


# Validation accuracy at least this high from the second epoch on, or the trial is pruned.
PRUNE_BELOW = {"name": "ThresholdPruner", "kwargs": {"lower": 0.4, "n_warmup_steps": 2}}


def test_a_hopeless_trial_is_pruned_and_failing_trials_do_not_stop_the_study(
        prepared, one_thread):
    objective = objective_for(prepared, pruner=PRUNE_BELOW, n_trials=4)
    study = optuna.create_study(direction="maximize", pruner=tuning.build_pruner(objective.config))
    # A learning rate that learns, none at all, one AdamW refuses, one that diverges.
    for lr in (0.01, 0.0, -1.0, 1.0e6):
        study.enqueue_trial({LR: lr})
    tuning.optimize(study, objective.config, objective)
    learns, still, refused, diverged = study.trials
    assert learns.state == TrialState.COMPLETE
    assert sorted(learns.intermediate_values) == [1, 2, 3]
    assert learns.value == learns.intermediate_values[3] >= 0.4
    assert still.state == TrialState.PRUNED
    assert sorted(still.intermediate_values) == [1, 2]  # stopped at the first check
    assert still.intermediate_values[2] < 0.4
    assert refused.state == diverged.state == TrialState.FAIL
    assert refused.intermediate_values == {}  # refused before any training
    assert diverged.intermediate_values == {}


def test_a_trial_trains_as_the_training_api_does_with_its_values(prepared, one_thread):
    objective = objective_for(prepared, pruner={"name": None}, n_trials=1)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({LR: 0.01})
    tuning.optimize(study, objective.config, objective)
    data_config = parse(DataConfig, DATA, "data")
    training = TrainingConfig(epochs=EPOCHS, progress_bar=False, optimizer=OptimizerConfig(
        kwargs={"lr": 0.01, "weight_decay": 0.0001}))
    loaders = api.build_loaders(prepared.model_input, prepared.preprocessing, data_config,
                                training.seed, images=prepared.images)
    model = api.build_model(ModelConfig(), data_config, prepared.label_map,
                            prepared.preprocessing, training.seed)
    history = api.fit(model, loaders, training, num_classes=len(prepared.label_map)).history
    (trial,) = study.trials
    assert trial.intermediate_values == {row["epoch"]: row["val_accuracy"] for row in history}
    assert trial.value == history[-1]["val_accuracy"]


def test_the_final_model_trains_on_train_and_val_and_is_judged_on_test(prepared, one_thread):
    final = objective_for(prepared).train_final({LR: 0.01}, EvaluationConfig(top_k=2))
    assert [row["epoch"] for row in final.result.history] == [1, 2, 3]
    assert all("val_accuracy" not in row for row in final.result.history)  # no split left
    splits = prepared.model_input["split"]
    assert list(final.evaluation.predictions["path"]) == list(
        prepared.model_input.loc[splits == "test", "path"])
    assert final.evaluation.metrics["test_accuracy"] == final.evaluation.report["accuracy"]
    assert final.spec.model_name == "small_cnn"


def test_a_study_resumes_in_its_database_with_new_values(tmp_path):
    """A sampler reseeded as the study grows: the second run draws values of its own."""
    config = parse(TuningConfig, {"space": {LR: {"type": "float", "low": 0.0, "high": 1.0}},
                                  "sampler": {"name": "RandomSampler"}, "n_trials": 3}, "tuning")
    storage = f"sqlite:///{tmp_path / 'studies.db'}"

    def run() -> list[float]:
        study = tuning.open_study(config, storage)
        tuning.optimize(study, config, lambda trial: trial.suggest_float(LR, 0.0, 1.0))
        return [trial.params[LR] for trial in study.trials]

    first = run()
    both = run()
    assert len(first) == 3 and both[:3] == first
    assert len(both) == 6 and not set(both[3:]) & set(first)
    assert [trial.number for trial in optuna.load_study(
        study_name="kedro_torch", storage=storage).trials] == list(range(6))


def test_a_study_keeps_its_direction(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    space = {"space": {LR: {"type": "float", "low": 0.0, "high": 1.0}}}
    tuning.open_study(parse(TuningConfig, space, "tuning"), storage)
    with pytest.raises(ParameterError, match=r"^tuning\.metric: study 'kedro_torch' was "
                                             r"started to maximize"):
        tuning.open_study(parse(TuningConfig, space | {"metric": "val_loss"}, "tuning"), storage)


def test_a_summary_needs_a_completed_trial_and_draws_the_figures_from_one():
    config = parse(TuningConfig, {"space": {LR: {"type": "float", "low": 0.0, "high": 1.0}}},
                   "tuning")
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: 1 / 0, n_trials=1, catch=ZeroDivisionError)
    with pytest.raises(RuntimeError, match="no trial of study 'kedro_torch' completed"):
        tuning.summarize(study, config)
    study.enqueue_trial({LR: 0.25})
    study.optimize(lambda trial: trial.suggest_float(LR, 0.0, 1.0), n_trials=1)
    summary = tuning.summarize(study, config)
    assert summary.best_params == {LR: 0.25}
    assert summary.params == f"{LR}=0.25"
    assert summary.metrics == {"best_val_accuracy": 0.25, "best_trial_number": 1,
                               "study_trials": 2, "study_trials_complete": 1,
                               "study_trials_pruned": 0, "study_trials_fail": 1}
    assert len(summary.trials) == 2
    assert set(summary.figures) == {"optimization_history", "param_importances",
                                    "parallel_coordinate"}
