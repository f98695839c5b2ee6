"""Saving and loading tensors safely.

Loading always uses ``torch.load(weights_only=True)``: a file that would need full
unpickling (and so could run arbitrary code) is refused with an error that says
so. Saving goes to a temporary file that is renamed into place, so a crash never
leaves a half-written file where a good one was.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping
from typing import IO, Any

import fsspec
import numpy as np
import torch

from kedro_torch.pytorch.distributed import is_main_process


class UnsafeCheckpointError(ValueError):
    """The file holds Python objects that only full unpickling could rebuild."""


def load_weights(file: IO[bytes], name: str) -> Any:
    """``torch.load`` with ``weights_only=True``, onto the CPU."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{name}: refused to load. It holds Python objects beyond tensors and plain "
            "containers, and loading those would run code from the file "
            "(torch.load(weights_only=True) is the only loading allowed). Re-save just "
            f"the weights with torch.save(model.state_dict(), path). Details: {error}"
        ) from error


def state_dict_from(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded file: the dict itself, or under "state_dict"/"model"."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ValueError(
        f"{name}: expected a state_dict (a mapping of names to tensors), or a checkpoint "
        f"dict holding one under 'state_dict' or 'model'; got {type(obj).__name__}"
    )


def save_atomically(obj: Any, path: str, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """``torch.save`` to ``path`` through a temporary file renamed into place."""
    fs = fs or fsspec.filesystem("file")
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with fs.open(temporary, "wb") as file:
            torch.save(obj, file)
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


class CheckpointStore:
    """A folder of training checkpoints (``last.pt``, ``best.pt``), on any fsspec filesystem.

    Written only by the main process; read with ``weights_only=True``. Everything
    stored is tensors and plain containers, so nothing is ever unpickled.
    """

    def __init__(self, directory: str, fs: fsspec.AbstractFileSystem | None = None):
        self.fs = fs or fsspec.filesystem("file", auto_mkdir=True)
        self.directory = directory.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def save(self, state: dict[str, Any], name: str = "last.pt") -> None:
        if is_main_process():
            self.fs.makedirs(self.directory, exist_ok=True)
            save_atomically(state, self.path(name), self.fs)

    def load(self, name: str = "last.pt") -> dict[str, Any] | None:
        path = self.path(name)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as file:
            return load_weights(file, path)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.directory!r})"


def capture_rng_state(generators: list[torch.Generator]) -> dict[str, Any]:
    """Every random state a resumed run needs to continue exactly.

    NumPy's state is turned into a tensor and ints so that the checkpoint loads
    with ``weights_only=True``.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [generator.get_state() for generator in generators],
    }


def restore_rng_state(state: dict[str, Any], generators: list[torch.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if len(state["generators"]) != len(generators):
        raise ValueError(
            f"the checkpoint holds {len(state['generators'])} sampler generator states, "
            f"this run has {len(generators)}: were the data settings changed?"
        )
    for generator, generator_state in zip(generators, state["generators"], strict=True):
        generator.set_state(generator_state)
