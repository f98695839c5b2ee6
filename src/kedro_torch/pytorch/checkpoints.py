"""Saving and loading tensors safely.

Loading always uses ``torch.load(weights_only=True)``: a file that would need full
unpickling (and so could run arbitrary code) is refused with an error that says
so. Saving goes to a temporary file that is renamed into place, so a crash never
leaves a half-written file where a good one was; a disk that fills up says so,
naming the file. A checkpoint cut short or damaged anyway (a copy that stopped half
way, a disk that failed) is found by the checksums its zip archive holds, named, and
set aside, so that it never stops every later resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import posixpath
import random
import socket
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import IO, Any

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from kedro_torch.pytorch import locks
from kedro_torch.pytorch.distributed import is_main_process

logger = logging.getLogger(__name__)


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


class UnreadableCheckpointError(ValueError):
    """A file of a checkpoint folder (a step checkpoint, ``best.pt``, ``identity.json``)
    that is cut short or damaged: ``path`` names it, ``why`` says how it fails."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path} cannot be read: {why}")


class DiskFullError(OSError):
    """No space was left to write a file; nothing of it was left behind."""

    def __str__(self) -> str:
        return self.strerror


# What a filesystem that has no room left says: full, or the user's quota used up.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def save_atomically(obj: Any, path: str, fs: fsspec.AbstractFileSystem | None = None) -> None:
    """``torch.save`` to ``path`` through a temporary file renamed into place."""
    write_atomically(path, lambda file: torch.save(obj, file), fs)


def write_atomically(path: str, write: Callable[[IO[bytes]], None],
                     fs: fsspec.AbstractFileSystem | None = None) -> None:
    """``write`` a file object that becomes ``path`` once whole: through a temporary file
    renamed into place, so ``path`` is never half written, and no temporary is left.

    A disk without room raises :class:`DiskFullError` naming ``path``. torch reports it
    as ``[enforce fail at inline_container.cc] unexpected pos``, the ``No space left on
    device`` of the write only in the chain of errors behind it.
    """
    fs = fs or fsspec.filesystem("file")
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with fs.open(temporary, "wb") as file:
            write(file)
        fs.mv(temporary, path)
    except Exception as error:
        full = _no_space(error)
        if full is None:
            raise
        raise DiskFullError(full.errno, _disk_full_message(path, full), path) from error
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def _no_space(error: BaseException | None) -> OSError | None:
    """The "no space left" among ``error`` and the errors it was raised from, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _disk_full_message(path: str, error: OSError) -> str:
    return (f"{os.strerror(error.errno)}: could not write {path}. Nothing of it was left "
            "behind (a file already there is as it was). Free space on that disk, or write "
            "to another one, then run again")


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
    configuration at once cannot either, and says who took it, so that a process
    killed outright is found by the next (:meth:`abandoned_claim`).

    A file that cannot be read (cut short, damaged) is renamed ``<name>.corrupt``
    beside it with a warning naming it (:meth:`resume_point`, :meth:`identities`), so
    that it never stops a later run: the checkpoints before it still resume.
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
                self._write_json(IDENTITY_FILE, self.identity)
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
        found = []
        for path in self.fs.ls(self.directory, detail=False):
            name = posixpath.basename(path)
            if name.startswith("step-") and name.endswith(".pt"):
                try:
                    found.append((self.fs.modified(path).timestamp(), name))
                except FileNotFoundError:
                    continue  # pruned or set aside since it was listed
        return [name for _, name in sorted(found)]

    def load(self, name: str | None = None) -> dict[str, Any] | None:
        """The file ``name``, or the newest step checkpoint that can be read (see
        :meth:`resume_point`, which sets aside those that cannot); None if there is none."""
        if name is None:
            name = self.resume_point()
            if name is None:
                return None
        path = self.path(name)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as file:
            try:
                return load_weights(file, path)
            except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
                raise UnreadableCheckpointError(path, f"torch cannot load it ({error})") from None

    def check(self, name: str) -> None:
        """Raise :class:`UnreadableCheckpointError` unless the file ``name`` is whole
        (``FileNotFoundError`` if there is none).

        ``torch.save`` writes a zip archive whose index is at its end and whose parts
        carry checksums: a file cut short has lost its index, a damaged one fails a
        checksum (``torch.load`` itself checks neither, and would load damaged tensors).
        """
        path = self.path(name)
        with self.fs.open(path, "rb") as file:
            try:
                with zipfile.ZipFile(file) as archive:
                    parts = archive.namelist()
                    damaged = archive.testzip()
            except (zipfile.BadZipFile, EOFError, zlib.error) as error:
                raise UnreadableCheckpointError(
                    path, f"it is cut short, or is not a checkpoint ({error})") from None
        if damaged is not None:
            raise UnreadableCheckpointError(
                path, f"it is damaged: its part {damaged} does not match its checksum")
        if not any(part.endswith("data.pkl") for part in parts):
            raise UnreadableCheckpointError(path, "it is a zip archive that torch.save did "
                                                  "not write")

    def set_aside(self, name: str, error: UnreadableCheckpointError) -> str:
        """Rename the file ``name``, which ``error`` says cannot be read, to
        ``<name>.corrupt`` beside it, saying so; return the new path. The main process
        does it (the others skip the file as they find it unreadable, or gone)."""
        aside = f"{self.path(name)}.corrupt"
        if is_main_process():
            self.fs.mv(self.path(name), aside)
            logger.warning("%s. Set aside as %s", error, aside)
        return aside

    def resume_point(self, strict: bool = False, with_best: bool = False,
                     set_aside: bool = True) -> str | None:
        """The step checkpoint a resume continues: the newest that is whole; None if
        there is none.

        A step checkpoint that is not whole is set aside and the one before it taken.
        ``with_best`` (``keep_best`` or early stopping) asks for ``best.pt`` too, once
        an epoch has been trained: without the best epoch's weights the run cannot end
        as it would have, so if it is missing or not whole (then set aside) the answer
        is None, saying that training starts afresh. ``strict``
        (``training.resume: true``) raises instead, naming the file and changing
        nothing. ``set_aside=False`` changes nothing either: it tells which checkpoint a
        resume would take, as the tracking hooks ask before training.
        """
        found = self._newest_whole(strict, set_aside)
        if found is None or not with_best or _epochs_done(found) == 0:
            return found
        return found if self._best_whole(strict, set_aside) else None

    def _newest_whole(self, strict: bool, set_aside: bool) -> str | None:
        passed = False
        for name in reversed(self.steps()):
            try:
                self.check(name)
            except FileNotFoundError:
                continue  # set aside by the main process, or pruned, since it was listed
            except UnreadableCheckpointError as error:
                if strict:
                    raise _refusal(error, (
                        "rather than go back to an earlier checkpoint: move it away to "
                        "continue the one before it, or set training.resume: auto, which sets "
                        "it aside and continues the newest checkpoint that can be read (or "
                        "starts afresh if none can)")) from None
                if set_aside:
                    self.set_aside(name, error)
                passed = True
                continue
            return name
        if passed and set_aside and is_main_process():
            logger.warning("No checkpoint in %s can be read: training starts afresh",
                           self.directory)
        return None

    def _best_whole(self, strict: bool, set_aside: bool) -> bool:
        try:
            self.check(BEST_FILE)
            return True
        except FileNotFoundError:
            error = UnreadableCheckpointError(self.path(BEST_FILE), "it is missing")
        except UnreadableCheckpointError as unreadable:
            error = unreadable
        if strict:
            raise _refusal(error, (
                "rather than end without the best epoch's weights, which keep_best and early "
                "stopping keep in it: set training.resume: auto (which sets it aside) or false "
                "to start afresh")) from None
        if set_aside and self.fs.exists(error.path):
            self.set_aside(BEST_FILE, error)
        if set_aside and is_main_process():
            logger.warning("%s has no readable best.pt, the best epoch's weights that keep_best "
                           "and early stopping keep: without them the run cannot end as it "
                           "would have, so training starts afresh", self.directory)
        return False

    def claim(self, tags: Mapping[str, str] | None = None) -> None:
        """Take the folder for this process until :meth:`release`; a local folder that
        another run's training holds is refused (a remote one cannot be locked).

        The claim file records who took it: the process, its host and ``tags`` (the
        MLflow run's id, from the tracking layer). :meth:`release` removes it, so one
        left behind, in a folder no process holds, is that of a process killed outright.
        """
        if isinstance(self.fs, LocalFileSystem) and is_main_process():
            locks.hold(self.path(LOCK_FILE), (
                f"another run is training this configuration now, with its checkpoints in "
                f"{self.directory}: wait for it to end, or give this run other parameters "
                "(such as training.seed)"))
            self._write_json(CLAIM_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "tags": dict(tags or {})})

    def release(self) -> None:
        if isinstance(self.fs, LocalFileSystem) and is_main_process():
            if self.fs.exists(self.path(CLAIM_FILE)):
                self.fs.rm(self.path(CLAIM_FILE))
            locks.release(self.path(LOCK_FILE))

    def abandoned_claim(self) -> dict[str, Any] | None:
        """The claim (``pid``, ``host``, ``tags``) of a process that took this folder
        and ended without letting it go: killed outright (SIGKILL, the OOM killer, a
        power cut), so that nothing it tracked was closed. None if no such claim is
        left, or its process still holds the folder; always None for a remote folder,
        which is never locked."""
        claim = self.path(CLAIM_FILE)
        if not isinstance(self.fs, LocalFileSystem) or not self.fs.exists(claim):
            return None
        with locks.if_free(self.path(LOCK_FILE)) as free:
            if not free:
                return None
            try:
                record = json.loads(self.fs.cat(claim))
            except (FileNotFoundError, ValueError):
                return None  # let go meanwhile, or never written whole
        return record if isinstance(record, dict) else None

    def tags(self, name: str | None = None) -> dict[str, str]:
        """The tags a step checkpoint carries (``Trainer(checkpoint_tags=...)``): those
        of ``name``, or of the one a resume would continue (:meth:`resume_point`, asked
        to change nothing). In a local folder read through a memory map, without
        reading its tensors."""
        if name is None:
            name = self.resume_point(set_aside=False)
            if name is None:
                return {}
        if isinstance(self.fs, LocalFileSystem):
            path = self.path(name)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError):
                state = self.load(name)  # which says why it is refused
        else:
            state = self.load(name)
        return dict(state.get("tags") or {})

    def for_identity(self, identity: Mapping[str, Any], keep: int = 1) -> CheckpointStore:
        """The folder of the training configuration ``identity`` describes."""
        return CheckpointStore(self.path(fingerprint(identity)), self.fs, keep, identity)

    def identities(self) -> dict[str, dict[str, Any] | None]:
        """Every configuration folder below this one that holds a checkpoint, newest
        first, with the identity it was made with: None where its identity file is
        missing or cannot be read (then set aside, saying so; the configuration's next
        checkpoint writes it again)."""
        if not self.fs.isdir(self.directory):
            return {}
        found = {}
        for folder in self.fs.ls(self.directory, detail=False):
            store = CheckpointStore(folder, self.fs)
            steps = store.steps()
            if not steps:
                continue
            try:
                newest = self.fs.modified(store.path(steps[-1])).timestamp()
            except FileNotFoundError:
                continue
            found[folder] = (newest, store._read_identity())
        return {folder: identity for folder, (_, identity) in
                sorted(found.items(), key=lambda item: item[1][0], reverse=True)}

    def _read_identity(self) -> dict[str, Any] | None:
        path = self.path(IDENTITY_FILE)
        try:
            identity = json.loads(self.fs.cat(path))
        except FileNotFoundError:
            return None
        except ValueError as error:  # not UTF-8, or not JSON
            why = f"it is cut short or damaged ({error})"
        else:
            if isinstance(identity, dict):
                return identity
            why = f"it holds a {type(identity).__name__}, not a mapping of parameters"
        self.set_aside(IDENTITY_FILE, UnreadableCheckpointError(
            path, f"{why}; the configuration's next checkpoint writes it again"))
        return None

    def _write_json(self, name: str, value: Any) -> None:
        text = json.dumps(value).encode()
        write_atomically(self.path(name), lambda file: file.write(text), self.fs)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.directory!r})"


IDENTITY_FILE = "identity.json"
BEST_FILE = "best.pt"
CLAIM_FILE = "claim.json"
LOCK_FILE = ".lock"


def _epochs_done(step: str) -> int:
    """The epochs a step checkpoint's name says were done: ``step-<epochs>-<batches>.pt``
    (one, for a name not written by :meth:`CheckpointStore.save`)."""
    try:
        return int(step.split("-")[1])
    except (IndexError, ValueError):
        return 1


def _refusal(error: UnreadableCheckpointError, then: str) -> UnreadableCheckpointError:
    """``training.resume: true`` stopped by a file that cannot be read."""
    return UnreadableCheckpointError(
        error.path, f"{error.why}. training.resume is true, so the run stops {then}")


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
