"""The one place that knows about process ranks: how many processes a training job
runs, which one this is, and what they share.

Two launches give one job. ``torchrun`` starts every process itself and tells each
its place through ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``;
with ``training.devices: N`` a single process starts N workers on this machine with
:func:`spawn`, setting the same variables. Either way each process joins the same
kind of process group (NCCL on CUDA, Gloo on the CPU), its model is wrapped in
``DistributedDataParallel``, every sampler is sharded across the ranks, and only
rank 0 writes (:func:`is_main_process`).

torch is imported by the functions that use it, not with the module: Kedro's hooks ask
:func:`launch_rank` for every command, including those that never load torch.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.handlers
import math
import os
import queue
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

from kedro_torch.pytorch.config import ParameterError, TrainingConfig
from kedro_torch.pytorch.interrupts import stop_on_signals

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# What torchrun (and :func:`spawn`) set in every process it starts.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# The process groups made here beside the default one; ended with it by stop().
_groups: dict[str, Any] = {}


# --- where this process stands ---------------------------------------------------------


def launched() -> bool:
    """Whether a launcher (torchrun, or :func:`spawn`) started this process as one rank."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def launch_rank() -> int:
    """This process's rank as its launcher set it; 0 when none did."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    import torch.distributed as dist  # noqa: PLC0415

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if is_distributed():
        import torch.distributed as dist  # noqa: PLC0415

        return dist.get_rank()
    return launch_rank()


def world_size() -> int:
    """Processes in the job: the process group's, else the launcher's, else 1."""
    if is_distributed():
        import torch.distributed as dist  # noqa: PLC0415

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0: the one process of a job that writes (checkpoints, catalog, MLflow).

    Known from the launcher's ``RANK`` before any process group exists, so that
    tracking can stay away on the other ranks from the start.
    """
    return rank() == 0


def restarts() -> int:
    """How many times torchrun restarted this job's workers (``--max-restarts``) after a
    failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


# --- the plan: strategy, processes, backend ---------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How a training job runs, resolved from ``training.strategy``, ``training.devices``,
    ``training.dist_backend`` and the launcher's environment."""

    strategy: str  # single | dp | ddp
    world_size: int  # processes training together
    spawn: int  # workers this process starts itself (training.devices > 1); 0 = none
    backend: str | None  # nccl | gloo for ddp
    processes_per_node: int
    devices: int  # GPUs that DataParallel spreads a batch over
    note: str | None = None  # what a user should be told about the choice

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // self.processes_per_node)

    def tags(self) -> dict[str, str]:
        """What an MLflow run records of it."""
        return {"strategy": self.strategy, "world_size": str(self.world_size),
                "backend": self.backend or "none", "nodes": str(self.nodes),
                "processes_per_node": str(self.processes_per_node)}


def plan(training: TrainingConfig, device: torch.device) -> Plan:
    """The plan for ``training`` on ``device``; a :class:`ParameterError` naming the key
    for a combination this machine or launch cannot run."""
    import torch  # noqa: PLC0415

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    devices = training.devices
    if devices == "auto":
        devices = max(gpus, 1) if not launched() else 1
    backend = _backend(training, device)
    if launched():
        return _launched_plan(training, device, devices, gpus, backend)
    strategy = training.strategy
    if strategy == "auto":
        strategy = "ddp" if devices > 1 else "single"
    if strategy == "single" and devices > 1:
        raise ParameterError(f"training.strategy: single trains in one process, but "
                             f"training.devices is {devices}; use ddp (or auto) for {devices}")
    if device.type == "cuda" and devices > gpus:
        raise ParameterError(f"training.devices: {devices}, but this machine has {gpus} "
                             "CUDA device(s)")
    if strategy == "dp":
        return _dp_plan(device, devices)
    if strategy == "ddp":
        if device.type == "mps":
            raise ParameterError("training.strategy: ddp is not supported on MPS; use "
                                 "training.device: cpu or cuda")
        if devices > 1:
            return Plan("ddp", devices, devices, backend, devices, 1)
        return Plan("single", 1, 0, None, 1, 1,
                    "training.strategy: ddp with training.devices 1 trains in this process")
    return Plan("single", 1, 0, None, 1, 1)


def _launched_plan(training: TrainingConfig, device: torch.device, devices: int, gpus: int,
                   backend: str) -> Plan:
    world = int(os.environ["WORLD_SIZE"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if devices > 1:
        raise ParameterError(
            f"training.devices: {devices}, but this process was launched by torchrun "
            f"(WORLD_SIZE={world}), whose --nproc-per-node sets the processes; leave "
            "training.devices at 1 or auto")
    if world > 1 and training.strategy in ("single", "dp"):
        raise ParameterError(
            f"training.strategy: {training.strategy} under torchrun (WORLD_SIZE={world}) "
            f"would train {world} separate models; use auto or ddp")
    if device.type == "mps" and world > 1:
        raise ParameterError("training.strategy: ddp is not supported on MPS; use "
                             "training.device: cpu or cuda")
    if device.type == "cuda" and per_node > gpus:
        raise ParameterError(f"training.device: cuda, but torchrun starts {per_node} "
                             f"processes on a machine with {gpus} CUDA device(s)")
    if world == 1:
        return Plan("single", 1, 0, None, 1, 1)
    return Plan("ddp", world, 0, backend, per_node, 1)


def _dp_plan(device: torch.device, devices: int) -> Plan:
    if device.type == "mps":
        raise ParameterError("training.strategy: dp needs CUDA devices, not MPS")
    if device.type != "cuda":
        return Plan("single", 1, 0, None, 1, 1,
                    "training.strategy: dp does nothing on the CPU (DataParallel spreads "
                    "batches over CUDA devices); training in one process")
    note = None if devices > 1 else ("training.strategy: dp on one device does nothing; "
                                     "set training.devices to the GPUs to use")
    return Plan("dp", 1, 0, None, 1, devices, note)


def _backend(training: TrainingConfig, device: torch.device) -> str:
    if training.dist_backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if training.dist_backend == "nccl" and device.type != "cuda":
        raise ParameterError(f"training.dist_backend: nccl needs CUDA, but training runs on "
                             f"{device.type}; use gloo or auto")
    return training.dist_backend


def check(training: TrainingConfig, device: torch.device) -> None:
    """Refuse what :func:`plan` refuses, and SyncBatchNorm off CUDA, before any work."""
    plan(training, device)
    if training.sync_batchnorm and device.type != "cuda":
        raise ParameterError("training.sync_batchnorm: SyncBatchNorm runs on CUDA devices "
                             f"only, not {device.type}")


# --- the process group ------------------------------------------------------------------


def start(training: TrainingConfig, resolved: Plan) -> bool:
    """Join this process's group (from the launcher's environment) if the plan needs one
    and none exists; return whether it started one, which :func:`stop` then ends."""
    if resolved.strategy != "ddp" or resolved.spawn or is_distributed():
        return False
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    if resolved.backend == "nccl":
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=training.dist_timeout)
    store, this_rank, processes = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun keeps its store across restarts (--max-restarts): without a prefix of
    # their own, restarted ranks would read the addresses of the processes they replace.
    attempt = dist.PrefixStore(f"attempt_{restarts()}", store)
    dist.init_process_group(resolved.backend, store=attempt, rank=this_rank,
                            world_size=processes, timeout=timeout)
    logger.info("Rank %d of %d joined the %s process group", rank(), world_size(),
                resolved.backend)
    return True


def stop() -> None:
    if is_distributed():
        import torch.distributed as dist  # noqa: PLC0415

        dist.destroy_process_group()
    _groups.clear()  # destroyed with it


@contextlib.contextmanager
def process_group(training: TrainingConfig, resolved: Plan) -> Iterator[None]:
    """:func:`start` for the block, and :func:`stop` after it if it started the group."""
    started = start(training, resolved)
    try:
        yield
    finally:
        if started:
            stop()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_of_this_rank(device: torch.device) -> torch.device:
    """The GPU of this rank (``LOCAL_RANK``) when the job's processes share CUDA devices."""
    import torch  # noqa: PLC0415

    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def wrap(model: nn.Module, device: torch.device, resolved: Plan,
         find_unused_parameters: bool = False) -> nn.Module:
    """The module that trains: ``DistributedDataParallel`` around ``model`` under ddp,
    ``DataParallel`` under dp on several GPUs, else ``model`` itself. ``model`` keeps
    the weights, whose state_dict has no ``module.`` prefix.

    ``find_unused_parameters`` lets DDP cope with parameters frozen after it was built
    (``model.freeze_backbone``), at the cost of a walk of the graph every step."""
    from torch import nn  # noqa: PLC0415

    if resolved.strategy == "ddp" and is_distributed() and world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if resolved.strategy == "dp" and resolved.devices > 1:
        return nn.DataParallel(model, device_ids=list(range(resolved.devices)))
    return model


# --- collectives ------------------------------------------------------------------------


def sum_across_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each value (a count, or a confusion matrix) summed over the ranks in one
    all-reduce; the values themselves alone."""
    if not is_distributed():
        return list(values)
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    flat = torch.cat([value.to(torch.float64).flatten() for value in values])
    dist.all_reduce(flat)
    return [part.view(value.shape) for part, value in
            zip(flat.split([value.numel() for value in values]), values, strict=True)]


def agreed_signal(signum: int | None) -> int | None:
    """The signal any rank received, on every rank, so that all stop at the same step
    (a rank that stopped alone would leave the others waiting in an all-reduce).

    Asked at every optimizer step, over a Gloo group on the CPU: a round trip of one
    number that never waits for the GPU."""
    if not is_distributed():
        return signum
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    if "cpu" not in _groups:  # every rank gets here at its first step
        _groups["cpu"] = None if dist.get_backend() == "gloo" else dist.new_group(
            backend="gloo")
    flag = torch.tensor([signum or 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_groups["cpu"])
    return int(flag.item()) or None


def once_per_machine(compute: Callable[[], Any]) -> Any:
    """``compute()`` run by local rank 0 of each machine and sent to the machine's other
    ranks, which wait for it; ``compute()`` itself where there are no such ranks.

    The result travels pickled over a Gloo group of the machine's ranks: every rank
    holds a copy of it. An error on local rank 0 is raised on every rank.
    """
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not is_distributed() or per_node == 1:
        return compute()
    import torch.distributed as dist  # noqa: PLC0415

    if "machine" not in _groups:  # every rank creates every machine's group
        _groups["machine"], _ = dist.new_subgroups(per_node, backend="gloo")
    group = _groups["machine"]
    box: list[Any] = [None]
    if local_rank() == 0:
        try:
            box[0] = ("result", compute())
        except Exception as error:  # every rank raises it below
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# --- samplers ---------------------------------------------------------------------------


class RankShardedSampler:
    """Every ``world_size``-th item of another sampler, starting at ``rank``.

    Unlike ``DistributedSampler``, which shuffles by itself, this shards any
    sampler (shuffled, class-balanced, sequential). The ranks stay in step without
    ``set_epoch``: each draws the same full order from an identically seeded
    generator and keeps its own slice. With ``pad``, the order is padded by
    repeating it so all ranks run the same number of batches (training, where the
    ranks meet at every step); without, each sample is seen exactly once (evaluation).

    ``rank`` and ``world_size`` left out are read from the process group each time the
    sampler is used, so a DataLoader built before the group exists, or in a process
    that hands it to workers, shards in whichever process iterates it.
    """

    def __init__(self, sampler: Any, rank: int | None = None, world_size: int | None = None,
                 pad: bool = True):
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.sampler, self.pad = sampler, pad
        self._rank, self._world_size = rank, world_size

    def _place(self) -> tuple[int, int]:
        if self._rank is not None and self._world_size is not None:
            return self._rank, self._world_size
        return (rank(), world_size()) if is_distributed() else (0, 1)

    def __iter__(self) -> Iterator:
        place, world = self._place()
        if world == 1:
            return iter(self.sampler)
        order = list(self.sampler)
        if self.pad:
            total = math.ceil(len(order) / world) * world
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return iter(order[place::world])

    def __len__(self) -> int:
        place, world = self._place()
        if self.pad:
            return math.ceil(len(self.sampler) / world)
        return len(range(place, len(self.sampler), world))


def shard_for_this_rank(sampler: Any, pad: bool = True) -> RankShardedSampler:
    """``sampler``, sharded across the ranks of whichever process group iterates it."""
    return RankShardedSampler(sampler, pad=pad)


# --- starting workers on this machine ---------------------------------------------------


class WorkerDied(RuntimeError):
    """A training process ended without an error of its own: killed by a signal, or
    exited. The others were stopped with it."""

    def __init__(self, rank: int, pid: int, signal_name: str | None, exit_code: int) -> None:
        how = f"was killed by {signal_name}" if signal_name else f"exited with status {exit_code}"
        why = (" SIGKILL comes from outside the process: the kernel's out-of-memory killer "
               "(see dmesg) or a scheduler." if signal_name == "SIGKILL" else "")
        super().__init__(
            f"The training process of rank {rank} (pid {pid}) {how}, so the others were "
            f"stopped.{why} The checkpoints written so far are kept: training.resume=auto "
            "continues from the last one.")


def spawn(worker: Callable[..., None], processes: int, args: tuple,
          on_message: Callable[[Any], None]) -> int | None:
    """Run ``worker(send, *args)`` in ``processes`` new processes, ranks 0..n-1 of one job
    on this machine, with the environment torchrun would give them; pass what they
    ``send`` to ``on_message`` (in this thread) until all have ended.

    ``args`` are pickled as ``torch.multiprocessing`` does: tensors, such as the decoded
    images of the memory cache, move to shared memory once and every worker maps them.
    SIGTERM or SIGINT to this process is passed to the workers as SIGTERM, so that
    training stops at its next step with a checkpoint; returns the signal, if one came.
    A worker's failure ends the others and is raised here: its exception, or
    :class:`WorkerDied` if it was killed.
    """
    import torch  # noqa: PLC0415
    import torch.multiprocessing as mp  # noqa: PLC0415

    # torch's own reduction of a Generator fails through shared memory (torch 2.14).
    ForkingPickler.register(torch.Generator, _reduce_generator)
    messages = mp.get_context("spawn").Queue()
    context = mp.start_processes(
        _as_rank, args=(processes, _free_port(), worker, messages, args),
        nprocs=processes, join=False, start_method="spawn",
    )
    received = None
    try:
        with stop_on_signals() as stop:
            while not context.join(timeout=0.05):
                if stop.signum is not None and received is None:
                    received = stop.signum
                    for process in context.processes:
                        os.kill(process.pid, signal.SIGTERM)
                _relay(messages, on_message)
        _relay(messages, on_message)
    except mp.ProcessExitedException as died:
        _relay(messages, on_message)  # what the others said before they were stopped
        raise WorkerDied(died.error_index, died.error_pid, died.signal_name,
                         died.exit_code) from None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return received


def _relay(messages: Any, on_message: Callable[[Any], None]) -> None:
    while True:
        try:
            message = messages.get_nowait()
        except queue.Empty:
            return
        if isinstance(message, logging.LogRecord):
            logging.getLogger(message.name).handle(message)
        else:
            on_message(message)


def _as_rank(index: int, processes: int, port: int, worker: Callable[..., None],
             messages: Any, args: tuple) -> None:
    """A spawned worker: torchrun's environment, a fair share of the CPU threads, and
    its log records sent to the parent (rank 0's from INFO, the others' warnings)."""
    import torch  # noqa: PLC0415

    os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index),
                       "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cpus or 1) // processes))
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(messages)]
    root.setLevel(logging.INFO if index == 0 else logging.WARNING)
    worker(messages.put, *args)


def _reduce_generator(generator: torch.Generator) -> tuple:
    return _rebuild_generator, (str(generator.device), generator.get_state().numpy().tobytes())


def _rebuild_generator(device: str, state: bytes) -> torch.Generator:
    import torch  # noqa: PLC0415

    generator = torch.Generator(device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
