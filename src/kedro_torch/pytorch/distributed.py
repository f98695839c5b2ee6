"""The one place that asks about process ranks.

Code that writes (checkpoints, catalog outputs, MLflow) calls :func:`is_main_process`
so that a run launched with ``torchrun`` writes once, from rank 0; the DataLoaders
pass their samplers through :func:`shard_for_this_rank` so each rank reads its own
share of every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Sampler


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


class RankShardedSampler(Sampler):
    """Every ``world_size``-th item of another sampler, starting at ``rank``.

    Unlike ``DistributedSampler``, which shuffles by itself, this shards any
    sampler (shuffled, class-balanced, sequential). The ranks stay in step without
    ``set_epoch``: each draws the same full order from an identically seeded
    generator and keeps its own slice. The order is padded by repeating it
    so all ranks run the same number of batches.
    """

    def __init__(self, sampler: Sampler, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self) -> Iterator:
        order = list(self.sampler)
        total = len(self) * self.world_size
        padded = (order * math.ceil(total / max(len(order), 1)))[:total]
        return iter(padded[self.rank :: self.world_size])

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.world_size)


def shard_for_this_rank(sampler: Sampler) -> Sampler:
    """``sampler`` itself in a single process; this rank's share under torch.distributed."""
    if not is_distributed() or dist.get_world_size() == 1:
        return sampler
    return RankShardedSampler(sampler, dist.get_rank(), dist.get_world_size())
