"""Stopping well on SIGTERM and SIGINT.

Kubernetes, SLURM and spot preemption send SIGTERM, a terminal Ctrl-C sends SIGINT;
either used to end the process mid-step, losing the epoch and leaving nothing to
resume. Here the handler only notes the signal (no I/O in a handler); the training
loop reads the note at its next optimizer-step boundary, writes a checkpoint and
raises :class:`TrainingInterrupted`. A second SIGINT stops at once, for a user who
will not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal, after checkpointing at a step boundary."""

    def __init__(self, signum: int, epoch: int, batch: int, checkpoint: str | None):
        self.signum, self.epoch, self.batch, self.checkpoint = signum, epoch, batch, checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint else "; no checkpoint folder was given"
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} in epoch {epoch} after batch "
            f"{batch}{where}"
        )

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


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
            raise KeyboardInterrupt
        request.signum = signum

    previous = {signum: signal.signal(signum, note) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
