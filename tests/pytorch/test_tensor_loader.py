"""TensorBatches: a table's batches as slices of whole tensors, in the order a seeded
generator decides, shared between ranks, and fed to the training loop."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from kedro_torch.pytorch import api
from kedro_torch.pytorch.config import OptimizerConfig, TrainingConfig
from kedro_torch.pytorch.models import TabularMLP
from kedro_torch.pytorch.tensor_loader import TensorBatches
from tests.pytorch.test_distributed import run_ranks


def table(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose first column is the row number, so a batch says which rows it holds."""
    features = torch.stack([torch.arange(rows, dtype=torch.float32),
                            torch.randn(rows)], dim=1)
    return features, torch.arange(rows) * 10


def rows_of(batches) -> list[list[int]]:
    """The row numbers of each batch of one epoch, checking features and targets agree."""
    epoch = []
    for features, targets in batches:
        rows = features[:, 0].long()
        assert torch.equal(targets, rows * 10)
        epoch.append(rows.tolist())
    return epoch


def epoch_rows(batches) -> list[int]:
    """The row numbers of one epoch, in the order they came."""
    return [row for batch in rows_of(batches) for row in batch]


def test_in_order_batches_cover_every_row_once_and_the_last_batch_is_short():
    batches = TensorBatches(*table(10), 4, shuffle=False, seed=0)
    assert rows_of(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(batches) == 3
    assert len(batches.dataset) == 10
    assert torch.equal(batches.dataset.targets, torch.arange(10) * 10)


def test_drop_last_leaves_out_the_short_batch():
    batches = TensorBatches(*table(10), 4, shuffle=True, seed=0, drop_last=True)
    epoch = rows_of(batches)
    assert len(batches) == len(epoch) == 2
    assert all(len(rows) == 4 for rows in epoch)


def test_each_shuffled_epoch_is_a_new_permutation_and_the_seed_repeats_them():
    batches = TensorBatches(*table(50), 8, shuffle=True, seed=3)
    first, second = rows_of(batches), rows_of(batches)
    for epoch in (first, second):
        assert sorted(row for batch in epoch for row in batch) == list(range(50))
    assert first != second
    again = TensorBatches(*table(50), 8, shuffle=True, seed=3)
    assert [rows_of(again), rows_of(again)] == [first, second]
    assert rows_of(TensorBatches(*table(50), 8, shuffle=True, seed=4)) != first


def test_restoring_the_generator_replays_an_epoch():
    """What resuming an interrupted epoch relies on: the loop saves the generator's
    state at the epoch's start and sets it back."""
    batches = TensorBatches(*table(30), 8, shuffle=True, seed=0)
    rows_of(batches)
    state = batches.generator.get_state()
    epoch = rows_of(batches)
    batches.generator.set_state(state)
    assert rows_of(batches) == epoch


def test_pickled_batches_continue_with_the_same_order():
    """Spawned workers get the batches pickled, generator state included."""
    batches = TensorBatches(*table(30), 8, shuffle=True, seed=0)
    rows_of(batches)
    copy = pickle.loads(pickle.dumps(batches))
    assert rows_of(copy) == rows_of(batches)


def test_features_and_targets_of_different_lengths_are_refused():
    features, targets = table(10)
    with pytest.raises(ValueError, match="10 rows of features but 9 targets"):
        TensorBatches(features, targets[:9], 4, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TensorBatches(features, targets, 0, shuffle=False, seed=0)


def _epochs_as_rank(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        train = TensorBatches(*table(11), 2, shuffle=True, seed=5)
        evaluation = TensorBatches(*table(11), 2, shuffle=False, seed=5)
        unsharded = TensorBatches(*table(11), 2, shuffle=False, seed=5, shard=False)
        result = {"train": [epoch_rows(train), epoch_rows(train)],
                  "eval": epoch_rows(evaluation), "unsharded": epoch_rows(unsharded),
                  "lengths": [len(train), len(evaluation), len(unsharded)]}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_each_epoch_training_padded_and_evaluation_once(tmp_path):
    run_ranks(_epochs_as_rank, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        first, second = ranks[0]["train"][epoch], ranks[1]["train"][epoch]
        assert len(first) == len(second) == 6  # 11 rows padded to 12
        assert set(first + second) == set(range(11))
    assert ranks[0]["train"][0] != ranks[0]["train"][1]
    assert [ranks[0]["eval"], ranks[1]["eval"]] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    for rank in ranks:
        assert rank["lengths"] == [3, 3, 6]  # batches of 2: of 6 rows, 6 or 5, and all 11
    assert ranks[0]["unsharded"] == ranks[1]["unsharded"] == list(range(11))


def test_the_training_loop_learns_a_table_from_tensor_batches():
    """Two classes separated by a numeric feature and a category; the loop reads the
    batches as it reads a DataLoader, class weights from their targets included."""
    generator = torch.Generator().manual_seed(0)
    numeric = torch.randn(400, 2, generator=generator)
    category = torch.randint(0, 3, (400,), generator=generator)
    targets = ((numeric[:, 0] > 0) ^ (category == 2)).long()
    features = torch.cat([numeric, category[:, None].float()], dim=1)
    loaders = {"train": TensorBatches(features[:300], targets[:300], 32, shuffle=True, seed=0),
               "val": TensorBatches(features[300:], targets[300:], 100, shuffle=False, seed=0)}
    config = TrainingConfig(epochs=15, seed=0, progress_bar=False,
                            optimizer=OptimizerConfig("AdamW", {"lr": 0.01}))
    model = TabularMLP(numeric_features=2, cardinalities=[3], num_outputs=2, hidden=[32])
    result = api.fit(model, loaders, config, num_classes=2)
    assert result.history[-1]["val_accuracy"] > 0.9
