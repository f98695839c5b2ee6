"""Thin Kedro nodes: parameters in, PyTorch layer called, outputs back to the catalog.

Each node reads its parameter sections through :mod:`kedro_torch.config`, so a
mistyped key fails with its YAML name. MLflow is touched only through the
catalog and the epoch callback below.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from kedro_torch import data, engine, image_store, loaders, metrics, models, optimisation, plots
from kedro_torch.config import DataConfig, ModelConfig, NamedSpec, TrainingConfig, parse
from kedro_torch.distributed import is_main_process
from kedro_torch.image_store import ImageStore
from kedro_torch.progress import RichProgressBar

logger = logging.getLogger(__name__)


class MlflowEpochLogger(engine.Callback):
    """Logs each epoch's metrics to the active MLflow run as it ends (step = epoch)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if mlflow.active_run() is not None and is_main_process():
            mlflow.log_metrics(
                {name: value for name, value in metrics.items() if name != "epoch"}, step=epoch
            )


def ingest_images(
    image_folder: pd.DataFrame, image_table: data.ImageTable | None, data_params: dict[str, Any]
) -> pd.DataFrame:
    """Folder listing or image table (``data.source``) -> manifest of images."""
    config = parse(DataConfig, data_params, "data")
    if config.source == "folder":
        return data.manifest_from_listing(image_folder)
    if image_table is None:
        raise ValueError(
            "data.source is 'manifest' but the catalog entry 'raw_manifest' loaded nothing: "
            "pass the table at run time (--params raw_manifest_path=images.csv) or set the "
            "entry's filepath in conf/local/catalog.yml"
        )
    manifest = config.manifest
    return data.manifest_from_table(image_table, manifest.path_column, manifest.label_column)


def prepare_model_input(
    manifest: pd.DataFrame, previous_image_cache: ImageStore, data_params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, int], dict, dict, ImageStore, ImageStore]:
    """Check every image once, set unreadable ones aside, encode labels and split.

    Returns the model input, the label map, the normalisation statistics, the
    data-quality report, the decoded images for the DataLoaders (``data.cache``)
    and the on-disk cache to save (left as it was unless ``data.cache`` is disk).
    """
    config = parse(DataConfig, data_params, "data")
    shape = (config.channels, config.decode_size, config.decode_size)
    on_disk = previous_image_cache
    if config.cache == "disk" and on_disk.image_shape != shape:
        on_disk = on_disk.empty_like(shape)
    if config.cache == "memory" and not image_store.fits_in_memory(len(manifest), shape):
        raise ValueError(
            f"data.cache: memory would hold {len(manifest)} images of shape {shape}, more "
            "than half of this machine's memory; use data.cache: disk or none"
        )
    checks, store = data.check_images(
        manifest["path"].tolist(),
        on_disk if config.cache == "disk" else ImageStore(shape),
        keep_pixels=config.cache != "none",
        use_fingerprints=config.cache == "disk",
        num_workers=_num_workers(config),
    )
    checked = pd.concat([manifest, checks.drop(columns=["fingerprint", "chunk", "row"])], axis=1)
    usable, bad = data.set_aside_bad_files(checked, config.max_bad_fraction)
    unusable = sorted(set(manifest["label"]) - set(usable["label"]))
    if unusable:
        raise ValueError(f"classes without any readable image: {', '.join(map(repr, unusable))}")
    split = config.split
    if split.group_column is not None and split.group_column not in usable.columns:
        raise ValueError(
            f"data.split.group_column: the manifest has no column {split.group_column!r}"
        )
    groups = usable[split.group_column].tolist() if split.group_column else None
    assignment = data.assign_splits(
        data.split_keys(usable["content_hash"], groups), split.fractions, split.seed
    )
    missed = data.check_split(usable["label"], assignment, split.fractions)
    label_map = data.encode_labels(usable["label"])
    model_input = usable.drop(columns=["reason", "mode", "missing", "pixel_sum", "pixel_sumsq"])
    model_input = model_input.assign(
        target=model_input["label"].map(label_map).astype("int64"), split=assignment
    )
    logger.info("Split sizes: %s", model_input["split"].value_counts().to_dict())
    if config.normalize.computed:
        train = usable[assignment == "train"]
        normalization = data.normalization_from_sums(
            train["pixel_sum"], train["pixel_sumsq"], config.decode_size**2
        ) | {"source": "training split"}
    else:
        normalization = {"mean": config.normalize.mean, "std": config.normalize.std,
                         "source": "parameters"}
    report = data.quality_report(checked, bad, model_input, missed, config.max_bad_fraction)
    if config.cache == "disk":
        return model_input, label_map, normalization, report, store, store
    return model_input, label_map, normalization, report, store, previous_image_cache


def build_dataloaders(
    model_input: pd.DataFrame,
    normalization: dict,
    decoded_images: ImageStore,
    data_params: dict[str, Any],
    training_params: dict[str, Any],
) -> dict[str, DataLoader]:
    """One DataLoader per split, reading decoded images from the store where it has them."""
    config = parse(DataConfig, data_params, "data")
    training = parse(TrainingConfig, training_params, "training")
    specs = config.transforms
    transforms = {
        stage: loaders.image_transform(
            loaders.build_transforms(_pairs(getattr(specs, stage)), f"data.transforms.{stage}"),
            config.image_size, config.decode_size,
        )
        for stage in ("train", "eval")
    }
    mixing = loaders.batch_transform(
        loaders.build_transforms(
            _pairs(specs.train_batch), "data.transforms.train_batch",
            num_classes=int(model_input["target"].max()) + 1,
        )
    )
    datasets = {
        split: loaders.ImageManifestDataset(
            rows["path"].tolist(), rows["target"].tolist(),
            channels=config.channels, load_size=config.decode_size,
            mean=normalization["mean"], std=normalization["std"],
            content_hashes=rows["content_hash"].tolist(), store=decoded_images,
            transform=transforms["train" if split == "train" else "eval"],
            batch_transform=mixing if split == "train" else None,
        )
        for split, rows in model_input.groupby("split", sort=False)
    }
    settings = loaders.LoaderSettings(
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size or 2 * config.batch_size,
        num_workers=_num_workers(config),
        seed=training.seed,
        sampler=config.sampler,
        pin_memory=engine.resolve_device(training.device).type == "cuda",
        persistent_workers=config.persistent_workers,
        prefetch_factor=config.prefetch_factor,
    )
    return loaders.build_dataloaders(datasets, settings)


def _num_workers(config: DataConfig) -> int:
    return loaders.default_num_workers() if config.num_workers is None else config.num_workers


def _pairs(specs: list[NamedSpec]) -> list[tuple[str, dict]]:
    return [(spec.name, spec.kwargs) for spec in specs]


def build_model(
    label_map: dict[str, int],
    data_params: dict[str, Any],
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    pretrained_state_dict: dict[str, torch.Tensor] | None,
) -> nn.Module:
    """A fresh model by name, seeded, with pretrained tensors loaded where they fit."""
    config = parse(ModelConfig, model_params, "model")
    channels = parse(DataConfig, data_params, "data").channels
    if config.pretrained_path and pretrained_state_dict is None:
        raise ValueError(
            "model.pretrained_path is set but the catalog entry 'pretrained_state_dict' "
            "loaded nothing: pass the path at run time (--params model.pretrained_path=...) "
            "or set the entry's filepath in conf/local/catalog.yml"
        )
    engine.seed_everything(parse(TrainingConfig, training_params, "training").seed)
    model = models.build_model(config.name, len(label_map), channels, **config.kwargs)
    if pretrained_state_dict is not None:
        models.load_pretrained(model, pretrained_state_dict)
    return model


def train_model(
    model: nn.Module,
    dataloaders: dict[str, DataLoader],
    training_params: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], pd.DataFrame, nn.Module]:
    """Fit the model; return its weights, the per-epoch history and the model itself."""
    config = parse(TrainingConfig, training_params, "training")
    engine.seed_everything(config.seed)
    device = engine.resolve_device(config.device)
    optimizer = optimisation.build_optimizer(
        model.parameters(), config.optimizer.name, config.optimizer.kwargs
    )
    scheduler = optimisation.build_scheduler(
        optimizer, config.scheduler.name, config.scheduler.kwargs, config.epochs
    )
    loss_fn = optimisation.build_loss(config.loss.name, config.loss.kwargs)
    callbacks = [MlflowEpochLogger()]
    if config.progress_bar:
        callbacks.append(RichProgressBar())
    logger.info("Training %s on %s for %d epochs", type(model).__name__, device, config.epochs)
    history = engine.fit(
        model, dataloaders["train"], dataloaders.get("val"), loss_fn, optimizer, scheduler,
        config.epochs, device, callbacks,
    )
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return state_dict, pd.DataFrame(history), model


def evaluate_model(
    model: nn.Module,
    dataloaders: dict[str, DataLoader],
    label_map: dict[str, int],
    history: pd.DataFrame,
    training_params: dict[str, Any],
) -> tuple[dict, dict, Figure, Figure, dict]:
    """Test-split report, its MLflow metrics, the two figures and the model to log."""
    device = engine.resolve_device(parse(TrainingConfig, training_params, "training").device)
    class_names = sorted(label_map, key=label_map.get)
    logits, targets = engine.predict(model, dataloaders["test"], device)
    report = metrics.classification_report(targets, logits.argmax(dim=1), class_names)
    logger.info("Test accuracy: %.4f", report["accuracy"])
    test_metrics = {"test_accuracy": report["accuracy"]}
    for name, scores in report["per_class"].items():
        for score in ("precision", "recall", "f1"):
            test_metrics[f"test_{score}_{name}"] = scores[score]
    example_images, _ = next(iter(dataloaders["test"]))
    packaged_model = {
        "model": model.cpu().eval(),
        "input_example": example_images[:2].numpy(),
        "num_classes": len(class_names),
    }
    return (
        report,
        {name: {"value": value, "step": 0} for name, value in test_metrics.items()},
        plots.confusion_matrix_figure(report["confusion_matrix"], class_names),
        plots.learning_curve_figure(history.to_dict("records")),
        packaged_model,
    )
