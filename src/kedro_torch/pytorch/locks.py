"""Advisory file locks (POSIX ``flock``) that keep runs in one project apart.

A lock belongs to an open file, which this module keeps open for the rest of the
process (or until :func:`release`): one per path, so that taking a lock twice in
one process never conflicts with itself, and DataLoader workers forked from the
process share its locks. The operating system drops them when the process ends,
however it ends, so a killed run never leaves a folder locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_held: dict[str, IO[bytes]] = {}


class Busy(RuntimeError):
    """Another process holds the lock."""


def _file(path: str | Path) -> IO[bytes]:
    key = os.path.abspath(path)
    if key not in _held:
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        _held[key] = open(key, "a+b")  # noqa: SIM115 - kept open: the lock lives with it
    return _held[key]


def share(path: str | Path) -> None:
    """Say that this process uses what ``path`` guards; waits while one is alone in it."""
    fcntl.flock(_file(path), fcntl.LOCK_SH)


def hold(path: str | Path, busy: str) -> None:
    """Take ``path`` for this process alone, or raise :class:`Busy` saying ``busy``."""
    try:
        fcntl.flock(_file(path), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(busy) from None


def alone(path: str | Path) -> bool:
    """Whether no other process shares ``path`` now; this one keeps its shared lock."""
    try:
        fcntl.flock(_file(path), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        fcntl.flock(_file(path), fcntl.LOCK_SH)  # a failed upgrade may have dropped it


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Have ``path`` alone for a moment, waiting for any other process to let go."""
    file = _file(path)
    fcntl.flock(file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file, fcntl.LOCK_UN)


@contextmanager
def if_free(path: str | Path) -> Iterator[bool]:
    """Hold ``path`` for a moment if no process holds it, this one included (a lock of
    this process's own is another open file, so it counts as held); yields whether it
    was free. Never waits."""
    with open(path, "a+b") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            free = False
        else:
            free = True
        try:
            yield free
        finally:
            if free:
                fcntl.flock(file, fcntl.LOCK_UN)


def release(path: str | Path) -> None:
    """Let other processes take ``path``."""
    file = _held.pop(os.path.abspath(path), None)
    if file is not None:
        file.close()
