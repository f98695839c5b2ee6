"""Batches of a table held whole in two tensors: a DataLoader stand-in for tables.

A DataLoader fetches rows one ``__getitem__`` at a time and collates them, which costs
far more than the step of a small model on a table. Here a batch is one index of the
whole tensors (``features[rows]``), and the training loop sees what it sees of a
DataLoader: ``generator``, ``batch_size``, ``dataset.targets``, ``len()`` and
``(inputs, targets)`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kedro_torch.pytorch import distributed


@dataclass(frozen=True)
class TensorRows:
    """The rows behind a :class:`TensorBatches`; ``targets`` weigh the classes of a
    ``class_weights: balanced`` loss."""

    features: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)


class TensorBatches:
    """Batches of ``(features[rows], targets[rows])``, shuffled or in order.

    Each shuffled epoch draws a new permutation from :attr:`generator`, seeded with
    ``seed``, so that restoring the generator's state replays an epoch's order (what
    resuming an interrupted epoch needs). With ``shard``, under ``torch.distributed``,
    every rank draws the same permutation and takes every ``world_size``-th row of it
    from its rank on, as :class:`~kedro_torch.pytorch.distributed.RankShardedSampler`
    does: a shuffled (training) order is first padded by repeating it, so that all
    ranks run as many steps; an order kept (evaluation) is not, so that each row
    counts once. The ranks are read when an epoch starts, so batches built before the
    process group, or sent pickled to spawned workers, shard where they are iterated.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, batch_size: int, *,
                 shuffle: bool, seed: int, drop_last: bool = False, shard: bool = True):
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} rows of features but {len(targets)} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.dataset = TensorRows(features, targets)
        self.batch_size, self.shuffle, self.drop_last, self.shard = (
            batch_size, shuffle, drop_last, shard)
        self.generator = torch.Generator().manual_seed(seed)

    def _place(self) -> tuple[int, int]:
        if self.shard and distributed.is_distributed():
            return distributed.rank(), distributed.world_size()
        return 0, 1

    def _rows_per_epoch(self) -> int:
        """How many rows this rank takes in an epoch."""
        rank, world = self._place()
        rows = len(self.dataset)
        return math.ceil(rows / world) if self.shuffle else len(range(rank, rows, world))

    def __len__(self) -> int:
        rows = self._rows_per_epoch()
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def _order(self) -> torch.Tensor:
        """This rank's rows for one epoch, in the order they are fed."""
        rank, world = self._place()
        rows = len(self.dataset)
        if not self.shuffle:
            return torch.arange(rank, rows, world)
        order = torch.randperm(rows, generator=self.generator)
        if world > 1:
            total = math.ceil(rows / world) * world
            order = order.repeat(math.ceil(total / max(rows, 1)))[:total]
        return order[rank::world]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        features, targets = self.dataset.features, self.dataset.targets
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield features[rows], targets[rows]
