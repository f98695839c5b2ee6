"""Stopping well on SIGTERM and SIGINT.

Kubernetes, SLURM and spot preemption send SIGTERM, a terminal Ctrl-C sends SIGINT;
either used to end the process mid-step, losing the epoch and leaving nothing to
resume. Here the handler only notes the signal (no I/O in a handler); the training
loop reads the note at its next optimizer-step boundary, writes a checkpoint and
raises :class:`TrainingInterrupted`. A second SIGINT raises :class:`Interrupted` at
once, for a user who will not wait.

Whatever the moment, a signal is never lost: every handler notes it for
:func:`received`, so an exception raised where Python drops it (a callback at a
fork), or an error the signal caused elsewhere (a worker process it killed), is still
seen as the interrupt it was (:func:`interruption`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the signals this process was sent, in order


def received() -> int | None:
    """The first SIGTERM or SIGINT this process received, if any."""
    return _received[0] if _received else None


def _note(signum: int) -> None:
    _received.append(signum)


def forget_signals() -> None:
    """For a process that runs one pipeline after another (a test session): what an
    earlier one received is not the next one's. A ``kedro`` command runs one pipeline,
    and keeps every signal it received from its start."""
    _received.clear()


def leave_ctrl_c_to_the_main_process(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: workers ignore SIGINT.

    A terminal's Ctrl-C signals every process in its foreground group; a worker that
    died of it would end the run with "DataLoader worker exited unexpectedly" instead
    of the checkpoint the main process writes, which then stops its workers itself.
    SIGTERM keeps its default: it is how worker processes are stopped.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Interrupted(Exception):
    """The process was asked to stop by a signal.

    An ``Exception``, unlike the ``KeyboardInterrupt`` Python raises for SIGINT: code
    that reports failures (a Kedro runner and its hooks) catches ``Exception``, so an
    interrupted run gets recorded as such rather than not at all.
    """

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


def interruption(error: BaseException | None) -> Interrupted | None:
    """The interrupt behind ``error``, or None for a failure of its own.

    An :class:`Interrupted` (or Python's ``KeyboardInterrupt``) anywhere in its chain
    of causes, as a Kedro dataset wraps it in its own error; else, once this process
    has received a signal, that signal: the error is one it caused (a DataLoader
    worker it killed first, an interrupt Python dropped and the work went on without).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return error
        if isinstance(error, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    signum = received()
    return Interrupted(signum) if signum is not None else None


def exit_on_signals() -> None:
    """Until a pipeline runs, and once it has: SIGTERM and SIGINT end the process with
    the shell's status for them (143, 130), saying so.

    Installed when the ``kedro`` command starts. Without it a Ctrl-C during start-up
    ends with Click's "Aborted!" and status 1, and SIGTERM ends the process without a
    word. No MLflow run is open then, so there is nothing to record.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum: int, frame: object) -> None:
        _note(signum)
        print(f"Interrupted: {Interrupted(signum)}", file=sys.stderr)
        raise SystemExit(128 + signum)

    for signum in SIGNALS:
        signal.signal(signum, leave)


class TrainingInterrupted(Interrupted):
    """Training stopped on a signal, after checkpointing at a step boundary."""

    def __init__(self, signum: int, epoch: int, batch: int, checkpoint: str | None):
        self.epoch, self.batch, self.checkpoint = epoch, batch, checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint else "; no checkpoint folder was given"
        super().__init__(signum, f"training stopped by {signal.Signals(signum).name} in epoch "
                                 f"{epoch} after batch {batch}{where}")


def raise_on_signals() -> dict[int, Any]:
    """Make SIGTERM and SIGINT raise :class:`Interrupted` from here on (in the main
    thread); return the handlers they had, for :func:`restore_handlers`.

    Without it SIGTERM ends the process on the spot, and SIGINT's KeyboardInterrupt
    passes by every ``except Exception``. Training installs its own, gentler handlers
    (:func:`stop_on_signals`) while it runs.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: object) -> None:
        _note(signum)
        raise Interrupted(signum)

    return {signum: signal.signal(signum, interrupt) for signum in SIGNALS}


def restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@dataclass
class StopRequest:
    """The signal received, if any; set by the handler, read by the loop."""

    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGTERM and SIGINT set a :class:`StopRequest` for the duration of the block.

    Python only lets the main thread install handlers; elsewhere (a runner's worker
    thread) the block runs with the process's handlers and the request stays empty.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def note(signum: int, frame: object) -> None:
        _note(signum)
        if request.signum is not None and signum == signal.SIGINT:
            raise Interrupted(signum, "stopped at once by a second SIGINT")
        request.signum = signum

    previous = {signum: signal.signal(signum, note) for signum in SIGNALS}
    try:
        yield request
    finally:
        restore_handlers(previous)
