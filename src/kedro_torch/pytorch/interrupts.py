"""Stopping well on SIGTERM and SIGINT.

Kubernetes, SLURM and spot preemption send SIGTERM, a terminal Ctrl-C sends SIGINT;
either used to end the process mid-step, losing the epoch and leaving nothing to
resume. Here the handler only notes the signal (no I/O in a handler); the training
loop reads the note at its next optimizer-step boundary, writes a checkpoint and
raises :class:`TrainingInterrupted`. A second SIGINT raises :class:`Interrupted` at
once, for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        if request.signum is not None and signum == signal.SIGINT:
            raise Interrupted(signum, "stopped at once by a second SIGINT")
        request.signum = signum

    previous = {signum: signal.signal(signum, note) for signum in SIGNALS}
    try:
        yield request
    finally:
        restore_handlers(previous)
