"""Samplers sharded across ranks: alone, and under a real two-process gloo group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import RandomSampler, SequentialSampler

from kedro_torch.pytorch.distributed import RankShardedSampler, shard_for_this_rank


def test_ranks_split_one_order_between_them_padding_the_last_round():
    base = SequentialSampler(range(10))
    shards = [list(RankShardedSampler(base, rank, 4)) for rank in range(4)]
    assert shards == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert all(len(RankShardedSampler(base, rank, 4)) == 3 for rank in range(4))


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is outside a world of size 2"):
        RankShardedSampler(SequentialSampler(range(4)), 2, 2)


def test_a_single_process_keeps_its_sampler():
    sampler = SequentialSampler(range(3))
    assert shard_for_this_rank(sampler) is sampler


def _rank_main(rank: int, world_size: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size
    )
    try:
        generator = torch.Generator().manual_seed(5)
        sampler = shard_for_this_rank(RandomSampler(range(20), generator=generator))
        epochs = [list(sampler), list(sampler)]
        Path(folder, f"rank{rank}.json").write_text(json.dumps(epochs))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_each_shuffled_epoch_without_overlap(tmp_path):
    mp.start_processes(_rank_main, args=(2, str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        first, second = ranks[0][epoch], ranks[1][epoch]
        assert sorted(first + second) == list(range(20))
    assert ranks[0][0] != ranks[0][1]  # a new order each epoch, without set_epoch
