"""What the project's hooks add to a run (its name, git state and device), how node
parameters reach MLflow, and how kedro-mlflow's hook takes the place of the plugin's."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess

import mlflow
import pytest
from kedro.framework.hooks.manager import (
    _create_hook_manager,
    _register_hooks,
    _register_hooks_entry_points,
)
from kedro.framework.hooks.markers import HOOK_NAMESPACE
from kedro.io import DataCatalog
from kedro.pipeline import node
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from kedro_torch import settings
from kedro_torch.errors import FailedNodeHook
from kedro_torch.hooks import (
    DistributedHook,
    GarbageCollectionHook,
    InterruptionHook,
    ParameterValidationHook,
    RunVersionsHook,
)
from kedro_torch.tracking import mlflow_hook, store
from kedro_torch.tracking.hooks import InterruptedRunHook, MlflowHookForwarder, MlflowRunHook
from kedro_torch.tracking.mlflow_hook import BatchedParamsMlflowHook
from kedro_torch.tracking.runs import device_tags, git_state, run_name
from kedro_torch.tracking.summary_hook import RunSummaryHook


def test_run_name_from_model_optimizer_learning_rate_epochs_and_suffix():
    parameters = {"model": {"name": "resnet18"},
                  "training": {"epochs": 3, "optimizer": {"name": "SGD", "kwargs": {"lr": 0.1}}}}
    assert run_name(parameters, "1dca7a") == "resnet18-SGD-lr0.1-3ep-1dca7a"
    assert run_name({}) == "small_cnn-AdamW-lr0.003-10ep"  # the defaults
    no_lr = {"training": {"optimizer": {"name": "Adam", "kwargs": {}}}}
    assert run_name(no_lr) == "small_cnn-Adam-10ep"


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


def test_device_tags_are_the_resolved_device_and_processes():
    assert device_tags({"device": "cpu"}) == {
        "device": "cpu", "strategy": "single", "world_size": "1", "backend": "none",
        "nodes": "1", "processes_per_node": "1", "global_batch_size": "32"}
    tags = device_tags({"device": "cpu", "devices": 2}, {"batch_size": 16})
    assert tags | {"device": "cpu", "strategy": "ddp", "world_size": "2", "backend": "gloo",
                   "processes_per_node": "2", "global_batch_size": "32"} == tags


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
    calls = {"log_param": 0, "log_batch": 0}
    for owner, name in ((mlflow, "log_param"), (MlflowClient, "log_batch")):
        original = getattr(owner, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)
    hook = params_hook()
    training = {"epochs": 3, "optimizer": {"name": "AdamW", "kwargs": {"lr": 0.003}}}
    run_node(hook, {"params:training": training, "model": object()})
    assert calls == {"log_param": 0, "log_batch": 1}
    # A second node taking the same section logs nothing again; a new key is logged.
    run_node(hook, {"params:training": training})
    run_node(hook, {"params:training": training, "params:seed": 7})
    assert calls == {"log_param": 0, "log_batch": 2}
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


@pytest.fixture(scope="module")
def hook_manager():
    """The project's hooks and the installed plugins', registered as a KedroSession does."""
    manager = _create_hook_manager()
    _register_hooks(manager, settings.HOOKS)
    _register_hooks_entry_points(manager, settings.DISABLE_HOOKS_FOR_PLUGINS)
    return manager


def test_the_plugins_own_mlflow_hook_is_replaced_not_doubled(hook_manager):
    """The plugin's hook is unregistered by its distribution name, as Kedro reads it."""
    name = importlib.metadata.distribution("kedro-mlflow").metadata["Name"]
    assert name in settings.DISABLE_HOOKS_FOR_PLUGINS
    plugins = hook_manager.get_plugins()
    assert not any(isinstance(plugin, MlflowHook) for plugin in plugins)
    assert sum(isinstance(plugin, MlflowHookForwarder) for plugin in plugins) == 1


def called_in_order(hook_manager, hook: str) -> list[type]:
    """The project's implementations of ``hook``, in the order pluggy calls them."""
    implementations = reversed(getattr(hook_manager.hook, hook).get_hookimpls())
    return [type(impl.plugin) for impl in implementations if impl.plugin in settings.HOOKS]


def test_kedro_mlflows_hook_keeps_the_place_of_the_plugins_own(hook_manager):
    """Parameters are checked before kedro-mlflow opens the run, the run's story is
    told once it is open and finished before kedro-mlflow closes it; an interrupted
    run is marked KILLED after kedro-mlflow marked it FAILED, and only then does the
    process end with the signal's status."""
    assert called_in_order(hook_manager, "before_pipeline_run") == [
        ParameterValidationHook, InterruptionHook, MlflowHookForwarder, GarbageCollectionHook,
        RunVersionsHook, DistributedHook, RunSummaryHook, MlflowRunHook, InterruptedRunHook,
    ]
    # The summary comes last, once kedro-mlflow has closed the run.
    assert called_in_order(hook_manager, "after_pipeline_run") == [
        MlflowRunHook, FailedNodeHook, InterruptionHook, MlflowHookForwarder, DistributedHook,
        RunSummaryHook,
    ]
    assert called_in_order(hook_manager, "on_pipeline_error") == [
        MlflowRunHook, MlflowHookForwarder, DistributedHook, InterruptedRunHook, InterruptionHook,
    ]


def hook_implementations(cls: type) -> dict[str, tuple[dict, list[str]]]:
    """The hooks a class implements: each one's options and argument names."""
    return {
        name: (options, list(inspect.signature(function).parameters))
        for name, function in inspect.getmembers(cls, inspect.isfunction)
        if (options := getattr(function, f"{HOOK_NAMESPACE}_impl", None)) is not None
    }


def test_the_forwarder_implements_kedro_mlflows_hooks_as_they_are():
    """Pluggy passes a hook the arguments it names, in the place its options give it."""
    assert hook_implementations(MlflowHookForwarder) == hook_implementations(MlflowHook)
    assert hook_implementations(BatchedParamsMlflowHook) == hook_implementations(MlflowHook)


def test_the_forwarder_builds_the_hook_on_the_first_call_and_passes_every_call_on(
    monkeypatch,
):
    """Nothing is built, so MLflow is not imported, until Kedro calls a hook."""
    built, calls = [], []

    class Recorder:
        def __init__(self):
            built.append(self)

        def __getattr__(self, name):
            return lambda *args: calls.append((name, args))

    monkeypatch.setattr(mlflow_hook, "BatchedParamsMlflowHook", Recorder)
    checked = []  # the server check, tested in tests/tracking/test_store.py
    monkeypatch.setattr(store, "check_tracking_server",
                        lambda context: checked.append(context) or True)  # tracked
    forwarder = MlflowHookForwarder()
    assert built == []
    expected = call_every_hook(forwarder)
    assert len(built) == 1
    assert calls == expected
    assert checked == ["after_context_created:context"]


def call_every_hook(forwarder: MlflowHookForwarder) -> list[tuple[str, tuple]]:
    """Each of kedro-mlflow's hooks called on ``forwarder`` with placeholder arguments,
    the context's first, as Kedro calls it first; the calls made."""
    made = []
    hooks = sorted(hook_implementations(MlflowHook).items(),
                   key=lambda hook: hook[0] != "after_context_created")
    for name, (_, argnames) in hooks:
        arguments = tuple(f"{name}:{argname}" for argname in argnames[1:])  # after self
        getattr(forwarder, name)(*arguments)
        made.append((name, arguments))
    return made


def test_a_session_of_untracked_pipelines_leaves_kedro_mlflow_out(monkeypatch):
    """Its set-up would look up the experiment on a server the pipelines never use; a
    later session of tracked pipelines in the same process passes every call on."""
    calls = []

    class Recorder:
        def __getattr__(self, name):
            return lambda *args: calls.append(name)

    monkeypatch.setattr(mlflow_hook, "BatchedParamsMlflowHook", Recorder)
    forwarder = MlflowHookForwarder()
    monkeypatch.setattr(store, "check_tracking_server", lambda context: False)  # untracked
    call_every_hook(forwarder)
    assert calls == []
    monkeypatch.setattr(store, "check_tracking_server", lambda context: True)
    assert [name for name, _ in call_every_hook(forwarder)] == calls
