"""`kedro run --pipelines tuning` as a user runs it: a small study whose trials are
nested MLflow runs, continued by a second run, shared by two processes through one
database, and a bad search space refused before any MLflow run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from kedro.framework.session import KedroSession
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests.e2e.conftest import KEDRO, bootstrapped, kedro

# The end-to-end tests' project copy, under a name of its own: a study of its own.
from tests.e2e.conftest import project as tuning_project  # noqa: F401

pytestmark = pytest.mark.e2e

SPACE = ("training.optimizer.kwargs.lr", "training.optimizer.kwargs.weight_decay",
         "data.batch_size", "model.kwargs.width")  # conf/base/parameters_tuning.yml's


@pytest.fixture(scope="module")
def project(request) -> Path:
    return bootstrapped(request, "tuning_project")


@pytest.fixture(scope="module")
def base(small_digits) -> list[str]:
    return [f"raw_images_path={small_digits}", "training.epochs=2",
            "training.progress_bar=false"]


def runs(project: Path) -> tuple[MlflowClient, list[Run]]:
    """The project's MLflow client and every run of its store, deleted ones too, oldest first."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    if not (project / "mlflow.db").exists():
        return client, []
    experiments = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
    return client, client.search_runs(experiments, run_view_type=ViewType.ALL,
                                      order_by=["attributes.start_time ASC"])


def study_of(runs_: list[Run]) -> tuple[Run, list[Run]]:
    """The newest parent run and its children."""
    parent = [run for run in runs_ if "mlflow.parentRunId" not in run.data.tags][-1]
    children = [run for run in runs_
                if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_a_study_nests_its_trials_and_a_second_run_continues_it(project, base):
    result = kedro(project, "run", "--pipelines", "tuning",
                   "--params", ",".join([*base, "tuning.n_trials=3"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kedro run --pipelines training --params training.optimizer.kwargs.lr=" in result.stdout

    client, first = runs(project)
    parent, children = study_of(first)
    assert parent.data.tags["pipeline"] == "tuning" and parent.info.status == "FINISHED"
    assert [run.info.run_name for run in children] == ["trial-0", "trial-1", "trial-2"]
    finals = {}
    for run in children:
        assert set(run.data.params) == set(SPACE)
        assert run.data.tags["trial_state"] == "COMPLETE"  # MedianPruner waits for 5 trials
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
        finals[int(run.data.tags["trial_number"])] = run.data.metrics["final_val_accuracy"]
    best = parent.data.metrics["best_trial_number"]
    assert parent.data.metrics["best_val_accuracy"] == finals[best] == max(finals.values())
    assert parent.data.metrics["study_trials"] == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_params.yml", "tuning_trials.csv", "optimization_history.png",
            "param_importances.png", "parallel_coordinate.png"} <= artifacts
    saved = yaml.safe_load((project / "data" / "08_reporting" / "best_params.yml").read_text())
    assert {key: str(value) for key, value in saved.items()} == children[int(best)].data.params
    assert client.search_registered_models() == []  # trial models are not registered

    result = kedro(project, "run", "--pipelines", "tuning",
                   "--params", ",".join([*base, "tuning.n_trials=2", "tuning.retrain_best=true"]))
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = study_of(runs(project)[1])
    assert [run.info.run_name for run in children] == ["trial-3", "trial-4", "final-model"]
    assert parent.data.metrics["study_trials"] == 5
    best = yaml.safe_load((project / "data" / "08_reporting" / "best_params.yml").read_text())
    final = children[-1]
    assert final.data.params.items() >= {key: str(value) for key, value in best.items()}.items()
    assert 0 <= final.data.metrics["test_accuracy"] <= 1
    assert "val_accuracy" not in final.data.metrics  # trained on train + val
    (version,) = client.search_model_versions("name = 'kedro_torch'")
    assert version.run_id == final.info.run_id
    assert client.get_model_version_by_alias("kedro_torch", "champion").version == version.version
    study = optuna.load_study(study_name="kedro_torch", storage=(
        f"sqlite:///{project / 'data' / '06_models' / 'optuna_studies.db'}"))
    assert [trial.number for trial in study.trials] == list(range(5))


def test_two_processes_share_one_study_through_its_database(project, base, tmp_path):
    """Two projects, as on two machines, with one study database between them."""
    second = tmp_path / "second"
    second.mkdir()
    for name in ("pyproject.toml", "conf", "src"):
        source = project / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, second / name)
    (second / "data").mkdir()
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    processes = [
        subprocess.Popen(
            [KEDRO, "run", "--pipelines", "tuning", "--params", ",".join([
                *base, "training.epochs=1", "tuning.n_trials=2", f"tuning.seed={seed}",
                "tuning.study_name=shared", f"tuning.storage={storage}"])],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed, root in ((1, project), (2, second))
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(trial.number for trial in study.trials) == [0, 1, 2, 3]
    assert {trial.state for trial in study.trials} == {TrialState.COMPLETE}
    for root in (project, second):
        parent, children = study_of(runs(root)[1])
        assert parent.data.tags["optuna_study"] == "shared" and len(children) == 2
        ids = {run.info.run_id for run in children}
        assert ids < {trial.user_attrs["mlflow_run_id"] for trial in study.trials}


def test_a_bad_search_space_stops_the_kedro_cli_before_mlflow(project, base):
    before = runs(project)[1]
    result = kedro(project, "run", "--pipelines", "tuning",
                   "--params", ",".join([*base, "tuning.space.model.kwargs.width.high=8"]))
    assert result.returncode != 0
    assert "tuning.space.model.kwargs.width: low (16) must not exceed high (8)" in result.stderr
    assert "Running node" not in result.stdout + result.stderr
    assert len(runs(project)[1]) == len(before)


@pytest.mark.parametrize(("items", "key"), [
    (["tuning.space.training.learning_rate.type=float"], "tuning.space.training.learning_rate"),
    (["tuning.space.data.batch_size.choices=[8.5]"], "tuning.space.data.batch_size"),
    (["tuning.space.model.name.type=categorical", "tuning.space.model.name.choices=[resnet19]"],
     "tuning.space.model.name"),
    (["tuning.sampler.name=TPE"], "tuning.sampler.name"),
    (["tuning.pruner.name=Median"], "tuning.pruner.name"),
])
def test_a_bad_search_space_is_refused_naming_its_key(project, base, items, key):
    before = runs(project)[1]
    # Parsed as `kedro run --params` parses them.
    params = OmegaConf.to_container(OmegaConf.from_dotlist([*base, *items]))
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ValueError) as refusal:
        patch.chdir(project)  # the catalog's relative paths resolve from here
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_names=["tuning"])
    assert str(refusal.value).startswith(key)
    assert len(runs(project)[1]) == len(before)
