"""The project's ``kedro run``: Kedro's own command, ending as :mod:`kedro_torch.errors`
says when the run fails.

Kedro takes the commands of a ``cli`` group in the package's ``cli`` module over its
own (``python -m kedro_torch`` runs this ``run`` too). Its options, help and work are
Kedro's; only how it ends on an error differs: an anticipated error is one short
block, any other keeps its traceback, and the exit status tells them apart.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import KedroCliError

from kedro_torch import errors

EXIT_STATUS = (
    "Exit status: 0 done; 2 a bad parameter or option; 130 or 143 stopped by SIGINT or "
    "SIGTERM; 1 any other failure. An error the project anticipates prints no traceback "
    f"({errors.TRACEBACK_SWITCH}=1 prints it); the log file its message names has it."
)


@click.group(name="kedro_torch")
def cli() -> None:
    """Commands of this project, in place of Kedro's of the same name."""


def _run(**options: Any) -> Any:
    try:
        return kedro_run.callback(**options)
    except KedroCliError as error:  # options that cannot go together: a usage error
        raise click.UsageError(error.message) from error
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as error:
        sys.exit(errors.report(error))


run = click.Command(
    name="run",
    callback=_run,
    params=kedro_run.params,
    help=f"{kedro_run.help}\n\n{EXIT_STATUS}",
    short_help=kedro_run.short_help,
    context_settings=kedro_run.context_settings,
)
cli.add_command(run)
