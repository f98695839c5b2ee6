"""Images per second of ResNet-50 training on one GPU, through the project's own
loaders and training loop, against NVIDIA's published figure.

Requirement measured:

    End-to-end ResNet-50 training at 224 px from a folder of JPEGs at >= 2,500
    images/s on one H200 with bf16 and channels_last, the compute-only figure
    beside it, and under 10% of each step spent waiting for data.

The anchor is NVIDIA's Deep Learning Examples ResNet-50 v1.5 in PyTorch: 2,470
images/s training on one A100 80GB with AMP, fed by DALI. Every figure below is
printed with its ratio to it.

The script writes a folder of JPEGs (default 20,000 images in 100 classes, width and
height drawn from 256-500 px; kept in ``--data-dir`` and reused), checks it with
``api.prepare_data`` as the training pipeline does, builds the training DataLoader
with ``api.build_loaders`` (RandomResizedCrop to 224 and a horizontal flip per image,
decoded at ``--load-size``) and trains ``resnet50`` with ``api.fit``, for every
combination of the settings given (``--precision``, ``--channels-last``,
``--compile``, ``--batch-size``, ``--normalize-on``). Under ``--precision 32`` the
engine runs matrix products in TF32 on a GPU of compute capability 8.0 or later, as
NVIDIA's "TF32" figure does. Per setting and round it times:

- compute only: the same batch, made once and already on the device, fed
  ``--steps`` times: what the model, precision and loop can do when data costs nothing;
- end to end: the generated folder through the project's DataLoader
  (``--cache none`` decodes every JPEG in every step; ``memory`` reads the images the
  check decoded at ``--load-size``);
- data wait: the share of each end-to-end step the loop spent blocked on the
  DataLoader for its next batch.

The first ``--warmup`` steps of each run (cuDNN autotuning, compilation, worker
start) are not timed. Each step ends with a device synchronisation (the loop's NaN
guard does one anyway), so that time blocked on the DataLoader is time the GPU sat
idle. In each round every setting runs in turn, in a rotating order; the figures
are medians over ``--repeats`` rounds.

Without CUDA (or with ``--smoke``) it runs a tiny CPU version of the same path
(resnet18, 32 px, a few steps) that checks the script works and measures no GPU
figure: it says so.

    .venv/bin/python benchmarks/gpu_throughput.py
    .venv/bin/python benchmarks/gpu_throughput.py --compile false true --batch-size 256 384
    .venv/bin/python benchmarks/gpu_throughput.py --smoke      # the CPU check, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from data_throughput import write_images

from kedro_torch.pytorch import api, data, engine
from kedro_torch.pytorch.config import (
    DataConfig,
    ModelConfig,
    NamedSpec,
    NormalizeConfig,
    OptimizerConfig,
    SplitConfig,
    TrainingConfig,
    TransformsConfig,
)

ANCHOR = 2470  # images/s, NVIDIA DLE ResNet-50 v1.5, PyTorch, 1x A100 80GB, AMP
GOAL = 2500
IMAGENET = NormalizeConfig(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
# The tiny CPU version: the same code path in seconds.
SMOKE = {"images": 48, "classes": 4, "min_size": 40, "max_size": 64, "image_size": 32,
         "load_size": 40, "model": "resnet18", "batch_size": [8], "warmup": 1, "steps": 3,
         "repeats": 1, "workers": 0, "compile": [False]}


def flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "on", "off", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "on", "1")


@dataclass(frozen=True)
class Setting:
    precision: str
    channels_last: bool
    compile: bool
    batch_size: int
    normalize_on: str

    def __str__(self) -> str:
        return (f"{self.precision:>4} cl={'on' if self.channels_last else 'off':<3} "
                f"compile={'on' if self.compile else 'off':<3} batch={self.batch_size} "
                f"norm={self.normalize_on}")

    @property
    def feed(self) -> tuple[int, str]:
        """What picks the DataLoader."""
        return self.batch_size, self.normalize_on

    @property
    def step(self) -> tuple:
        """What the compute-only figure depends on: not where batches are normalized."""
        return self.precision, self.channels_last, self.compile, self.batch_size


class StepClock(engine.Callback):
    """When each training step ended, the device's work included."""

    def __init__(self, device: torch.device):
        self.device, self.ends = device, []

    def on_batch_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ends.append(time.perf_counter())


class TimedLoader:
    """A DataLoader (or any batches) that records how long each next batch kept the
    loop waiting; everything else is the wrapped loader's."""

    def __init__(self, loader):
        self.loader, self.waits = loader, []

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - start)
            yield batch


class SameBatch:
    """One batch already on the device, ``length`` times: a loader whose data is free."""

    dataset = sampler = batch_sampler = generator = None

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, length: int):
        self.batch, self.length, self.batch_size = (images, targets), length, len(targets)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator:
        return itertools.repeat(self.batch, self.length)


def timed_fit(loader, setting: Setting, args: argparse.Namespace, num_classes: int,
              device: torch.device) -> tuple[float, float]:
    """Images per second of the timed steps, and the share of them spent waiting for data."""
    model = api.build_model(ModelConfig(name=args.model), DataConfig(channels=3),
                            {str(index): index for index in range(num_classes)}, {}, seed=0)
    config = TrainingConfig(
        epochs=1, device=device.type, precision=setting.precision,
        channels_last=setting.channels_last, compile=setting.compile,
        max_batches_per_epoch=args.warmup + args.steps, progress_bar=False,
        optimizer=OptimizerConfig(name="SGD", kwargs={"lr": 0.1, "momentum": 0.9,
                                                      "weight_decay": 5e-5},
                                  fallback=NamedSpec("SGD")),
    )
    if setting.compile:
        # Each fit compiles afresh, as a new run does: code compiled for the other
        # settings would count against dynamo's recompile limit, past which it runs eager.
        torch._dynamo.reset()
    clock, timed = StepClock(device), TimedLoader(loader)
    api.fit(model, {"train": timed}, config, num_classes=num_classes, callbacks=[clock])
    seconds = clock.ends[-1] - clock.ends[args.warmup - 1]
    waited = sum(timed.waits[args.warmup:args.warmup + args.steps])
    return args.steps * setting.batch_size / seconds, waited / seconds


def prepared_folder(args: argparse.Namespace) -> tuple[api.PreparedData, DataConfig]:
    root = args.data_dir / f"jpeg-{args.images}-{args.min_size}-{args.max_size}"
    start = time.perf_counter()
    write_images(root, args.images, args.min_size, args.max_size, classes=args.classes)
    print(f"{args.images} JPEGs of {args.min_size}-{args.max_size} px in {args.classes} "
          f"classes in {root} (ready in {time.perf_counter() - start:.1f} s)", flush=True)
    crop = {"size": args.image_size, "antialias": True}
    config = DataConfig(
        channels=3, image_size=args.image_size, load_size=args.load_size, cache=args.cache,
        normalize=IMAGENET, num_workers=args.workers, batch_size=args.batch_size[0],
        split=SplitConfig(train=0.9, val=0.0, test=0.1),
        transforms=TransformsConfig(train=[NamedSpec("RandomResizedCrop", crop),
                                           NamedSpec("RandomHorizontalFlip")]),
    )
    start = time.perf_counter()
    manifest = data.manifest_from_listing(data.list_folder(str(root)))
    prepared = api.prepare_data(manifest, config)
    print(f"checked with api.prepare_data (cache {args.cache}) in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return prepared, config


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--min-size", type=int, default=256, help="smallest JPEG side")
    parser.add_argument("--max-size", type=int, default=500, help="largest JPEG side")
    parser.add_argument("--image-size", type=int, default=224, help="size fed to the model")
    parser.add_argument("--load-size", type=int, default=256,
                        help="size images are decoded at before the random crop")
    parser.add_argument("--cache", choices=["none", "memory"], default="none")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", nargs="+", default=["32", "bf16"],
                        choices=["32", "bf16", "16"])
    parser.add_argument("--channels-last", nargs="+", type=flag, default=[False, True])
    parser.add_argument("--compile", nargs="+", type=flag, default=[False])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[256])
    parser.add_argument("--normalize-on", nargs="+", choices=["loader", "device"],
                        default=["loader", "device"],
                        help="data.normalize_on: where uint8 pixels become normalized floats")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: data.num_workers' own choice)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per run")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny CPU version, even where CUDA is available")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "kedro-torch-gpu-throughput")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps need at least 1 step each")
    return args


def main() -> None:
    args = arguments()
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke:
        vars(args).update(SMOKE)
        print("No GPU figure was measured: this is the CPU smoke version "
              f"({'--smoke' if args.smoke else 'no CUDA device'}): {args.model} at "
              f"{args.image_size} px, {args.steps} timed steps. Its images/s say only that "
              "the path runs.")
    device = torch.device("cpu" if smoke else "cuda")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{os.cpu_count()} CPUs, device: "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    prepared, data_config = prepared_folder(args)
    num_classes = len(prepared.label_map)
    settings = [Setting(*values) for values in itertools.product(
        args.precision, args.channels_last, args.compile, args.batch_size, args.normalize_on)]
    loaders = {
        (batch, where): api.build_loaders(
            prepared.model_input, prepared.preprocessing,
            dataclasses.replace(data_config, batch_size=batch, normalize_on=where),
            seed=0, images=prepared.images, device=device.type)["train"]
        for batch, where in {setting.feed for setting in settings}
    }
    needed = args.warmup + args.steps + 1
    for (batch, _), loader in loaders.items():
        if len(loader) < needed:
            raise SystemExit(f"--images: {len(loader)} batches of {batch} in the training "
                             f"split, {needed} needed (--warmup + --steps + 1)")
    print(f"{args.model} at {args.image_size} px, {len(settings)} settings, "
          f"{args.warmup} + {args.steps} steps x {args.repeats} rounds, workers "
          f"{next(iter(loaders.values())).num_workers}, load average (1 min) "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    report(measure(settings, loaders, args, num_classes, device), args, smoke)


def measure(settings: list[Setting], loaders: dict, args: argparse.Namespace,
            num_classes: int, device: torch.device
            ) -> dict[Setting, list[tuple[float, float, float]]]:
    """Per setting, per round: compute-only and end-to-end images/s and the data-wait
    share. The compute-only figure is taken once per round for the settings that
    differ only in where batches are normalized."""
    results: dict[Setting, list[tuple[float, float, float]]] = {s: [] for s in settings}
    for round_ in range(args.repeats):
        turn = round_ % len(settings)
        computed: dict[tuple, float] = {}
        for setting in settings[turn:] + settings[:turn]:
            if setting.step not in computed:
                fake = torch.randn(setting.batch_size, 3, args.image_size, args.image_size,
                                   device=device)
                if setting.channels_last:
                    fake = fake.contiguous(memory_format=torch.channels_last)
                targets = torch.randint(0, num_classes, (setting.batch_size,), device=device)
                batches = SameBatch(fake, targets, len(loaders[setting.feed]))
                computed[setting.step], _ = timed_fit(batches, setting, args, num_classes,
                                                      device)
            compute = computed[setting.step]
            end_to_end, wait = timed_fit(loaders[setting.feed], setting, args, num_classes,
                                         device)
            results[setting].append((compute, end_to_end, wait))
            print(f"round {round_ + 1}: {setting}: compute {compute:.0f} images/s, end to end "
                  f"{end_to_end:.0f} images/s, data wait {wait:.0%}", flush=True)
    return results


def report(results: dict[Setting, list[tuple[float, float, float]]],
           args: argparse.Namespace, smoke: bool) -> None:
    """The medians of the rounds, their ratios, and the goal's figure."""
    print()
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(f"medians over {args.repeats} rounds; anchor: {ANCHOR} images/s (NVIDIA DLE "
          "ResNet-50 v1.5, 1x A100 80GB, AMP, DALI)")
    print(f"{'setting':<48}{'compute img/s':>15}{'end-to-end img/s':>18}{'data wait':>11}"
          f"{'e2e/compute':>13}{'e2e/anchor':>12}")
    medians = {}
    for setting, rounds in results.items():
        compute, end_to_end, wait = (statistics.median(r[i] for r in rounds) for i in range(3))
        share = statistics.median(e / c for c, e, _ in rounds)
        medians[setting] = end_to_end, wait
        print(f"{setting!s:<48}{compute:>15.0f}{end_to_end:>18.0f}{wait:>11.0%}"
              f"{share:>12.2f}x{end_to_end / ANCHOR:>11.2f}x")
    if smoke:
        print("No GPU figure was measured (CPU smoke version): the figures above are not "
              "comparable with the anchor.")
        return
    chosen = [s for s in results if s.precision == "bf16" and s.channels_last]
    if chosen:
        best = max(chosen, key=lambda s: medians[s][0])
        rate, wait = medians[best]
        print(f"goal: bf16 + channels_last end to end >= {GOAL} images/s with data wait "
              f"< 10%: {rate:.0f} images/s ({rate / ANCHOR:.2f}x the anchor), data wait "
              f"{wait:.0%} ({best})")


if __name__ == "__main__":
    main()
