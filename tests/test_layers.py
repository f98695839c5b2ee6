"""The two layers: the PyTorch layer imports neither Kedro nor MLflow, so it runs
in any script or notebook (and on a machine that has only torch)."""

import subprocess
import sys

PYTORCH_LAYER = ["pytorch." + m for m in ["checkpoints", "config", "data", "distributed", "engine", "export",
                 "cache", "images", "inference", "loaders", "metrics", "models",
                 "optimizers", "plots", "progress"]]

# Imports the modules one by one in a fresh interpreter and names any that pulled
# in Kedro or MLflow (one interpreter: torch is imported once, not fifteen times).
PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module("kedro_torch." + name)
    leaked = sorted({m.split(".")[0] for m in sys.modules} & {"kedro", "mlflow"})
    if leaked:
        print(name, leaked)
        break
"""


def test_pytorch_layer_imports_neither_kedro_nor_mlflow():
    result = subprocess.run([sys.executable, "-c", PROBE, *PYTORCH_LAYER],
                            capture_output=True, text=True, check=True)
    assert result.stdout == ""
