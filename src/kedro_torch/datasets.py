"""Kedro datasets for what kedro-datasets has no entry for: image folders and image
tables, the decoded-image cache, torch state_dicts, and a PyTorch model logged to
MLflow with its signature."""

from __future__ import annotations

import os
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

from kedro_torch.checkpoints import load_weights, save_atomically, state_dict_from
from kedro_torch.data import ImageTable
from kedro_torch.image_store import ImageStore


class ImageFolderDataset(AbstractDataset[None, pd.DataFrame]):
    """Lists the files and folders under a folder, on any fsspec filesystem, without
    reading them.

    Loads a DataFrame with ``path`` (openable by fsspec), ``relative_path`` (POSIX,
    relative to the folder) and ``is_dir`` for every file and subfolder; folders are
    listed so that an empty class folder can be noticed. Which files are images and
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
        # The local filesystem lists absolute paths, so a relative root must be one too.
        self._root = (os.path.abspath(root) if self._protocol == "file" else root).rstrip("/")
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        if not self._fs.isdir(self._root):
            raise DatasetError(f"image folder {self._root!r} does not exist or is not a folder")
        found = self._fs.find(self._root, withdirs=True, detail=True)
        entries = sorted(
            (name, info["type"] == "directory") for name, info in found.items()
            if name.rstrip("/") != self._root
        )
        return pd.DataFrame(
            {
                "path": [self._openable(name) for name, _ in entries],
                "relative_path": [
                    PurePosixPath(name).relative_to(self._root).as_posix() for name, _ in entries
                ],
                "is_dir": [is_dir for _, is_dir in entries],
            }
        )

    def save(self, data: pd.DataFrame) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _openable(self, path: str) -> str:
        return path if self._protocol == "file" else f"{self._protocol}://{path}"

    def _exists(self) -> bool:
        return self._fs.isdir(self._root)

    def _describe(self) -> dict[str, Any]:
        return {"path": self._root, "protocol": self._protocol}


class ImageTableDataset(AbstractDataset[None, ImageTable]):
    """A CSV or Parquet table listing images (chosen by the file's extension).

    Loads an :class:`~kedro_torch.data.ImageTable`: the table, read as text so
    labels such as ``007`` stay as written, and the folder it sits in, from which
    the pipeline resolves relative image paths. ``filepath: null`` makes an optional
    input that loads as ``None``, for runs that read an image folder instead.
    """

    def __init__(
        self,
        *,
        filepath: str | None,
        load_args: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._filepath = str(filepath) if filepath else None
        self._load_args = dict(load_args or {})
        self._protocol, self._path = get_protocol_and_path(self._filepath or "")
        self._fs = fsspec.filesystem(self._protocol, **(credentials or {}), **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> ImageTable | None:
        if self._filepath is None:
            return None
        if not self._fs.isfile(self._path):
            raise DatasetError(f"image table {self._filepath!r} does not exist")
        with self._fs.open(self._path, "rb") as file:
            if PurePosixPath(self._path).suffix.lower() == ".parquet":
                frame = pd.read_parquet(file, **self._load_args)
            else:
                frame = pd.read_csv(file, **({"dtype": str} | self._load_args))
        folder = str(PurePosixPath(self._path).parent)
        return ImageTable(
            frame, folder if self._protocol == "file" else f"{self._protocol}://{folder}"
        )

    def save(self, data: ImageTable) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _exists(self) -> bool:
        return self._filepath is not None and self._fs.isfile(self._path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}


class ImageStoreDataset(AbstractDataset[ImageStore, ImageStore]):
    """The decoded-image cache in a local folder (see :mod:`kedro_torch.image_store`).

    Loads the store saved there, or an empty one bound to the folder; saving a
    store writes its index and deletes the chunk files no longer used. The chunks
    are memory-mapped, so the folder must be on a local disk.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        protocol, folder = get_protocol_and_path(str(path))
        if protocol != "file":
            raise DatasetError(
                f"the image cache must be a local folder (it is memory-mapped), got {path!r}"
            )
        self._folder = folder
        self.metadata = metadata

    def load(self) -> ImageStore:
        return ImageStore.open(self._folder)

    def save(self, data: ImageStore) -> None:
        if data.folder != self._folder:
            raise DatasetError(
                f"this store belongs to {data.folder!r}, not to {self._folder!r}; build it "
                "from the store this dataset loads"
            )
        data.save()

    def _exists(self) -> bool:
        return ImageStore.open(self._folder).image_shape is not None

    def _describe(self) -> dict[str, Any]:
        return {"path": self._folder}


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
