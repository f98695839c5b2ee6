"""Project settings: hooks, configuration loading and what the console shows."""

from kedro_torch.console import quiet_console
from kedro_torch.errors import FailedNodeHook
from kedro_torch.hooks import (
    DistributedHook,
    GarbageCollectionHook,
    InterruptionHook,
    ParameterValidationHook,
    RunVersionsHook,
    collect_rarely_during_start_up,
)
from kedro_torch.tracking.hooks import (
    InterruptedRunHook,
    MlflowArtifactHook,
    MlflowHookForwarder,
    MlflowRunHook,
)
from kedro_torch.tracking.summary_hook import RunSummaryHook

collect_rarely_during_start_up()
quiet_console()  # for sessions started from Python; the CLI did it already

# kedro-mlflow's hook is registered here, as a subclass that logs parameters in
# batches (reached through MlflowHookForwarder, which builds it on the first call),
# in place of the one its plugin registers. Hooks registered later run earlier, so
# it keeps the place the plugin's had: ahead of the project's own.
HOOKS = (
    ParameterValidationHook(),
    FailedNodeHook(),  # the node an unexpected error came from, for its message
    DistributedHook(),
    RunVersionsHook(),
    RunSummaryHook(),
    MlflowArtifactHook(),
    MlflowRunHook(),
    GarbageCollectionHook(),
    InterruptedRunHook(),
    MlflowHookForwarder(),
    # Among trylast hooks the ones registered later run later: its error hook, which
    # ends the process, comes after the one that records the MLflow run as KILLED.
    InterruptionHook(),
)
# The plugin's distribution name, as older and newer packaging spell it.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Parameters of conf/local override conf/base key by key, as --params does. Kedro's
    # default replaces whole sections, and then applies --params to the local files
    # alone: with a `training` section in conf/local, `--params tuning.n_trials=3`
    # would leave `tuning` holding nothing but n_trials.
    "merge_strategy": {"parameters": "soft"},
}
