"""The project's own Kedro hooks that concern no MLflow run: how a signal outside
training ends a kedro run (the exit status, the resume command)."""

import os
import signal

import pytest

from kedro_torch.hooks import InterruptionHook, resume_command
from kedro_torch.pytorch.interrupts import Interrupted

RUN_PARAMS = {"pipeline_names": ["training"], "env": "team",
              "runtime_params": {"raw_images_path": "/data/pets", "training": {"epochs": 3}}}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_pipeline_runs_ends_it_with_the_signals_status(signum, capsys):
    """Outside training (checking files, evaluating) the signal raises at once, as an
    exception the runner reports; the hook then ends the process as shells expect."""
    previous = signal.getsignal(signum)
    hook = InterruptionHook()
    hook.before_pipeline_run()
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signum)
    with pytest.raises(SystemExit) as exit_status:
        hook.on_pipeline_error(caught.value, RUN_PARAMS)
    assert exit_status.value.code == 128 + signum
    assert signal.getsignal(signum) is previous  # the handlers were put back
    assert resume_command(RUN_PARAMS) in capsys.readouterr().err


def test_other_errors_pass_through_and_the_handlers_are_put_back():
    previous = signal.getsignal(signal.SIGTERM)
    hook = InterruptionHook()
    hook.before_pipeline_run()
    hook.on_pipeline_error(ValueError("a bad file"), RUN_PARAMS)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_the_resume_command_repeats_the_run_with_resume_auto():
    assert resume_command(RUN_PARAMS) == (
        "kedro run --pipelines training --env team --params "
        "raw_images_path=/data/pets,training.epochs=3,training.resume=auto"
    )
