"""The tuning pipeline on an in-memory catalog and real images: the training
pipeline's data stages, then a study whose summary reaches the catalog. Without an
active MLflow run the trials are not tracked."""

import optuna
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.yaml import YAMLDataset
from matplotlib.figure import Figure

from kedro_torch.datasets import ImageFolderDataset, ImageStoreDataset, SqliteDatabaseDataset
from kedro_torch.pipelines.training import create_pipeline as create_training_pipeline
from kedro_torch.pipelines.tuning import create_pipeline

SPACE = {"training.optimizer.kwargs.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2},
         "model.kwargs.width": {"type": "categorical", "choices": [4, 8]}}
TUNING = {"space": SPACE, "n_trials": 2, "seed": 0}


def test_the_data_stages_are_the_training_pipelines():
    training = create_training_pipeline().only_nodes("ingest", "transform")
    assert {node.name for node in set(create_pipeline().nodes) - set(training.nodes)} == {
        "tune", "train_final_model"}


@pytest.mark.e2e
def test_a_study_runs_on_data_prepared_once_and_reaches_the_catalog(small_digits, tmp_path):
    catalog = DataCatalog({
        "raw_images": ImageFolderDataset(path=str(small_digits)),
        "raw_manifest": MemoryDataset(None),
        "raw_table": MemoryDataset(None),
        "previous_image_cache": ImageStoreDataset(path=str(tmp_path / "cache")),
        "image_cache": ImageStoreDataset(path=str(tmp_path / "cache")),
        "pretrained_state_dict": MemoryDataset(None),
        "study_storage": SqliteDatabaseDataset(filepath=str(tmp_path / "studies" / "s.db")),
        "params:data": MemoryDataset({"image_size": 8, "batch_size": 32}),
        "params:model": MemoryDataset({"name": "small_cnn", "kwargs": {"width": 8}}),
        "params:training": MemoryDataset({"epochs": 2, "progress_bar": False,
                                          "max_batches_per_epoch": 2}),
        "params:tuning": MemoryDataset(TUNING),
        **{f"params:{name}": MemoryDataset({}) for name in ("evaluation", "inference", "mlflow")},
        # Read by the last node: an in-memory entry would be released after it.
        "best_params": YAMLDataset(filepath=str(tmp_path / "best_params.yml")),
        **{name: MemoryDataset() for name in (
            "tuning_metrics", "tuning_trials", "optimization_history_plot",
            "param_importances_plot", "parallel_coordinate_plot")},
    })
    SequentialRunner().run(create_pipeline(), catalog)
    study = optuna.load_study(study_name="kedro_torch",
                              storage=f"sqlite:///{tmp_path / 'studies' / 's.db'}")
    best = study.best_trial
    assert catalog.load("best_params") == best.params
    assert set(best.params) == set(SPACE)
    metrics = catalog.load("tuning_metrics")
    assert metrics["best_val_accuracy"] == {"value": best.value, "step": 0}
    assert metrics["study_trials"] == {"value": 2, "step": 0}
    trials = catalog.load("tuning_trials")
    assert list(trials["number"]) == [0, 1] and "user_attrs_mlflow_run_id" not in trials
    for figure in ("optimization_history_plot", "param_importances_plot",
                   "parallel_coordinate_plot"):
        assert isinstance(catalog.load(figure), Figure), figure
