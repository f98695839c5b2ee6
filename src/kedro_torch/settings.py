"""Project settings: hooks and configuration loading."""

from kedro_torch.hooks import (
    GarbageCollectionHook,
    MlflowArtifactHook,
    MlflowRunHook,
    ParameterValidationHook,
)

HOOKS = (ParameterValidationHook(), MlflowArtifactHook(), MlflowRunHook(), GarbageCollectionHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
