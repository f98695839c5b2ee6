"""What the project's hooks add to a run (its name, git state and device), the
parameters they check at the door, and how node parameters reach MLflow."""

from __future__ import annotations

import importlib.metadata
import subprocess

import mlflow
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import node
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from kedro_torch import settings
from kedro_torch.hooks import (
    BatchedParamsMlflowHook,
    device_tags,
    git_state,
    run_name,
    validate_parameters,
)
from kedro_torch.pytorch.config import ParameterError


def test_run_name_from_model_optimizer_and_learning_rate():
    parameters = {"model": {"name": "resnet18"},
                  "training": {"optimizer": {"name": "SGD", "kwargs": {"lr": 0.1}}}}
    assert run_name(parameters) == "resnet18-SGD-lr0.1"
    assert run_name({}) == "small_cnn-AdamW-lr0.003"  # the defaults
    no_lr = {"training": {"optimizer": {"name": "Adam", "kwargs": {}}}}
    assert run_name(no_lr) == "small_cnn-Adam"


def test_git_state_outside_a_repository_is_unknown(tmp_path):
    assert git_state(tmp_path) == ("unknown", "unknown")


def test_git_state_gives_the_commit_and_whether_the_tree_is_dirty(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    commit = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == (commit, "false")
    (tmp_path / "a.txt").write_text("changed")
    assert git_state(tmp_path) == (commit, "true")


def test_device_tag_is_the_resolved_device():
    assert device_tags({"device": "cpu"}) == {"device": "cpu"}


def test_new_sections_are_validated_at_the_door():
    with pytest.raises(ParameterError, match=r"export\.tolerance"):
        validate_parameters({"export": {"tolerance": -1}}, {"export"})
    validate_parameters({}, {"evaluation", "mlflow", "inference", "export"})


def test_an_unknown_transform_name_stops_the_run_at_the_door():
    parameters = {"data": {"transforms": {"eval": [{"name": "CenterCrop", "kwargs": {"size": 8}},
                                                   {"name": "CentreCrop"}]}}}
    with pytest.raises(ValueError, match=r"data\.transforms\.eval\[1\]\.name: unknown name"):
        validate_parameters(parameters, {"data"})


def test_transform_arguments_are_tried_at_the_door():
    parameters = {"data": {"transforms": {"train_batch": [{"name": "MixUp",
                                                           "kwargs": {"alpha": -1}}]}}}
    with pytest.raises(ValueError, match=r"data\.transforms\.train_batch\[0\] \(MixUp\)"):
        validate_parameters(parameters, {"data"})


@pytest.fixture
def mlflow_run(tmp_path):
    """An active run in a SQLite store of its own."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("hooks")  # not the id an earlier test left active elsewhere
    with mlflow.start_run() as run:
        yield run
    mlflow.set_tracking_uri(previous)


def params_hook(strategy: str = "fail") -> BatchedParamsMlflowHook:
    """The hook as kedro-mlflow's ``after_context_created`` configures it for this
    project (flattened with "."), inside a run the test opened itself."""
    hook = BatchedParamsMlflowHook()
    hook.flatten, hook.recursive, hook.sep = True, True, "."
    hook.long_params_strategy = strategy
    return hook


def run_node(hook: BatchedParamsMlflowHook, inputs: dict) -> None:
    the_node = node(lambda *args: None, list(inputs), None, name="a_node")
    hook.before_node_run(the_node, DataCatalog(), inputs, is_async=False)


def test_a_nodes_parameters_are_logged_flattened_in_one_batch(mlflow_run, monkeypatch):
    calls = {"log_param": 0, "log_params": 0}
    for name in calls:
        original = getattr(mlflow, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(mlflow, name, counting)
    hook = params_hook()
    training = {"epochs": 3, "optimizer": {"name": "AdamW", "kwargs": {"lr": 0.003}}}
    run_node(hook, {"params:training": training, "model": object()})
    assert calls == {"log_param": 0, "log_params": 1}
    # A second node taking the same section logs nothing again; a new key is logged.
    run_node(hook, {"params:training": training})
    run_node(hook, {"params:training": training, "params:seed": 7})
    assert calls == {"log_param": 0, "log_params": 2}
    params = MlflowClient().get_run(mlflow_run.info.run_id).data.params
    assert params == {"training.epochs": "3", "training.optimizer.name": "AdamW",
                      "training.optimizer.kwargs.lr": "0.003", "seed": "7"}


def test_over_long_parameters_follow_kedro_mlflows_strategy(mlflow_run):
    long_value = "x" * (MAX_PARAM_VAL_LENGTH + 1)
    run_node(params_hook("tag"), {"params:note": long_value, "params:short": 1})
    data = MlflowClient().get_run(mlflow_run.info.run_id).data
    assert data.tags["note"] == long_value
    assert data.params == {"short": "1"}
    with pytest.raises(ValueError, match="Parameter 'note' length"):
        run_node(params_hook("fail"), {"params:note": long_value})


def test_the_plugins_own_mlflow_hook_is_replaced_not_doubled():
    """The plugin's hook is unregistered by its distribution name, as Kedro reads it."""
    name = importlib.metadata.distribution("kedro-mlflow").metadata["Name"]
    assert name in settings.DISABLE_HOOKS_FOR_PLUGINS
    assert sum(isinstance(hook, MlflowHook) for hook in settings.HOOKS) == 1
