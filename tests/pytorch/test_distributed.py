"""Data-parallel training on the CPU: samplers sharded across ranks, the plan that
``training.strategy`` and ``training.devices`` resolve to, and real two-process Gloo
groups whose training and metrics must equal one process's on the combined batch."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import RandomSampler, SequentialSampler

from kedro_torch.pytorch import api, distributed, engine, loaders, tasks
from kedro_torch.pytorch.config import (
    DataConfig,
    OptimizerConfig,
    ParameterError,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.distributed import RankShardedSampler, shard_for_this_rank
from kedro_torch.pytorch.segmentation import UNet
from kedro_torch.pytorch.tasks import image_classification
from kedro_torch.pytorch.tasks.segmentation import PairDataset, Pairs
from tests.conftest import copy_digits

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

CPU = torch.device("cpu")

# --- samplers ----------------------------------------------------------------------------


def test_ranks_split_one_order_between_them_padding_the_last_round():
    base = SequentialSampler(range(10))
    shards = [list(RankShardedSampler(base, rank, 4)) for rank in range(4)]
    assert shards == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert all(len(RankShardedSampler(base, rank, 4)) == 3 for rank in range(4))


def test_without_padding_every_item_is_seen_exactly_once():
    base = SequentialSampler(range(10))
    shards = [list(RankShardedSampler(base, rank, 4, pad=False)) for rank in range(4)]
    assert shards == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    assert [len(RankShardedSampler(base, rank, 4, pad=False)) for rank in range(4)] == [3, 3,
                                                                                        2, 2]


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is outside a world of size 2"):
        RankShardedSampler(SequentialSampler(range(4)), 2, 2)


def test_a_single_process_reads_the_whole_order():
    sampler = shard_for_this_rank(SequentialSampler(range(3)))
    assert list(sampler) == [0, 1, 2]
    assert len(sampler) == 3


# --- the plan ------------------------------------------------------------------------------


def training(**values) -> TrainingConfig:
    return parse(TrainingConfig, values, "training")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")


@pytest.mark.usefixtures("no_launcher")
def test_devices_start_that_many_ddp_processes_and_auto_means_single_for_one():
    plan = distributed.plan(training(devices=2), CPU)
    assert (plan.strategy, plan.world_size, plan.spawn, plan.backend) == ("ddp", 2, 2, "gloo")
    assert plan.tags() == {"strategy": "ddp", "world_size": "2", "backend": "gloo",
                           "nodes": "1", "processes_per_node": "2"}
    assert distributed.plan(training(), CPU).strategy == "single"
    assert distributed.plan(training(devices="auto"), CPU).world_size == 1  # no GPU here
    one = distributed.plan(training(strategy="ddp"), CPU)
    assert (one.strategy, one.spawn) == ("single", 0)
    assert "training.devices 1" in one.note


@pytest.mark.usefixtures("under_torchrun")
def test_under_torchrun_the_launcher_sets_the_processes():
    plan = distributed.plan(training(), CPU)
    assert (plan.strategy, plan.world_size, plan.spawn, plan.nodes) == ("ddp", 4, 0, 2)
    assert not distributed.is_main_process()  # known from RANK before any group exists
    with pytest.raises(ParameterError, match=r"^training.devices: 2, but .* torchrun"):
        distributed.plan(training(devices=2), CPU)
    with pytest.raises(ParameterError, match=r"^training.strategy: single under torchrun"):
        distributed.plan(training(strategy="single"), CPU)


@pytest.mark.usefixtures("no_launcher")
@pytest.mark.parametrize(("values", "device", "message"), [
    ({"strategy": "single", "devices": 2}, "cpu", r"^training.strategy: single trains in one"),
    ({"devices": 2}, "cuda", r"^training.devices: 2, but this machine has 0 CUDA"),
    ({"strategy": "ddp", "devices": 2}, "mps", r"^training.strategy: ddp is not supported on MPS"),
    ({"strategy": "dp"}, "mps", r"^training.strategy: dp needs CUDA"),
    ({"devices": 2, "dist_backend": "nccl"}, "cpu", r"^training.dist_backend: nccl needs CUDA"),
    ({"devices": 2, "sync_batchnorm": True}, "cpu", r"^training.sync_batchnorm: .* CUDA"),
])
def test_what_this_machine_cannot_run_is_refused_naming_the_key(values, device, message):
    with pytest.raises(ParameterError, match=message):
        distributed.check(training(**values), torch.device(device))


@pytest.mark.usefixtures("no_launcher")
def test_dp_on_the_cpu_trains_in_one_process_and_says_so():
    plan = distributed.plan(training(strategy="dp"), CPU)
    assert plan.strategy == "single"
    assert "dp does nothing on the CPU" in plan.note


# --- two real processes ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_rank(rank: int, world: int, per_node: int, port: int, target: Callable,
             args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank % per_node),
                       "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(per_node),
                       "GROUP_RANK": str(rank // per_node), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    target(rank, *args)


def run_ranks(target: Callable, *args, world: int = 2, per_node: int | None = None) -> None:
    """``target(rank, *args)`` in ``world`` new processes, with torchrun's environment
    for machines of ``per_node`` processes each (default: one machine).

    Forked from a fork server, which has imported torch once: quicker than spawning,
    and unlike forking this process, safe after it has run autograd."""
    multiprocessing.set_forkserver_preload([__name__])
    mp.start_processes(_as_rank, args=(world, per_node or world, _free_port(), target, args),
                       nprocs=world, start_method="forkserver")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """200 real digit PNGs, checked and split as the pipeline does."""
    folder = copy_digits(tmp_path_factory.mktemp("digits"), per_class=20)
    from kedro_torch.pytorch import data  # noqa: PLC0415

    manifest = data.manifest_from_listing(data.list_folder(str(folder)))
    return api.prepare_data(manifest, DataConfig(num_workers=0))


class TinyNet(nn.Module):
    """Without batch norm or dropout, whose statistics and masks depend on the batch
    split, so that 2 x 16 samples must give exactly what 32 give."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


def fit_digits(prepared, batch_size: int, optimizer: OptimizerConfig, accumulate: int = 1,
               **settings):
    """2 epochs of 3 optimizer steps."""
    config = DataConfig(num_workers=0, batch_size=batch_size)
    built = api.build_loaders(prepared.model_input, prepared.preprocessing, config, seed=3,
                              images=prepared.images)
    run = TrainingConfig(epochs=2, seed=3, optimizer=optimizer, progress_bar=False,
                         max_batches_per_epoch=3 * accumulate,
                         accumulate_grad_batches=accumulate, **settings)
    return api.fit(TinyNet(), built, run, num_classes=10)


def _fit_as_rank(rank: int, prepared, optimizer: OptimizerConfig, accumulate: int,
                 folder: str) -> None:
    result = fit_digits(prepared, 16 // accumulate, optimizer, accumulate)
    assert not dist.is_initialized()  # fit started the group and ended it
    torch.save((result.state_dict, result.history), f"{folder}/rank{rank}.pt")


OPTIMIZERS = {
    "SGD": OptimizerConfig("SGD", {"lr": 0.1, "momentum": 0.9}),
    "AdamW": OptimizerConfig("AdamW", {"lr": 0.01, "weight_decay": 0.01}),
}


@pytest.mark.parametrize(("name", "accumulate"), [("SGD", 1), ("AdamW", 1), ("AdamW", 2)])
def test_two_ranks_of_16_train_as_one_process_of_32(digits, tmp_path, name, accumulate,
                                                    one_thread):
    """Same weights (1e-5) after 6 steps, and the same per-epoch history: training
    metrics reduced over the ranks, validation counting each image once. With
    accumulation, each rank's 16 come as 2 batches of 8, the first under DDP's no_sync."""
    assert len(digits.model_input.query("split == 'train'")) >= 3 * 32
    run_ranks(_fit_as_rank, digits, OPTIMIZERS[name], accumulate, str(tmp_path))
    alone = fit_digits(digits, 32, OPTIMIZERS[name])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for weights, history in ranks:
        assert weights.keys() == alone.state_dict.keys()  # no "module." prefix
        for key, tensor in alone.state_dict.items():
            torch.testing.assert_close(weights[key], tensor, rtol=0, atol=1e-5)
        for row, expected in zip(history, alone.history, strict=True):
            assert row == pytest.approx(expected, abs=1e-5)
    moved = max((alone.state_dict[k] - TinyNet().state_dict()[k]).abs().max()
                for k in alone.state_dict)
    assert moved > 1e-3  # it really trained


def val_loader(prepared, rows: int, shard: bool):
    """``rows`` validation images (an odd number: a padded shard would count one twice)."""
    subset = prepared.model_input.query("split != 'train'").head(rows)
    dataset = loaders.ImageManifestDataset(
        subset["path"].tolist(), subset["target"].tolist(), channels=1, load_size=16,
        mean=[0.5], std=[0.5], content_hashes=subset["content_hash"].tolist(),
        store=prepared.images)
    return loaders.build_dataloaders({"val": dataset}, DataConfig(num_workers=0,
                                                                  eval_batch_size=4),
                                     0, shard=shard)["val"]


def _evaluate_as_rank(rank: int, prepared, folder: str) -> None:
    distributed.start(TrainingConfig(), distributed.plan(TrainingConfig(), CPU))
    try:
        loader = val_loader(prepared, 29, shard=True)
        result = engine.evaluate(TinyNet(), loader, nn.CrossEntropyLoss(), CPU, task=CLASSIFIER)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(
            {"loss": result["loss"], "accuracy": result["accuracy"], "batches": len(loader)}))
    finally:
        distributed.stop()


def test_validation_metrics_over_two_ranks_equal_one_process(digits, tmp_path, one_thread):
    run_ranks(_evaluate_as_rank, digits, str(tmp_path))
    alone = engine.evaluate(TinyNet(), val_loader(digits, 29, shard=False),
                            nn.CrossEntropyLoss(), CPU, task=CLASSIFIER)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["batches"] for r in ranks] == [4, 4]  # 15 and 14 images: each once
    for result in ranks:
        assert result["loss"] == pytest.approx(alone["loss"], abs=1e-6)
        assert result["accuracy"] == pytest.approx(alone["accuracy"], abs=1e-6)


def _share_as_rank(rank: int, folder: str, fail: bool) -> None:
    distributed.start(TrainingConfig(), distributed.plan(TrainingConfig(), CPU))
    try:
        def compute():
            with open(f"{folder}/calls", "a") as calls:
                calls.write(f"{rank}\n")
            if fail:
                raise ValueError("unreadable")
            return {"computed_by": rank, "tensor": torch.arange(3)}

        try:
            result = distributed.once_per_machine(compute)
        except ValueError as error:
            result = {"error": str(error)}
        torch.save(result, f"{folder}/rank{rank}.pt")
    finally:
        distributed.stop()


@pytest.mark.parametrize("fail", [False, True])
def test_local_rank_0_computes_once_and_every_rank_gets_its_result(tmp_path, fail):
    run_ranks(_share_as_rank, str(tmp_path), fail)
    assert (tmp_path / "calls").read_text() == "0\n"
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        if fail:
            assert result == {"error": "unreadable"}
        else:
            assert result["computed_by"] == 0
            assert result["tensor"].tolist() == [0, 1, 2]


def test_each_machine_computes_once_for_its_own_ranks(tmp_path):
    """Two machines of two processes each (ranks 0-1 and 2-3, as torchrun numbers them):
    local rank 0 of each computes, and its result reaches that machine's ranks only."""
    run_ranks(_share_as_rank, str(tmp_path), False, world=4, per_node=2)
    assert sorted((tmp_path / "calls").read_text().split()) == ["0", "2"]
    computed_by = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["computed_by"]
                   for rank in range(4)]
    assert computed_by == [0, 0, 2, 2]


def _rank_main(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        generator = torch.Generator().manual_seed(5)
        sampler = shard_for_this_rank(RandomSampler(range(20), generator=generator))
        epochs = [list(sampler), list(sampler)]
        Path(folder, f"rank{rank}.json").write_text(json.dumps(epochs))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_each_shuffled_epoch_without_overlap(tmp_path):
    run_ranks(_rank_main, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        first, second = ranks[0][epoch], ranks[1][epoch]
        assert sorted(first + second) == list(range(20))
    assert ranks[0][0] != ranks[0][1]  # a new order each epoch, without set_epoch


class Recorder(engine.Callback):
    def __init__(self):
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)


def _killed_as_rank_1(send) -> None:
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    time.sleep(60)  # rank 0 waits, as in a collective, until it is stopped


def test_a_worker_killed_from_outside_stops_the_others_and_says_which_and_how():
    started = time.monotonic()
    with pytest.raises(distributed.WorkerDied) as died:
        distributed.spawn(_killed_as_rank_1, 2, (), print)
    assert time.monotonic() - started < 30  # rank 0 did not sleep its 60 s
    message = str(died.value)
    assert "rank 1" in message and "killed by SIGKILL" in message
    assert "out-of-memory killer" in message and "training.resume=auto" in message


@pytest.mark.usefixtures("no_launcher")
def test_devices_2_starts_two_workers_whose_result_and_events_come_back(digits):
    """The ``training.devices`` launch: spawned workers, the memory cache shared with
    them, rank 0's callbacks relayed here, and what one process of 32 gives."""
    config = DataConfig(num_workers=0, batch_size=16)
    built = api.build_loaders(digits.model_input, digits.preprocessing, config, seed=3,
                              images=digits.images)
    recorder = Recorder()
    optimizer = OPTIMIZERS["SGD"]
    result = api.fit(TinyNet(), built, TrainingConfig(
        epochs=2, seed=3, optimizer=optimizer, progress_bar=False, max_batches_per_epoch=3,
        devices=2), num_classes=10, callbacks=[recorder])
    assert recorder.epochs == [1, 2]
    assert all(chunk.is_shared() for chunk in digits.images._memory.values())
    alone = fit_digits(digits, 32, optimizer)
    for key, tensor in alone.state_dict.items():
        torch.testing.assert_close(result.state_dict[key], tensor, rtol=0, atol=1e-5)
        torch.testing.assert_close(result.model.state_dict()[key], tensor, rtol=0, atol=1e-5)
    assert multiprocessing.active_children() == []


def _segmentation_val_loader(shard: bool):
    """29 random pairs of three classes, some pixels ignored, in batches of 4."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (29, 3, 8, 8), dtype=torch.uint8, generator=generator)
    masks = torch.randint(0, 3, (29, 8, 8), dtype=torch.uint8, generator=generator)
    masks[:, 0, 0] = 255
    dataset = PairDataset(Pairs({str(i): i for i in range(29)}, images, masks),
                          {"mean": [0.5], "std": [0.5]}, None)
    return loaders.build_dataloaders({"val": dataset}, DataConfig(num_workers=0,
                                                                  eval_batch_size=4),
                                     0, shard=shard)["val"]


def _segmentation_model() -> nn.Module:
    torch.manual_seed(0)
    return UNet(num_classes=3, in_channels=3, width=4, depth=1).eval()


SEGMENTER = tasks.create("semantic_segmentation", {"classes": ["a", "b", "c"],
                                                   "ignore_index": 255})


def _evaluate_segmentation_as_rank(rank: int, folder: str) -> None:
    distributed.start(TrainingConfig(), distributed.plan(TrainingConfig(), CPU))
    try:
        result = engine.evaluate(_segmentation_model(), _segmentation_val_loader(shard=True),
                                 nn.CrossEntropyLoss(ignore_index=255), CPU, task=SEGMENTER)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        distributed.stop()


def test_mean_iou_over_two_ranks_is_the_one_process_figure(tmp_path, one_thread):
    """The ranks sum their confusion matrices: a mean of their mIoUs would differ."""
    run_ranks(_evaluate_segmentation_as_rank, str(tmp_path))
    alone = engine.evaluate(_segmentation_model(), _segmentation_val_loader(shard=False),
                            nn.CrossEntropyLoss(ignore_index=255), CPU, task=SEGMENTER)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["miou"] == pytest.approx(alone["miou"], abs=1e-9)
        assert result["pixel_accuracy"] == pytest.approx(alone["pixel_accuracy"], abs=1e-9)
