"""What a failed ``kedro run`` prints, and the status it exits with.

An error the project anticipates (one of the exception classes it defines: a bad
parameter, bad data, a checkpoint or store it cannot read, a host that does not
answer) carries a message written for the person who ran the command. Printed as
Python prints it, that message came last, after some 200 lines of traceback through
click, Kedro's session and the hooks. So it is printed alone, as one short block:
the message (what is wrong, the key, file or address, the value given and what was
expected), what to do, and the log file, which keeps the traceback. Any other error
(a bug, a library's exception) keeps its traceback, followed by one line naming the
node it came from and the log file.

Exit status: 2 for a bad parameter (as click gives for a bad option), 128 + the signal
for an interrupt (130 for SIGINT, 143 for SIGTERM), 1 for any other failure.
``KEDRO_TORCH_TRACEBACK=1`` prints the traceback of an anticipated error too.

Imports only the standard library, click and Kedro's hook marker: the command line
imports it for every command.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from kedro.framework.hooks import hook_impl

TRACEBACK_SWITCH = "KEDRO_TORCH_TRACEBACK"
BAD_PARAMETERS = 2
FAILED = 1


@dataclass(frozen=True)
class Kind:
    """How an anticipated error is headed, the status it exits with, and what to do
    where its message says only what is wrong."""

    title: str = "Error"
    exit_code: int = FAILED
    advice: str = ""


# Anticipated errors that are headed or exit otherwise than the rest, by the module and
# name of their class (or a base class): naming them imports nothing.
KINDS = {
    "kedro_torch.pytorch.config.ParameterError": Kind(
        "Bad parameter", BAD_PARAMETERS,
        "Correct it in conf/ (parameters_*.yml) or with --params, and run again."),
}
ANTICIPATED = Kind()


def anticipated(error: BaseException) -> BaseException | None:
    """The error the project anticipated behind ``error``: the first in its chain of
    causes (a Kedro ``DatasetError`` wraps what a dataset raised) whose class, or a
    base of it, the project defines. None for a bug or a library's own error."""
    while error is not None:
        if any(cls.__module__.startswith("kedro_torch.") for cls in type(error).__mro__):
            return error
        error = error.__cause__
    return None


def kind(error: BaseException) -> Kind:
    for cls in type(error).__mro__:
        found = KINDS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return ANTICIPATED


def exit_code(error: BaseException) -> int:
    """The status a command that ended on ``error`` exits with."""
    interrupted = _interruption(error)
    if interrupted is not None:
        return interrupted.exit_code
    known = anticipated(error)
    return kind(known).exit_code if known is not None else FAILED


def describe(error: BaseException, log_files: list[str] | None = None) -> str:
    """What is printed about ``error``, but for the traceback that precedes the line
    about an unexpected one."""
    log_files = log_file_names() if log_files is None else log_files
    interrupted = _interruption(error)
    if interrupted is not None:
        return f"Interrupted: {interrupted}"
    known = anticipated(error)
    if known is None:
        return (f"The run failed {_place()} on the error above, which the project does not "
                f"anticipate. {_log_sentence(log_files)}")
    found = kind(known)
    where = f" in node {_where.node!r}" if _where.node else ""
    message, *more = (str(known) or type(known).__name__).splitlines()
    lines = [f"{found.title}{where}: {message}", *(f"  {line}" for line in more)]
    if found.advice:
        lines.append(f"  {found.advice}")
    lines.append(f"  {_log_sentence(log_files)} {TRACEBACK_SWITCH}=1 prints the traceback "
                 "here.")
    return "\n".join(lines)


def report(error: BaseException) -> int:
    """Print what a user reads about ``error``, write its traceback to the log files,
    and return the status to exit with.

    An interrupt is one line, as the start-up handler prints it; an anticipated error
    its block, after its traceback if ``KEDRO_TORCH_TRACEBACK`` is set; any other
    error its traceback (as the logging configuration prints them: Rich's, by default),
    then the line naming the node and the log file.
    """
    log_traceback(error)
    if (_interruption(error) is None
            and (anticipated(error) is None or traceback_wanted())):
        sys.excepthook(type(error), error, error.__traceback__)
    click.secho(describe(error), fg="red", err=True)
    return exit_code(error)


def traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_SWITCH, "").strip().lower() in {"1", "true", "yes", "on"}


def log_traceback(error: BaseException) -> None:
    """The error with its traceback, into the log files alone: the console shows the
    short block instead."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "The run failed: %s: %s",
                               (type(error).__name__, error),
                               (type(error), error, error.__traceback__))
    for handler in _file_handlers():
        if record.levelno >= handler.level:
            handler.handle(record)


def log_file_names() -> list[str]:
    """The files the logging configuration writes to, relative to the working folder
    where they are in it."""
    names = []
    for handler in _file_handlers():
        path = Path(handler.baseFilename)
        try:
            names.append(str(path.relative_to(Path.cwd())))
        except ValueError:
            names.append(str(path))
    return names


def _file_handlers() -> Iterator[logging.FileHandler]:
    return (handler for handler in logging.getLogger().handlers
            if isinstance(handler, logging.FileHandler))


def _log_sentence(log_files: list[str]) -> str:
    if not log_files:
        return "The logging configuration writes no log file."
    return f"The full log, with the traceback, is in {' and '.join(log_files)}."


def _interruption(error: BaseException | None) -> Any:
    """The interrupt behind ``error``, if a signal stopped the run
    (:func:`kedro_torch.pytorch.interrupts.interruption`)."""
    from kedro_torch.pytorch import interrupts  # noqa: PLC0415  (on failure only)

    return interrupts.interruption(error)


# --- where in the run the error came ----------------------------------------------------


@dataclass
class _Where:
    node: str | None = None  # the node whose inputs, function or outputs were at work
    nodes_ran: bool = False


_where = _Where()


def _place() -> str:
    if _where.node:
        return f"in node {_where.node!r}"
    return "after its nodes ran" if _where.nodes_ran else "before any node ran"


class FailedNodeHook:
    """Keeps track of the node at work (loading its inputs, running, saving its outputs),
    for the line that follows the traceback of an unexpected error.

    A dataset that fails to load or save calls no node error hook; so the node is taken
    from the dataset hooks too. The error hook's node wins: with several nodes at once
    (a ThreadRunner) it is the one that failed.
    """

    def __init__(self) -> None:
        self._failed = False

    @hook_impl
    def after_context_created(self) -> None:
        """A new run (a session runs once), before any hook can fail it."""
        _where.node, _where.nodes_ran = None, False
        self._failed = False

    @hook_impl
    def before_dataset_loaded(self, node: Any) -> None:
        self._at(node)

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        self._at(node)

    @hook_impl
    def before_dataset_saved(self, node: Any) -> None:
        self._at(node)

    @hook_impl
    def on_node_error(self, node: Any) -> None:
        if not self._failed:
            _where.node, _where.nodes_ran = node.name, True
            self._failed = True

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        """Before the other hooks end the run: an error of theirs is no node's."""
        _where.node = None

    def _at(self, node: Any) -> None:
        if node is not None and not self._failed:
            _where.node, _where.nodes_ran = node.name, True
