"""What a kedro command prints.

Third-party warnings that a user of this project cannot act on are not shown, each
picked by its category, its message and the module that raised it, as the logging
configuration in force lists them (``ignore_warnings`` in ``conf/logging.yml``); every
other warning still is. They are dropped where warnings are shown
(``warnings.showwarning``, which Python lets a program replace), not by ``warnings``
filters: MLflow shows one of them through a ``simplefilter("once")`` of its own,
which comes before any filter a program sets.

Logs written to a file or a CI job are laid out wider than the 80 columns Rich
assumes when there is no terminal.

Kedro imports the settings, which call :func:`quiet_console`, only once a command
runs; kedro-mlflow raises one of the listed warnings as Kedro loads its commands,
before that. So the package also calls it as a ``kedro.init`` plugin (see
pyproject.toml), which Kedro runs first. Imports only the standard library and rich.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from rich.logging import RichHandler

# Wide enough that a log line with its time and level fits in one CI-log line.
WIDTH_OFF_TERMINAL = 160
FIELDS = ("category", "message", "module", "why")


class KnownWarnings:
    """A replacement for ``warnings.showwarning`` that drops the listed warnings and
    passes every other one to the function it replaces."""

    def __init__(self, entries: Iterable[Mapping[str, Any]], show: Any) -> None:
        self.entries = [self._checked(entry) for entry in entries]
        self.show = show

    @staticmethod
    def _checked(entry: Mapping[str, Any]) -> tuple[str, re.Pattern, re.Pattern]:
        missing = [field for field in FIELDS if not entry.get(field)]
        if missing:
            raise ValueError(f"logging configuration: ignore_warnings entry {dict(entry)} "
                             f"needs {', '.join(missing)}")
        return entry["category"], re.compile(entry["message"]), re.compile(entry["module"])

    def known(self, message: Any, category: type[Warning], filename: str) -> bool:
        module = module_named_by(filename)
        return any(category.__name__ == name and text.search(str(message))
                   and origin.fullmatch(module)
                   for name, text, origin in self.entries)

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if not self.known(message, category, filename):
            self.show(message, category, filename, lineno, file, line)


def module_named_by(filename: str) -> str:
    """The name of the imported module whose file this is ('' if none is)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return ""


def quiet_console() -> None:
    """Drop the warnings the logging configuration lists and widen logs off a terminal.

    Idempotent: the CLI's plugin hook and the settings both call it.
    """
    from kedro.framework.project import LOGGING  # noqa: PLC0415  (a kedro.init plugin)

    entries = LOGGING.get("ignore_warnings") or ()
    shown = warnings.showwarning
    if isinstance(shown, KnownWarnings):
        shown = shown.show
    warnings.showwarning = KnownWarnings(entries, shown) if entries else shown
    widen_logs_off_terminal(logging.getLogger().handlers)


def widen_logs_off_terminal(handlers: Iterable[logging.Handler]) -> None:
    """Rich lays out log lines for 80 columns when it writes to no terminal; a file or
    a CI log has no such limit. ``COLUMNS``, when set, still decides."""
    if "COLUMNS" in os.environ:
        return
    for handler in handlers:
        if isinstance(handler, RichHandler) and not handler.console.is_terminal:
            handler.console.width = WIDTH_OFF_TERMINAL
