"""Saving and loading tensors safely.

Loading always uses ``torch.load(weights_only=True)``: a file that would need full
unpickling (and so could run arbitrary code) is refused with an error that says
so. Saving goes to a temporary file that is renamed into place, so a crash never
leaves a half-written file where a good one was.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import IO, Any

import fsspec
import torch


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
