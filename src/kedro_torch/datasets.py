"""Kedro datasets for what kedro-datasets has no entry for: image folders and image
tables, the decoded-image cache, torch state_dicts, TorchScript modules and
torch.export programs. The one that logs the classifier to MLflow is in
:mod:`kedro_torch.tracking.datasets`, with the rest of the code that talks to MLflow."""

from __future__ import annotations

import abc
import os
from pathlib import PurePosixPath
from typing import IO, Any, ClassVar

import fsspec
import pandas as pd
import torch
from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str, get_protocol_and_path
from torch.export import ExportedProgram

from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.checkpoints import (
    CheckpointStore,
    load_weights,
    state_dict_from,
    write_atomically,
)
from kedro_torch.pytorch.data import ImageTable, list_folder


def _writable_filesystem(
    protocol: str, credentials: dict[str, Any] | None, fs_args: dict[str, Any] | None
) -> fsspec.AbstractFileSystem:
    """An fsspec filesystem to write to; locally it creates missing parent folders."""
    fs_args = dict(fs_args or {})
    if protocol == "file":
        fs_args.setdefault("auto_mkdir", True)
    return fsspec.filesystem(protocol, **(credentials or {}), **fs_args)


class ImageFolderDataset(AbstractDataset[None, pd.DataFrame]):
    """Lists the files and folders under a folder, on any fsspec filesystem, without
    reading them: :func:`kedro_torch.pytorch.data.list_folder` on the catalog's path
    and credentials.
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
        try:
            return list_folder(self._root, self._fs)
        except FileNotFoundError as error:
            raise DatasetError(str(error)) from error

    def save(self, data: pd.DataFrame) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _exists(self) -> bool:
        return self._fs.isdir(self._root)

    def _describe(self) -> dict[str, Any]:
        return {"path": self._root, "protocol": self._protocol}


class ImageTableDataset(AbstractDataset[None, ImageTable]):
    """A CSV or Parquet table listing images (chosen by the file's extension).

    Loads an :class:`~kedro_torch.pytorch.data.ImageTable`: the table, read as text so
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


class OptionalTableDataset(AbstractDataset[None, pd.DataFrame]):
    """A table of samples named at run time (``--params raw_table_path=...``), read by
    kedro-datasets' pandas dataset for its extension (CSV, Parquet, Excel, JSON).

    ``filepath: null`` makes an optional input that loads as ``None``, for runs that
    read images. For another source (SQL, a database table), replace the catalog entry
    with that dataset's own type: the pipeline takes any DataFrame.
    """

    READERS: ClassVar[dict[str, str]] = {
        ".csv": "CSVDataset", ".parquet": "ParquetDataset", ".xlsx": "ExcelDataset",
        ".xls": "ExcelDataset", ".json": "JSONDataset"}

    def __init__(self, *, filepath: str | None, load_args: dict[str, Any] | None = None,
                 credentials: dict[str, Any] | None = None,
                 fs_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None):
        self._filepath = str(filepath) if filepath else None
        self.metadata = metadata
        self._dataset = None
        if self._filepath is not None:
            suffix = PurePosixPath(get_protocol_and_path(self._filepath)[1]).suffix.lower()
            if suffix not in self.READERS:
                raise DatasetError(
                    f"raw_table: cannot tell how to read {self._filepath!r}; give a "
                    f"{', '.join(self.READERS)} file, or set the catalog entry's type")
            import kedro_datasets.pandas as readers  # noqa: PLC0415 (only when a table is read)

            self._dataset = getattr(readers, self.READERS[suffix])(
                filepath=self._filepath, load_args=load_args, credentials=credentials,
                fs_args=fs_args)

    def load(self) -> pd.DataFrame | None:
        return None if self._dataset is None else self._dataset.load()

    def save(self, data: pd.DataFrame) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only")

    def _exists(self) -> bool:
        return self._dataset is not None and self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}


class ImageStoreDataset(AbstractDataset[ImageStore, ImageStore]):
    """The decoded-image cache in a local folder (see :mod:`kedro_torch.pytorch.cache`).

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


class _TorchFileDataset(AbstractVersionedDataset):
    """A versioned file written by a torch serialiser, atomically (temporary file, then
    rename), so a crash never leaves a half-written file where a good one was."""

    def __init__(
        self,
        *,
        filepath: str,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        protocol, path = get_protocol_and_path(str(filepath), version)
        self._protocol = protocol
        self._fs = _writable_filesystem(protocol, credentials, fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    @abc.abstractmethod
    def _read(self, file: IO[bytes], path: str) -> Any: ...

    @abc.abstractmethod
    def _write(self, data: Any, file: IO[bytes]) -> None: ...

    def load(self) -> Any:
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        if not self._fs.exists(load_path):
            raise DatasetError(f"file {load_path!r} does not exist")
        with self._fs.open(load_path, "rb") as file:
            return self._read(file, load_path)

    def save(self, data: Any) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        write_atomically(save_path, lambda file: self._write(data, file), self._fs)
        self._fs.invalidate_cache(save_path)

    def _exists(self) -> bool:
        try:
            return self._fs.exists(get_filepath_str(self._get_load_path(), self._protocol))
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}


class TorchStateDictDataset(_TorchFileDataset):
    """A ``state_dict`` saved with ``torch.save``, loaded with ``weights_only=True``.

    ``filepath: null`` makes an optional input that loads as ``None``, which is how
    "no pretrained weights" is expressed in the catalog.
    """

    def __init__(self, *, filepath: str | None, **kwargs: Any):
        self._optional = not filepath
        super().__init__(filepath=filepath or "", **kwargs)

    def load(self) -> dict[str, torch.Tensor] | None:
        return None if self._optional else super().load()

    def save(self, data: dict[str, torch.Tensor]) -> None:
        if self._optional:
            raise DatasetError("cannot save a state_dict: this catalog entry has no filepath")
        super().save(data)

    def _exists(self) -> bool:
        return not self._optional and super()._exists()

    def _read(self, file: IO[bytes], path: str) -> dict[str, torch.Tensor]:
        return state_dict_from(load_weights(file, path), path)

    def _write(self, data: dict[str, torch.Tensor], file: IO[bytes]) -> None:
        torch.save(data, file)


class CheckpointDirectoryDataset(AbstractDataset[None, CheckpointStore]):
    """The folder below which training writes its checkpoints, one folder per
    training configuration (see :meth:`CheckpointStore.for_identity`).

    Loads a :class:`~kedro_torch.pytorch.checkpoints.CheckpointStore` for the train node
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
        self._fs = _writable_filesystem(protocol, credentials, fs_args)
        self._directory = directory
        self.metadata = metadata

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._directory, self._fs)

    def save(self, data: CheckpointStore) -> None:
        raise DatasetError(f"{type(self).__name__} is written through the store it loads")

    def _exists(self) -> bool:
        return bool(self.load().identities())

    def _describe(self) -> dict[str, Any]:
        return {"path": self._directory}


class TorchScriptDataset(_TorchFileDataset):
    """A TorchScript module (``torch.jit.save``), loaded onto the CPU."""

    def _read(self, file: IO[bytes], path: str) -> torch.jit.ScriptModule:
        return torch.jit.load(file, map_location="cpu")

    def _write(self, data: torch.jit.ScriptModule, file: IO[bytes]) -> None:
        torch.jit.save(data, file)


class ExportedProgramDataset(_TorchFileDataset):
    """A ``torch.export`` program (.pt2).

    ``torch.export.load`` unpickles parts of the file, unlike the project's
    ``weights_only`` loading of state_dicts: load only programs you produced.
    """

    def _read(self, file: IO[bytes], path: str) -> ExportedProgram:
        return torch.export.load(file)

    def _write(self, data: ExportedProgram, file: IO[bytes]) -> None:
        torch.export.save(data, file)


class SqliteDatabaseDataset(AbstractDataset[None, str]):
    """A local SQLite file, loaded as its SQLAlchemy URL (``sqlite:////abs/path.db``):
    the default storage of Optuna studies, which a study writes to trial by trial
    rather than receiving as one object. The folder is created on load."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = os.path.abspath(filepath)
        self.metadata = metadata

    def load(self) -> str:
        os.makedirs(os.path.dirname(self._filepath), exist_ok=True)
        return f"sqlite:///{self._filepath}"

    def save(self, data: str) -> None:
        raise DatasetError(f"{type(self).__name__} is written through the URL it loads")

    def _exists(self) -> bool:
        return os.path.isfile(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
