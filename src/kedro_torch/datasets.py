"""Kedro datasets for what kedro-datasets has no entry for: image folders, torch
state_dicts, and a PyTorch model logged to MLflow with its signature."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import PurePosixPath
from typing import Any

import fsspec
import mlflow
import pandas as pd
import torch
from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str, get_protocol_and_path
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from kedro_torch.checkpoints import (
    CheckpointStore,
    load_weights,
    save_atomically,
    state_dict_from,
)


class ImageFolderDataset(AbstractDataset[None, pd.DataFrame]):
    """Lists the files under a folder, on any fsspec filesystem, without reading them.

    Loads a DataFrame with ``path`` (openable by fsspec) and ``relative_path``
    (POSIX, relative to the folder) for every file; which files are images and
    what their labels are is decided by the pipeline, not here.
    """

    def __init__(
        self,
        *,
        path: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._protocol, root = get_protocol_and_path(str(path))
        self._fs = fsspec.filesystem(self._protocol, **(credentials or {}), **(fs_args or {}))
        self._root = root.rstrip("/")
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        if not self._fs.isdir(self._root):
            raise DatasetError(f"image folder {self._root!r} does not exist or is not a folder")
        files = sorted(self._fs.find(self._root))
        relative = [PurePosixPath(f).relative_to(self._root).as_posix() for f in files]
        return pd.DataFrame(
            {"path": [self._openable(f) for f in files], "relative_path": relative}
        )

    def save(self, data: pd.DataFrame) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _openable(self, path: str) -> str:
        return path if self._protocol == "file" else f"{self._protocol}://{path}"

    def _exists(self) -> bool:
        return self._fs.isdir(self._root)

    def _describe(self) -> dict[str, Any]:
        return {"path": self._root, "protocol": self._protocol}


class TorchStateDictDataset(AbstractVersionedDataset[dict, dict]):
    """A ``state_dict`` saved with ``torch.save``, loaded with ``weights_only=True``.

    Saves are atomic (temporary file, then rename). ``filepath: null`` makes an
    optional input that loads as ``None``, which is how "no pretrained weights" is
    expressed in the catalog.
    """

    def __init__(
        self,
        *,
        filepath: str | None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._optional = not filepath
        protocol, path = get_protocol_and_path(str(filepath or ""), version)
        self._protocol = protocol
        fs_args = dict(fs_args or {})
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def load(self) -> dict[str, torch.Tensor] | None:
        if self._optional:
            return None
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        if not self._fs.exists(load_path):
            raise DatasetError(f"state_dict file {load_path!r} does not exist")
        with self._fs.open(load_path, "rb") as file:
            return state_dict_from(load_weights(file, load_path), load_path)

    def save(self, data: dict[str, torch.Tensor]) -> None:
        if self._optional:
            raise DatasetError("cannot save a state_dict: this catalog entry has no filepath")
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        save_atomically(data, save_path, self._fs)
        self._fs.invalidate_cache(save_path)

    def _exists(self) -> bool:
        if self._optional:
            return False
        try:
            return self._fs.exists(get_filepath_str(self._get_load_path(), self._protocol))
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}


class MlflowPyTorchModelDataset(AbstractDataset[dict, None]):
    """Logs a model to the active MLflow run with ``mlflow.pytorch``.

    Saves a mapping ``{"model": nn.Module, "input_example": np.ndarray}``. The
    signature declares a variable batch size, so MLflow's torch.export program
    accepts any batch; pip requirements are given, which spares MLflow a slow
    subprocess that imports the model to infer them.
    """

    def __init__(
        self,
        *,
        name: str = "model",
        pip_requirements: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._name = name
        self._pip_requirements = pip_requirements
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        if mlflow.active_run() is None:
            raise DatasetError(f"{type(self).__name__}: no active MLflow run to log to")
        example = data["input_example"]
        signature = ModelSignature(
            inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
            outputs=Schema([TensorSpec(example.dtype, (-1, data["num_classes"]))]),
        )
        mlflow.pytorch.log_model(
            data["model"],
            name=self._name,
            signature=signature,
            input_example=example,
            pip_requirements=self._pip_requirements or _installed_requirements(),
        )

    def load(self) -> None:
        raise DatasetError(
            f"{type(self).__name__} only logs; load the model with mlflow.pyfunc.load_model"
        )

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name}


def _installed_requirements() -> list[str]:
    return [f"{package}=={version(package)}" for package in ("torch", "torchvision", "mlflow")]


class CheckpointDirectoryDataset(AbstractDataset[None, CheckpointStore]):
    """The folder where training writes a checkpoint every epoch.

    Loads a :class:`~kedro_torch.checkpoints.CheckpointStore` for the train node
    to write to and resume from: checkpoints are written during the node, so the
    catalog hands over the place rather than receiving a finished object.
    """

    def __init__(
        self,
        *,
        path: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        protocol, directory = get_protocol_and_path(str(path))
        fs_args = dict(fs_args or {})
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **fs_args)
        self._directory = directory
        self.metadata = metadata

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._directory, self._fs)

    def save(self, data: CheckpointStore) -> None:
        raise DatasetError(f"{type(self).__name__} is written through the store it loads")

    def _exists(self) -> bool:
        return self._fs.exists(f"{self._directory.rstrip('/')}/last.pt")

    def _describe(self) -> dict[str, Any]:
        return {"path": self._directory}
