"""The tabular task beside what one would use instead: gradient boosting, a hand-written loop.

Quality: on the bundled penguins table, our TabularMLP trained through the plain
training API with the parameters of ``--env penguins`` (species: test accuracy) and
``--env penguins_mass`` (body mass: test R²), beside scikit-learn's
HistGradientBoosting fitted on the same training rows (raw values: it handles missing
numbers and categories itself) and scored on the same test rows. Both take the split
the pipeline makes (``api.prepare_data``, which calls ``tables.prepare_table``).

Speed: training rows per second of one epoch through the plain API's loop (``fit`` on
``TensorBatches``) and of the loop below, which is what one would write by hand, on a
synthetic table of 1,000,000 rows x 20 float features: the same TabularMLP, seed,
batch size and optimizer, on the CPU. Both epochs must end at the same training loss
(to 5 decimals); the figures are medians over repeats.

    .venv/bin/python benchmarks/tabular_baseline.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from kedro.config import OmegaConfigLoader
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import accuracy_score, r2_score
from torch import nn

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

from kedro_torch.pytorch import api, engine, tables, tasks
from kedro_torch.pytorch.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.models import TabularMLP
from kedro_torch.pytorch.tasks.base import PreparedData
from kedro_torch.pytorch.tensor_loader import TensorBatches
from kedro_torch.settings import CONFIG_LOADER_ARGS

ROOT = Path(__file__).resolve().parents[1]
PENGUINS = ROOT / "data" / "01_raw" / "penguins.csv"  # raw_table in both envs
# env -> the task's kind, what is scored on the test rows and how
TASKS = {
    "penguins": ("classification", "accuracy", accuracy_score),
    "penguins_mass": ("regression", "R²", r2_score),
}
SEED, LR, BATCH, FEATURES, CLASSES = 0, 0.003, 1024, 20, 2


# --- quality --------------------------------------------------------------------------


def through_api(env: str) -> tuple[PreparedData, pd.DataFrame]:
    """The table prepared and split as ``kedro run --env <env>`` prepares it, and the
    test rows' true and predicted values of the model trained on it through the plain
    training API, with the env's parameters (over conf/base, as the run reads them)."""
    parameters = OmegaConfigLoader(str(ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)[
        "parameters"]
    data_config = parse(DataConfig, parameters["data"], "data")
    model_config = parse(ModelConfig, parameters["model"], "model")
    training = dataclasses.replace(parse(TrainingConfig, parameters["training"], "training"),
                                   progress_bar=False)
    prepared = api.prepare_data(pd.read_csv(PENGUINS), data_config)
    loaders = api.build_loaders(prepared.model_input, prepared.preprocessing, data_config,
                                training.seed, device=training.device)
    model = api.build_model(model_config, data_config, prepared.label_map,
                            prepared.preprocessing, training.seed)
    task = tasks.create(data_config.task, prepared.preprocessing)
    result = api.fit(model, loaders, training, num_classes=len(prepared.label_map),
                     model_config=model_config, task=task)
    evaluation = api.evaluate(result.state_dict,
                              task.spec(model_config, data_config, prepared.preprocessing),
                              prepared.model_input, prepared.label_map,
                              data_config=data_config, device=training.device)
    return prepared, evaluation.predictions


def gradient_boosting(prepared: PreparedData, kind: str) -> pd.DataFrame:
    """The test rows' true and predicted values of HistGradientBoosting trained on the
    training rows, the categorical columns as pandas categories (its native splits)."""
    preprocessing = tables.TablePreprocessing.from_dict(prepared.preprocessing)
    rows = prepared.model_input
    features = rows[preprocessing.numeric].apply(pd.to_numeric, errors="coerce")
    for column in preprocessing.categorical:
        features[column] = pd.Categorical(rows[column].astype("string"),
                                          categories=preprocessing.categories[column])
    model_class = (HistGradientBoostingClassifier if kind == "classification"
                   else HistGradientBoostingRegressor)
    model = model_class(categorical_features="from_dtype", random_state=SEED)
    train, test = rows["split"] == "train", rows["split"] == "test"
    model.fit(features[train], rows.loc[train, "target"])
    return pd.DataFrame({"true": rows.loc[test, "target"],
                         "predicted": model.predict(features[test])})


def quality() -> pd.DataFrame:
    results = []
    for env, (kind, metric, score) in TASKS.items():
        prepared, ours = through_api(env)
        baseline = gradient_boosting(prepared, kind)
        mlp = score(ours["true"], ours["predicted"])
        boosting = score(baseline["true"], baseline["predicted"])
        results.append({"env": env, "metric": metric, "test_rows": len(ours),
                        "tabular_mlp": mlp, "gradient_boosting": boosting,
                        "difference": mlp - boosting})
    return pd.DataFrame(results)


# --- speed ----------------------------------------------------------------------------


def synthetic_table(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal features; the class says which half of them sums higher."""
    features = torch.randn(rows, FEATURES, generator=torch.Generator().manual_seed(SEED))
    half = FEATURES // 2
    return features, (features[:, :half].sum(1) > features[:, half:].sum(1)).long()


def fresh_model() -> TabularMLP:
    engine.seed_everything(SEED)
    return TabularMLP(FEATURES, [], CLASSES)


def epoch_through_api(features: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(seconds, training loss) of one epoch of ``api.fit``."""
    model = fresh_model()
    batches = TensorBatches(features, targets, BATCH, shuffle=True, seed=SEED)
    # The hand-written loop keeps one learning rate: no scheduler here either.
    config = TrainingConfig(epochs=1, seed=SEED, device="cpu", progress_bar=False,
                            optimizer=OptimizerConfig("AdamW", {"lr": LR}),
                            scheduler=SchedulerConfig(name=None))
    start = time.perf_counter()
    result = api.fit(model, {"train": batches}, config, num_classes=CLASSES,
                     task=tasks.create("tabular_classification"))
    return time.perf_counter() - start, result.history[-1]["train_loss"]


def by_hand(features: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(seconds, training loss) of one epoch of the loop one would write."""
    model = fresh_model()
    # fit builds AdamW on its fused kernel (build_optimizers' default): the same here.
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)  # TensorBatches' order
    engine.seed_everything(SEED)  # fit seeds before training: the same dropout masks
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(targets), generator=generator)
    total = 0.0
    for begin in range(0, len(order), BATCH):
        rows = order[begin : begin + BATCH]
        optimizer.zero_grad()
        loss = loss_fn(model(features[rows]), targets[rows])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(rows)
    return time.perf_counter() - start, total / len(targets)


def speed(rows: int, repeats: int) -> tuple[float, float, bool]:
    """Median rows per second of the hand-written loop and of ours, and whether every
    repeat's two losses agreed."""
    features, targets = synthetic_table(rows)
    by_hand(features[:BATCH * 8], targets[:BATCH * 8])  # warm-up: allocator, kernels
    epoch_through_api(features[:BATCH * 8], targets[:BATCH * 8])
    plain_times, our_times, agree = [], [], True
    for repeat in range(repeats):
        # Alternating which goes first spreads a noisy neighbour over both.
        runs = [by_hand, epoch_through_api][:: 1 if repeat % 2 == 0 else -1]
        timed = {run: run(features, targets) for run in runs}
        (plain_time, plain_loss), (our_time, our_loss) = (timed[by_hand],
                                                          timed[epoch_through_api])
        plain_times.append(plain_time)
        our_times.append(our_time)
        agree = agree and round(plain_loss, 5) == round(our_loss, 5)
    return rows / statistics.median(plain_times), rows / statistics.median(our_times), agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="100,000 synthetic rows instead of 1,000,000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    print(quality().to_string(index=False, float_format="%.4f"))
    rows = 100_000 if args.quick else 1_000_000
    plain, ours_rate, agree = speed(rows, args.repeats)
    print(f"\none epoch of {rows:,} rows x {FEATURES} features, batch {BATCH}, "
          f"median of {args.repeats}")
    print(f"training losses match to 5 decimals: {'yes' if agree else 'NO'}")
    print(f"rows/s  hand-written loop: {plain:,.0f}   plain API (fit): {ours_rate:,.0f}")
    print(f"ours / hand-written: {ours_rate / plain:.3f}x")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
