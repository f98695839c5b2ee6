"""The three parts of the package: the PyTorch layer imports neither Kedro nor MLflow,
so it runs in any script or notebook (and on a machine that has only torch); only
the tracking part talks to MLflow; and the Kedro wiring that Kedro imports for every
command, even ``kedro --version``, leaves torch and MLflow to the commands that run
a pipeline."""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kedro_torch
import kedro_torch.pytorch
from tests.conftest import PROJECT_ROOT

PACKAGE = Path(kedro_torch.__file__).parent
HEAVY = {"torch", "torchvision", "mlflow", "kedro_mlflow"}

# Imports the modules one by one in a fresh interpreter and names any that pulled
# in Kedro or MLflow (one interpreter: torch is imported once, not once a module).
PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    leaked = sorted({m.split(".")[0] for m in sys.modules} & {"kedro", "mlflow"})
    if leaked:
        print(name, leaked)
        break
"""


def imported_modules(code: str, listing: Path, *args: str, cwd: Path | None = None) -> set[str]:
    """Every module a fresh interpreter holds when ``code`` (run with ``args``) exits.

    Read from ``sys.modules`` rather than ``-X importtime``, which leaves out modules
    imported with ``importlib.import_module``, as Kedro imports the settings.
    """
    at_exit = f"atexit.register(lambda: open({str(listing)!r}, 'w').write(' '.join(sys.modules)))"
    subprocess.run([sys.executable, "-c", f"import atexit, sys\n{at_exit}\n{code}", *args],
                   cwd=cwd, capture_output=True, check=True)
    return set(listing.read_text().split())


def test_pytorch_layer_imports_neither_kedro_nor_mlflow():
    modules = [info.name for info in pkgutil.walk_packages(kedro_torch.pytorch.__path__,
                                                           "kedro_torch.pytorch.")]
    assert "kedro_torch.pytorch.engine" in modules  # the walk found the layer
    result = subprocess.run([sys.executable, "-c", PROBE, *modules],
                            capture_output=True, text=True, check=True)
    assert result.stdout == ""


def test_only_the_tracking_part_imports_mlflow():
    """Read, not imported: an import inside a function counts as much as one at the top."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "tracking":
            continue
        for statement in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
                names = [statement.module]
            else:
                continue
            offenders += [f"{path.relative_to(PACKAGE)}: {name}" for name in names
                          if name.split(".")[0] in {"mlflow", "kedro_mlflow"}]
    assert offenders == []


@pytest.fixture(scope="module")
def settings_imports(tmp_path_factory) -> set[str]:
    listing = tmp_path_factory.mktemp("settings") / "modules.txt"
    return imported_modules("import kedro_torch.settings", listing)


def test_the_settings_import_neither_torch_nor_mlflow(settings_imports):
    assert settings_imports & HEAVY == set()


def test_kedro_version_in_the_project_imports_only_its_settings(tmp_path, settings_imports):
    """mlflow is imported all the same, by kedro-mlflow's own commands, which Kedro
    loads for every command in a project; what is checked here is that the project
    adds nothing to it: no torch, and no module of its own beyond the settings'."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)  # Kedro wants the folder; the package is installed
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project)
    imported = imported_modules("from kedro.framework.cli import main\nmain()",
                                tmp_path / "modules.txt", "--version", cwd=project)
    ours = {name for name in imported if name.split(".")[0] == "kedro_torch"}
    assert "kedro_torch.settings" in ours  # Kedro took the copy for the project
    assert ours <= settings_imports | {"kedro_torch.cli"}  # the project's `kedro run`
    assert imported & {"torch", "torchvision"} == set()
