"""How a failed `kedro run` ends (kedro_torch.errors and the project's run command): the
exit status of each kind of error, the short block an anticipated one prints, and the
line under the traceback of any other. Fast: no pipeline runs here."""

import logging
import signal
import sys

import pytest
from click.testing import CliRunner
from kedro.framework.cli.utils import find_run_command
from kedro.io import DatasetError

from kedro_torch import cli, errors
from kedro_torch.pytorch.checkpoints import UnsafeCheckpointError
from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.interrupts import Interrupted
from kedro_torch.tracking.store import TrackingServerUnreachable


@pytest.fixture(autouse=True)
def no_traceback_switch(monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_SWITCH, raising=False)


def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """``error`` as Python leaves it once raised (from ``cause``): with a traceback."""
    try:
        raise error from cause
    except BaseException as caught:  # KeyboardInterrupt is one of them
        return caught


def test_a_bad_parameter_exits_2_as_a_block_naming_the_key_and_what_to_do():
    error = raised(ParameterError("training.epochs must be int, got str: 'abc'"))
    assert errors.exit_code(error) == errors.BAD_PARAMETERS == 2
    assert errors.describe(error, ["kedro-torch.log"]).splitlines() == [
        "Bad parameter: training.epochs must be int, got str: 'abc'",
        "  Correct it in conf/ (parameters_*.yml) or with --params, and run again.",
        "  The full log, with the traceback, is in kedro-torch.log. KEDRO_TORCH_TRACEBACK=1 "
        "prints the traceback here.",
    ]


def test_an_error_the_project_raises_is_found_behind_the_error_kedro_wraps_it_in():
    inner = raised(ParameterError("data.image_size must be int, got str: 'big'"))
    error = raised(DatasetError("Failed while loading data from dataset params:data"), inner)
    assert errors.anticipated(error) is inner
    assert errors.exit_code(error) == 2
    assert errors.describe(error, []).startswith(
        "Bad parameter: data.image_size must be int, got str: 'big'")


@pytest.mark.parametrize("error", [
    UnsafeCheckpointError("best.pt: refused to load. Re-save just the tensors."),
    TrackingServerUnreachable("The MLflow tracking server http://127.0.0.1:9 does not answer."),
], ids=lambda error: type(error).__name__)
def test_other_errors_the_project_anticipates_exit_1_as_their_message(error):
    error = raised(error)
    assert errors.exit_code(error) == errors.FAILED == 1
    block = errors.describe(error, ["kedro-torch.log"])
    assert block.splitlines()[0] == f"Error: {error}"
    assert len(block.splitlines()) == 2
    assert "Traceback" not in block


def test_a_message_of_several_lines_stays_one_block():
    error = raised(TrackingServerUnreachable("4 bad rows:\nrow 2: no file\nrow 7: empty label"))
    assert errors.describe(error, ["run.log"]).splitlines()[:3] == [
        "Error: 4 bad rows:", "  row 2: no file", "  row 7: empty label"]


def test_a_library_error_or_a_bug_exits_1_and_is_not_anticipated():
    error = raised(KeyError("model_state"), raised(ValueError("not a parameter of ours")))
    assert errors.anticipated(error) is None
    assert errors.exit_code(error) == 1
    line = errors.describe(error, ["kedro-torch.log"])
    assert len(line.splitlines()) == 1
    assert "on the error above, which the project does not anticipate" in line
    assert line.endswith("The full log, with the traceback, is in kedro-torch.log.")


@pytest.mark.parametrize(("error", "status"), [
    (Interrupted(signal.SIGINT), 130),
    (Interrupted(signal.SIGTERM), 143),
    (DatasetError("image_manifest: Failed while loading data"), 130),  # from a Ctrl-C
])
def test_an_interrupt_exits_with_the_shells_status_for_its_signal(error, status):
    cause = raised(KeyboardInterrupt()) if isinstance(error, DatasetError) else None
    error = raised(error, cause)
    assert errors.exit_code(error) == status
    assert errors.describe(error, []).startswith("Interrupted: stopped by SIG")


def test_without_a_log_file_the_block_says_so():
    error = raised(ParameterError("evaluation.top_k must be greater than 0, got 0"))
    assert "The logging configuration writes no log file." in errors.describe(error, [])


def test_the_log_file_gets_the_traceback_and_the_console_the_block(tmp_path, capsys):
    handler = logging.FileHandler(tmp_path / "run.log", delay=True)
    logging.getLogger().addHandler(handler)
    try:
        error = raised(ParameterError("training.devices must be greater than 0, got 0"))
        assert errors.log_file_names()[-1] == str(tmp_path / "run.log")
        assert errors.report(error) == 2
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    printed = capsys.readouterr().err
    assert printed.startswith("Bad parameter: training.devices must be greater than 0, got 0")
    assert "Traceback" not in printed
    assert str(tmp_path / "run.log") in printed
    logged = (tmp_path / "run.log").read_text()
    assert "Traceback (most recent call last):" in logged
    assert logged.rstrip().endswith(
        "ParameterError: training.devices must be greater than 0, got 0")


def test_the_switch_prints_the_traceback_before_the_block(monkeypatch, capsys):
    monkeypatch.setenv(errors.TRACEBACK_SWITCH, "1")
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # Python's own, not Rich's
    assert errors.report(raised(ParameterError("data.channels must be one of 1, 3"))) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("Traceback (most recent call last):")
    assert "\nBad parameter: data.channels must be one of 1, 3\n" in printed


def test_kedro_runs_the_projects_run_command():
    assert find_run_command("kedro_torch") is cli.run
    assert cli.cli.get_command(None, "run") is cli.run


def test_the_run_commands_help_gives_the_exit_statuses():
    result = CliRunner().invoke(cli.cli, ["run", "--help"], terminal_width=100)
    assert result.exit_code == 0
    assert "--params" in result.output
    assert "Exit status: 0 done; 2 a bad parameter or option; 130 or 143" in result.output


def test_options_that_cannot_go_together_exit_2():
    result = CliRunner().invoke(cli.cli, ["run", "--pipeline", "training",
                                          "--pipelines", "training"])
    assert result.exit_code == 2
    assert "cannot be used together" in result.output
