"""Project settings: hooks and configuration loading."""

from kedro_torch.hooks import MlflowArtifactHook, ParameterValidationHook

HOOKS = (ParameterValidationHook(), MlflowArtifactHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
