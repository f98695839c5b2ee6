"""The training loop's features on a table, through the plain API: data-parallel
workers (``training.devices``) whose regression metrics are exact sums over the ranks,
and a run stopped by a signal mid-epoch whose resume replays the run left alone. The
penguins table is the data; what holds for images must hold for it."""

from __future__ import annotations

import dataclasses
import signal

import pandas as pd
import pytest
import torch

from kedro_torch.pytorch import api, tasks
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    TableConfig,
    TrainingConfig,
)
from kedro_torch.pytorch.interrupts import TrainingInterrupted
from kedro_torch.pytorch.tasks.base import PreparedData
from tests.conftest import PROJECT_ROOT
from tests.pytorch.test_distributed import no_launcher  # noqa: F401
from tests.pytorch.test_interrupts import SendSignal
from tests.pytorch.test_resume import assert_identical

PENGUINS = PROJECT_ROOT / "data" / "01_raw" / "penguins.csv"
TARGETS = {"tabular_classification": "species", "tabular_regression": "body_mass_g"}


def data_config(task: str, batch_size: int) -> DataConfig:
    return DataConfig(task=task, source="table", batch_size=batch_size,
                      table=TableConfig(target=TARGETS[task], drop=["year"]))


@pytest.fixture(scope="module")
def penguins() -> dict[str, PreparedData]:
    """The bundled table, prepared for each task as the training pipeline prepares it."""
    table = pd.read_csv(PENGUINS)
    return {task: api.prepare_data(table, data_config(task, 32)) for task in TARGETS}


def fit(prepared: PreparedData, task: str, batch_size: int, dropout: float,
        checkpoints: CheckpointStore | None = None, callbacks=(), **training) -> api.FitResult:
    """A small MLP trained on the table for 3 epochs (8 steps each at 32 rows)."""
    config = data_config(task, batch_size)
    loaders = api.build_loaders(prepared.model_input, prepared.preprocessing, config, seed=3)
    model = api.build_model(ModelConfig("tabular_mlp", {"hidden": [16], "dropout": dropout}),
                            config, prepared.label_map, prepared.preprocessing, seed=0)
    settings = TrainingConfig(epochs=3, seed=3, progress_bar=False, device="cpu",
                              optimizer=OptimizerConfig("AdamW", {"lr": 0.01}), **training)
    return api.fit(model, loaders, settings, num_classes=len(prepared.label_map),
                   checkpoints=checkpoints, callbacks=callbacks,
                   task=tasks.create(task, prepared.preprocessing))


@pytest.mark.usefixtures("no_launcher")
def test_two_workers_of_16_rows_train_and_measure_as_one_process_of_32(penguins, one_thread):
    """``training.devices: 2``: the same weights and history as one process, the RMSE
    and MAE of every epoch summed exactly over both ranks. One validation row is left
    out, so that the two ranks validate 27 and 26 rows: a padded shard would count one
    row twice. Without dropout, whose masks depend on how a batch is split."""
    prepared = penguins["tabular_regression"]
    val = prepared.model_input.index[prepared.model_input["split"] == "val"]
    odd = dataclasses.replace(prepared, model_input=prepared.model_input.drop(index=val[0]))
    assert (odd.model_input["split"] == "train").sum() % 2 == 0  # no padding in training
    assert (odd.model_input["split"] == "val").sum() % 2 == 1

    workers = fit(odd, "tabular_regression", 16, dropout=0.0, devices=2)
    alone = fit(odd, "tabular_regression", 32, dropout=0.0)
    assert {"train_rmse", "train_mae", "val_rmse", "val_mae"} <= workers.history[-1].keys()
    for row, expected in zip(workers.history, alone.history, strict=True):
        assert row == pytest.approx(expected, rel=1e-6)  # float32 sums, errors in grams
    for key, tensor in alone.state_dict.items():
        torch.testing.assert_close(workers.state_dict[key], tensor, rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", list(TARGETS))
def test_a_run_stopped_mid_epoch_resumes_to_what_the_run_left_alone_gives(penguins, task,
                                                                         tmp_path, one_thread):
    """SIGINT after the 11th batch (the 3rd of epoch 2) checkpoints there; a new run
    with ``training.resume: true`` replays the epoch's order, its dropout and its
    metric sums, and ends bit for bit where the uninterrupted run ends."""
    prepared = penguins[task]
    whole = fit(prepared, task, 32, dropout=0.2)

    store = CheckpointStore(str(tmp_path / "checkpoints"))
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(prepared, task, 32, dropout=0.2, checkpoints=store,
            callbacks=[SendSignal(signal.SIGINT, 11)])
    assert (stopped.value.epoch, stopped.value.batch) == (2, 3)

    resumed = fit(prepared, task, 32, dropout=0.2, checkpoints=store, resume=True)
    assert resumed.history == whole.history
    assert_identical(resumed.state_dict, whole.state_dict)
