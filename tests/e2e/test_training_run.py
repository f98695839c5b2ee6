"""Whole `kedro run`s of the training pipeline, read back from MLflow."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.e2e.conftest import EPOCHS, kedro, latest_run, latest_version, run_pipeline
from tests.tracking.test_model import png_bytes

pytestmark = pytest.mark.e2e


def test_parameters_are_flattened(finished_run):
    _, run = finished_run
    params = run.data.params
    assert params["training.optimizer.name"] == "AdamW"
    assert params["training.optimizer.kwargs.lr"] == "0.003"
    assert params["training.epochs"] == str(EPOCHS)
    assert params["model.name"] == "small_cnn"


def test_epoch_metrics_have_one_step_per_epoch(finished_run):
    client, run = finished_run
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), name
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(losses, key=lambda m: m.step)[-1].value < losses[0].value


def test_test_metrics_and_artifacts_are_logged(finished_run, project):
    client, run = finished_run
    metrics = run.data.metrics
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    assert not [name for name in metrics if name.startswith("test_per_class")]  # a table now
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "per_class.json", "evaluation_report.json", "label_map.json",
            "training_history.csv", "test_predictions.csv", "parameters.yml",
            "data_quality_report.json", "preprocessing.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{name}.png" for name in (
        "confusion_matrix", "learning_curve", "reliability_diagram", "per_class_metrics",
        "prediction_gallery")}
    png = client.download_artifacts(run.info.run_id, "plots/confusion_matrix.png", str(project))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(Path(client.download_artifacts(
        run.info.run_id, "per_class.json", str(project))).read_text())  # mlflow.log_table's
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in table["data"]] == [str(digit) for digit in range(10)]
    versions = list((project / "data/06_models/model_state_dict.pt").iterdir())
    assert len(versions) == 1


@pytest.mark.parametrize("batch", [1, 7])
def test_logged_model_predicts_raw_images_of_any_batch_size(finished_run, batch):
    _, run = finished_run
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    # PNG files of any size: the model resizes and normalizes as in training.
    pixels = np.random.default_rng(0).integers(0, 256, size=(batch, 11, 11), dtype=np.uint8)
    predictions = model.predict(pd.DataFrame({"image": [png_bytes(p) for p in pixels]}))
    assert len(predictions) == batch
    assert set(predictions["label"]) <= {str(d) for d in range(10)}
    assert predictions["probability"].between(0, 1).all()
    assert {"top1_label", "top3_probability"} <= set(predictions.columns)


def test_run_is_named_after_its_parameters_and_tagged(finished_run):
    _, run = finished_run
    assert run.info.run_name == f"small_cnn-AdamW-lr0.003-{EPOCHS}ep-{run.info.run_id[:6]}"
    tags = run.data.tags
    # The test project is a copy outside any git repository.
    assert tags["git_commit"] == tags["git_dirty"] == "unknown"
    assert tags["kedro_env"] == "local"
    assert tags["pipeline"] == "training"
    assert tags["device"] == "cpu"


def test_model_input_is_the_dataset_input_with_a_digest(finished_run, project, small_digits):
    client, run = finished_run
    (dataset_input,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "model_input"
    assert len(dataset.digest) >= 8
    assert {(tag.key, tag.value) for tag in dataset_input.tags} == {
        ("mlflow.data.context", "training")
    }
    # The same images elsewhere keep the digest; other images change it.
    table = pd.read_parquet(latest_version(project / "data/05_model_input/model_input.parquet"))
    moved = table.assign(path="/elsewhere/" + table["relative_path"])
    assert content_digest(moved) == dataset.digest
    assert content_digest(table.iloc[1:]) != dataset.digest


def content_digest(table: pd.DataFrame) -> str:
    return mlflow.data.from_pandas(table.drop(columns="path")).digest


def test_system_metrics_are_sampled(finished_run):
    client, run = finished_run
    system = {name for name in run.data.metrics if name.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 1


def test_model_is_registered_with_the_champion_alias(finished_run):
    client, run = finished_run
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "kedro_torch"
    assert "champion" in client.get_registered_model("kedro_torch").aliases


def test_registered_model_has_a_signature_and_an_input_example(finished_run):
    client, run = finished_run
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    info = mlflow.models.get_model_info(f"models:/kedro_torch/{version.version}")
    assert info.signature.inputs.input_names() == ["path", "image"]
    assert {"label", "probability", "top3_label", "error"} <= set(
        info.signature.outputs.input_names())
    assert info.saved_input_example_info["type"] == "dataframe"


def test_experiment_opens_on_training_and_the_run_describes_itself(finished_run,
                                                                   small_digits):
    client, run = finished_run
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = run.data.tags["mlflow.note.content"]
    assert f"**Test accuracy {run.data.metrics['test_accuracy']:.4f}**" in note
    assert f"200 images in 10 classes from `{small_digits}`" in note
    assert f"{EPOCHS} epochs, `AdamW`" in note
    sections = {name.split("/")[0] for name in run.data.metrics if "/" in name}
    assert sections == {"system"}


def test_evaluate_reruns_on_the_saved_model_and_logs_the_same_test_metrics(
    project, small_digits
):
    trained = kedro(project, "run", "--pipelines", "training", "--params",
                    f"raw_images_path={small_digits},training.epochs=2")
    assert trained.returncode == 0, trained.stderr
    _, first = latest_run(project)
    rerun = kedro(project, "run", "--pipelines", "training", "--from-nodes", "evaluate")
    assert rerun.returncode == 0, rerun.stderr
    assert "Running node: train" not in rerun.stderr + rerun.stdout
    _, second = latest_run(project)
    assert second.info.run_id != first.info.run_id
    for name in ("test_accuracy", "test_ece", "test_macro_f1"):
        assert second.data.metrics[name] == first.data.metrics[name], name


def test_unknown_optimizer_stops_before_any_work(project):
    # The older --pipeline spelling, as the README mentions it still works.
    result = kedro(project, "run", "--pipeline", "training",
                   "--params", "training.optimizer.name=Adamm")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "training.optimizer.name" in output
    assert "'Adamm'" in output
    assert "Adam, AdamW" in output
    assert "Running node" not in output
    assert "has started" not in output  # no MLflow run was opened


def test_fine_tunes_from_the_weights_of_an_earlier_run(finished_run, project, small_digits):
    # The first version is the shared run's (timestamps sort in time order).
    weights = sorted((project / "data/06_models/model_state_dict.pt").glob("*/*.pt"))[0]
    result = kedro(
        project, "run", "--pipelines", "training", "--params",
        f"raw_images_path={small_digits},model.pretrained_path={weights},"
        "training.epochs=1,training.progress_bar=false",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "tensors loaded, 0 skipped" in output
    client, _ = finished_run
    runs = client.search_runs(
        [client.get_experiment_by_name("kedro_torch").experiment_id],
        order_by=["start_time DESC"],
    )
    assert runs[0].data.params["model.pretrained_path"] == str(weights)
    # Starting from trained weights, one epoch already beats chance by far.
    assert runs[0].data.metrics["test_accuracy"] > 0.5


def test_champion_stays_on_the_good_run_when_a_weak_run_finishes_second(
    finished_run, project, small_digits
):
    client, _ = finished_run
    champion = client.get_model_version_by_alias("kedro_torch", "champion")
    champion_accuracy = client.get_run(champion.run_id).data.metrics["test_accuracy"]
    run_pipeline(project, "training", {
        "raw_images_path": str(small_digits),
        "training": {"epochs": 1, "optimizer": {"kwargs": {"lr": 1e-6}}, "progress_bar": False},
        "mlflow": {"system_metrics_interval": None},
    })
    _, weak = latest_run(project)
    assert weak.info.run_name == f"small_cnn-AdamW-lr1e-06-1ep-{weak.info.run_id[:6]}"
    assert weak.data.metrics["test_accuracy"] < champion_accuracy
    (weak_version,) = client.search_model_versions(f"run_id = '{weak.info.run_id}'")
    assert int(weak_version.version) > int(champion.version)
    assert client.get_model_version_by_alias("kedro_torch", "champion").version == (
        champion.version
    )
