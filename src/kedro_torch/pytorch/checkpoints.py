"""Saving and loading tensors safely.

Loading always uses ``torch.load(weights_only=True)``: a file that would need full
unpickling (and so could run arbitrary code) is refused with an error that says
so. Saving goes to a temporary file that is renamed into place, so a crash never
leaves a half-written file where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import posixpath
import random
from collections.abc import Mapping
from typing import IO, Any

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from kedro_torch.pytorch import locks
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
    r"""A folder of training checkpoints, on any fsspec filesystem.

    Each save writes ``step-<epochs done>-<batches done>.pt`` and keeps the newest
    ``keep`` of them (by the time written), so a crash during a save still leaves the
    one before; ``best.pt`` holds the best epoch's weights. Written only by the main
    process; read with ``weights_only=True``: everything stored is tensors and plain
    containers.

    :meth:`for_identity` gives each training configuration a folder of its own, named
    by a digest of what determines training, so that runs of different configurations,
    one after the other or at once, never read or overwrite each other's checkpoints;
    training takes its folder for itself (:meth:`claim`), so two runs of one
    configuration at once cannot either.
    """

    def __init__(self, directory: str, fs: fsspec.AbstractFileSystem | None = None,
                 keep: int = 1, identity: Mapping[str, Any] | None = None):
        self.fs = fs or fsspec.filesystem("file", auto_mkdir=True)
        self.directory = directory.rstrip("/")
        self.keep = keep
        self.identity = dict(identity) if identity is not None else None

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def save(self, state: dict[str, Any], name: str | None = None) -> str:
        """Write ``state`` (as the newest step checkpoint unless ``name`` says otherwise);
        return its path."""
        if name is None:
            progress = state.get("epoch_progress") or {}
            name = f"step-{state['epoch']:05d}-{progress.get('batches', 0):07d}.pt"
        path = self.path(name)
        if is_main_process():
            self.fs.makedirs(self.directory, exist_ok=True)
            if self.identity is not None and not self.fs.exists(self.path(IDENTITY_FILE)):
                self.fs.pipe(self.path(IDENTITY_FILE), json.dumps(self.identity).encode())
            save_atomically(state, path, self.fs)
            for old in self.steps()[:-self.keep]:
                self.fs.rm(self.path(old))
        return path

    def steps(self) -> list[str]:
        """The step checkpoints' file names, in the order they were written: a run
        started afresh writes epoch 1 after an earlier run's epoch 9, and it is its
        checkpoints that are newest."""
        if not self.fs.isdir(self.directory):
            return []
        found = [(self.fs.modified(path).timestamp(), posixpath.basename(path))
                 for path in self.fs.ls(self.directory, detail=False)]
        return [name for _, name in sorted(found)
                if name.startswith("step-") and name.endswith(".pt")]

    def load(self, name: str | None = None) -> dict[str, Any] | None:
        """The newest step checkpoint (or the file ``name``); None if there is none."""
        if name is None:
            steps = self.steps()
            if not steps:
                return None
            name = steps[-1]
        path = self.path(name)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as file:
            return load_weights(file, path)

    def claim(self) -> None:
        """Take the folder for this process until :meth:`release`; a local folder that
        another run's training holds is refused (a remote one cannot be locked)."""
        if isinstance(self.fs, LocalFileSystem) and is_main_process():
            locks.hold(self.path(LOCK_FILE), (
                f"another run is training this configuration now, with its checkpoints in "
                f"{self.directory}: wait for it to end, or give this run other parameters "
                "(such as training.seed)"))

    def release(self) -> None:
        if isinstance(self.fs, LocalFileSystem) and is_main_process():
            locks.release(self.path(LOCK_FILE))

    def tags(self) -> dict[str, str]:
        """The tags the newest step checkpoint carries (``Trainer(checkpoint_tags=...)``):
        in a local folder read through a memory map, without reading its tensors."""
        steps = self.steps()
        if not steps:
            return {}
        if isinstance(self.fs, LocalFileSystem):
            path = self.path(steps[-1])
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError:
                state = self.load(steps[-1])  # which says why it is refused
        else:
            state = self.load(steps[-1])
        return dict(state.get("tags") or {})

    def for_identity(self, identity: Mapping[str, Any], keep: int = 1) -> CheckpointStore:
        """The folder of the training configuration ``identity`` describes."""
        return CheckpointStore(self.path(fingerprint(identity)), self.fs, keep, identity)

    def identities(self) -> dict[str, dict[str, Any]]:
        """Every configuration folder below this one that holds a checkpoint, newest
        first, with the identity it was made with."""
        if not self.fs.isdir(self.directory):
            return {}
        found = {}
        for folder in self.fs.ls(self.directory, detail=False):
            store = CheckpointStore(folder, self.fs)
            steps = store.steps()
            if steps and self.fs.exists(store.path(IDENTITY_FILE)):
                newest = self.fs.modified(store.path(steps[-1])).timestamp()
                found[folder] = (newest, json.loads(self.fs.cat(store.path(IDENTITY_FILE))))
        return {folder: identity for folder, (_, identity) in
                sorted(found.items(), key=lambda item: item[1][0], reverse=True)}

    def __repr__(self) -> str:
        return f"CheckpointStore({self.directory!r})"


IDENTITY_FILE = "identity.json"
LOCK_FILE = ".lock"


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short digest of ``identity``, the same for equal values in any key order."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: before -> now`` for every key whose value differs."""
    return [f"{key}: {before.get(key)!r} in the checkpoint, {now.get(key)!r} now"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


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
