"""Data-parallel scaling: training images per second with 1, 2, ... processes.

Trains the same model on the bundled digits through the training API with
``training.devices`` = each count given (1: one process; N: N DDP workers started by
``api.fit``, Gloo on the CPU, NCCL on CUDA), and prints the steady training speed
of each, its ratio to one process and the scaling efficiency (speed-up / processes).
The speed is the images of an epoch over the epoch's wall time, validation included,
as the median of the epochs after the first (which pays for start-up); the counts
run in turn for ``--rounds`` rounds and the table holds each count's median round,
so that other work on the machine weighs on all of them alike. The global
batch grows with the processes (``data.batch_size`` is per process), as it would in a
real job.

    python benchmarks/scaling.py                      # CPU: 1 and 2 processes
    python benchmarks/scaling.py --device cuda --devices 1,2,4,8
"""

from __future__ import annotations

import argparse
import statistics
import time

from kedro_torch.pytorch import api, data, engine
from kedro_torch.pytorch.config import DataConfig, ModelConfig, TrainingConfig


class EpochTimer(engine.Callback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.durations.append(time.perf_counter() - self._started)


def images_per_second(prepared: api.PreparedData, data_config: DataConfig,
                      model_config: ModelConfig, training: TrainingConfig) -> float:
    built = api.build_loaders(prepared.model_input, prepared.preprocessing, data_config,
                              training.seed, images=prepared.images, device=training.device)
    model = api.build_model(model_config, data_config, prepared.label_map,
                            prepared.preprocessing, training.seed)
    timer = EpochTimer()
    api.fit(model, built, training, num_classes=len(prepared.label_map), callbacks=[timer])
    images = len(built["train"].dataset)  # every rank's shard together, padding aside
    return images / statistics.median(timer.durations[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", default="data/01_raw/digits")
    args = parser.parse_args()

    data_config = DataConfig(image_size=args.image_size, batch_size=args.batch_size,
                             num_workers=0)
    model_config = ModelConfig(name=args.model)
    manifest = data.manifest_from_listing(data.list_folder(args.folder))
    prepared = api.prepare_data(manifest, data_config)
    counts = [int(n) for n in args.devices.split(",")]
    rounds: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(args.rounds):
        for count in counts:
            training = TrainingConfig(epochs=args.epochs, device=args.device, devices=count,
                                      progress_bar=False)
            rounds[count].append(images_per_second(prepared, data_config, model_config,
                                                   training))
    print("rounds:", {count: [round(speed) for speed in speeds]
                      for count, speeds in rounds.items()})
    speeds = {count: statistics.median(values) for count, values in rounds.items()}
    first = min(speeds)
    print(f"{args.model}, {args.image_size} px, batch {args.batch_size} per process, "
          f"{args.device}; training images/s (median epoch after the first, median of "
          f"{args.rounds} rounds):")
    print("| processes | images/s | speed-up | efficiency |")
    print("|---|---|---|---|")
    for count, speed in speeds.items():
        ratio = speed / speeds[first]
        print(f"| {count} | {speed:.0f} | {ratio:.2f}x | {ratio * first / count:.0%} |")


if __name__ == "__main__":
    main()
