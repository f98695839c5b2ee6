"""The console: listed third-party warnings are not shown, every other one is; logs off
a terminal are not wrapped at 80 columns."""

from __future__ import annotations

import io
import warnings

import pytest
import yaml
from rich.console import Console
from rich.logging import RichHandler

from kedro_torch.console import WIDTH_OFF_TERMINAL, KnownWarnings, widen_logs_off_terminal
from tests.conftest import PROJECT_ROOT

ENTRY = {"category": "UserWarning", "message": "old name", "module": r"tests\.test_console",
         "why": "a test"}


def shown_warnings(entries: list[dict], *raised: tuple[str, type[Warning]]) -> list[str]:
    """The messages that reach the display when ``raised`` are warned here."""
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = KnownWarnings(
            entries, lambda message, *_: seen.append(str(message))
        )
        for message, category in raised:
            warnings.warn(message, category, stacklevel=1)
    return seen


def test_a_listed_warning_is_dropped_and_others_are_shown():
    seen = shown_warnings(
        [ENTRY],
        ("\x1b[33mthe old name is deprecated\x1b[0m", UserWarning),  # coloured, as MLflow's
        ("the old name is deprecated", DeprecationWarning),  # another category
        ("something else", UserWarning),
    )
    assert seen == ["the old name is deprecated", "something else"]


def test_a_warning_from_another_module_is_shown():
    seen = shown_warnings([{**ENTRY, "module": r"kedro\.config"}],
                          ("the old name is deprecated", UserWarning))
    assert seen == ["the old name is deprecated"]


@pytest.mark.parametrize("field", ["message", "module", "category", "why"])
def test_an_entry_without_each_field_is_refused(field):
    with pytest.raises(ValueError, match=f"needs {field}"):
        KnownWarnings([{**ENTRY, field: ""}], print)


def test_the_projects_list_names_and_explains_each_warning():
    config = yaml.safe_load((PROJECT_ROOT / "conf" / "logging.yml").read_text())
    entries = config["ignore_warnings"]
    assert KnownWarnings(entries, print).entries  # each has every field
    assert all(len(entry["why"]) > 40 for entry in entries)


def test_logs_off_a_terminal_are_laid_out_wide(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    handler = RichHandler(console=Console(file=io.StringIO()))
    assert handler.console.width == 80
    widen_logs_off_terminal([handler])
    assert handler.console.width == WIDTH_OFF_TERMINAL


def test_columns_set_by_the_user_still_decide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    handler = RichHandler(console=Console(file=io.StringIO()))
    widen_logs_off_terminal([handler])
    assert handler.console.width == 100
