"""The project's own Kedro hooks that concern no MLflow run: how a signal outside
training ends a kedro run (the exit status, the resume command), and how a run reads
back the versions it wrote."""

import json
import os
import signal

import pytest
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline, node

from kedro_torch.hooks import InterruptionHook, RunVersionsHook, resume_command
from kedro_torch.pytorch.distributed import WorkerDied
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


def test_a_killed_training_process_fails_the_run_with_the_resume_command(capsys):
    hook = InterruptionHook()
    hook.before_pipeline_run()
    hook.on_pipeline_error(WorkerDied(1, 4242, "SIGKILL", -9), RUN_PARAMS)  # no SystemExit
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


def report_catalog(folder, save_version: str) -> DataCatalog:
    return DataCatalog.from_config(
        {"report": {"type": "json.JSONDataset", "filepath": str(folder / "report.json"),
                    "versioned": True}}, save_version=save_version)


def same(value):
    return value


WRITES_AND_READS_REPORT = Pipeline([node(same, "params:a", "report", name="write"),
                                    node(same, "report", "copy", name="read")])


def test_a_run_reads_back_its_own_version_while_another_run_writes_a_newer_one(tmp_path):
    """Kedro would load the newest version: the other run's, whose version (the time it
    started) is later, when it saved first."""
    mine = report_catalog(tmp_path, "2026-01-01T00.00.00.000Z")
    RunVersionsHook().before_pipeline_run(WRITES_AND_READS_REPORT, mine)
    report_catalog(tmp_path, "2026-01-01T00.00.01.000Z").save("report", {"run": "theirs"})
    mine.save("report", {"run": "mine"})
    assert mine.load("report") == {"run": "mine"}
    assert DataCatalog.from_config({"report": {  # a later run, which only reads it
        "type": "json.JSONDataset", "filepath": str(tmp_path / "report.json"),
        "versioned": True}}).load("report") == {"run": "theirs"}


def test_a_file_written_before_its_entry_was_versioned_becomes_its_earliest_version(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"run": "before versioning"}))
    os.utime(tmp_path / "report.json", (1_700_000_000, 1_700_000_000))
    catalog = report_catalog(tmp_path, "2026-01-01T00.00.00.000Z")
    RunVersionsHook().before_pipeline_run(WRITES_AND_READS_REPORT, catalog)
    catalog.save("report", {"run": "this one"})
    assert catalog.load("report") == {"run": "this one"}
    kept = tmp_path / "report.json" / "2023-11-14T22.13.20.000Z" / "report.json"
    assert json.loads(kept.read_text()) == {"run": "before versioning"}
