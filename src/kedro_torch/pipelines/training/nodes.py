"""Thin Kedro nodes: parameters in, PyTorch layer called, outputs back to the catalog.

Each node reads its parameter sections through :mod:`kedro_torch.pytorch.config`, so a
mistyped key fails with its YAML name. MLflow is touched only through the
catalog and the epoch callback below.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from kedro_torch.pytorch import cache as image_store
from kedro_torch.pytorch import data, engine, loaders, metrics, models, plots
from kedro_torch.pytorch import optimizers as optimization
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    MlflowConfig,
    ModelConfig,
    NamedSpec,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.pytorch.progress import RichProgressBar
from kedro_torch.tracking.callbacks import MlflowEpochLogger

logger = logging.getLogger(__name__)


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

    Returns the model input, the label map, the normalization statistics, the
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
        num_workers=config.num_workers,
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
    if config.weights:
        pretrained_state_dict = models.torchvision_weights(config.name, config.weights)
    engine.seed_everything(parse(TrainingConfig, training_params, "training").seed)
    model = models.build_model(config.name, len(label_map), channels, **config.kwargs)
    if pretrained_state_dict is not None:
        models.load_pretrained(model, pretrained_state_dict, strict=config.pretrained_strict)
    return model


def train_model(
    model: nn.Module,
    dataloaders: dict[str, DataLoader],
    checkpoints: CheckpointStore,
    label_map: dict[str, int],
    training_params: dict[str, Any],
    model_params: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], pd.DataFrame, nn.Module]:
    """Fit the model; return the weights to keep, the per-epoch history and the model.

    The weights kept are the EMA's when EMA is on, and the best epoch's when early
    stopping or ``keep_best`` is on.
    """
    config = parse(TrainingConfig, training_params, "training")
    model_config = parse(ModelConfig, model_params, "model")
    engine.seed_everything(config.seed)
    device = engine.resolve_device(config.device)
    train_loader, val_loader = dataloaders["train"], dataloaders.get("val")
    settings = engine.LoopSettings(
        epochs=config.epochs, precision=str(config.precision),
        accumulate_grad_batches=config.accumulate_grad_batches,
        clip_grad_norm=config.clip_grad_norm, clip_grad_value=config.clip_grad_value,
        ema_decay=config.ema_decay, monitor=config.monitor, monitor_mode=config.mode,
        early_stopping_patience=config.early_stopping.patience,
        min_delta=config.early_stopping.min_delta, keep_best=config.keep_best,
        channels_last=config.channels_last, compile=config.compile,
        deterministic=config.deterministic, detect_anomaly=config.detect_anomaly,
        nan_guard=config.nan_guard, max_batches_per_epoch=config.max_batches_per_epoch,
    )
    optimizers = optimization.build_optimizers(model, config.optimizer)
    batches = min(len(train_loader), config.max_batches_per_epoch or len(train_loader))
    schedulers = optimization.build_schedulers(
        optimizers, config.scheduler, config.epochs,
        steps_per_epoch=math.ceil(batches / config.accumulate_grad_batches),
        monitor_mode=config.mode,
    )
    loss_fn = optimization.build_loss(
        config.loss, getattr(train_loader.dataset, "targets", None), len(label_map)
    )
    callbacks: list[engine.Callback] = [MlflowEpochLogger()]
    if config.progress_bar:
        callbacks.append(RichProgressBar())
    if model_config.freeze_backbone:
        callbacks.append(engine.FreezeBackbone(
            model, models.head_parameter_names(model), model_config.unfreeze_at_epoch
        ))
    trainer = engine.Trainer(model, optimizers, loss_fn, device, settings, schedulers, callbacks,
                             checkpoints)
    logger.info("Training %s on %s for %d epochs", type(model).__name__, device, config.epochs)
    history = trainer.fit(train_loader, val_loader, resume=config.resume)
    trained = trainer.eval_model
    state_dict = {name: tensor.detach().cpu() for name, tensor in trained.state_dict().items()}
    return state_dict, pd.DataFrame(history), trained


def evaluate_model(
    model: nn.Module,
    dataloaders: dict[str, DataLoader],
    label_map: dict[str, int],
    history: pd.DataFrame,
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
) -> tuple[dict, dict, pd.DataFrame, Figure, Figure, Figure, Figure, Figure]:
    """How good the model is on the test split, how well it knows when it is wrong,
    and where it fails: the report, its MLflow metrics, a per-image table and figures.
    """
    config = parse(EvaluationConfig, evaluation_params, "evaluation")
    device = engine.resolve_device(parse(TrainingConfig, training_params, "training").device)
    class_names = sorted(label_map, key=label_map.get)
    logits, targets = engine.predict(model, dataloaders["test"], device)
    probabilities = logits.softmax(dim=1)
    confidence, predictions = probabilities.max(dim=1)
    entropy = metrics.predictive_entropy(probabilities)
    report = metrics.classification_report(targets, predictions, class_names)
    report["top_k"] = config.top_k
    report["top_k_accuracy"] = metrics.top_k_accuracy(logits, targets, config.top_k)
    report["calibration"] = metrics.calibration(probabilities, targets, config.calibration_bins)
    report["mean_entropy"] = entropy.mean().item()
    logger.info("Test accuracy: %.4f, top-%d: %.4f, ECE: %.4f", report["accuracy"],
                config.top_k, report["top_k_accuracy"], report["calibration"]["ece"])

    test_set = dataloaders["test"].dataset
    names = np.asarray(class_names, dtype=object)
    predictions_table = pd.DataFrame({
        "path": test_set.paths,
        "true": names[targets.numpy()],
        "predicted": names[predictions.numpy()],
        "probability": confidence.numpy(),
        "entropy": entropy.numpy(),
    })
    picked = metrics.gallery_indices(probabilities, targets, entropy, config.gallery_size)
    gallery = {
        title: [
            (test_set.raw_image(i).permute(1, 2, 0).squeeze(-1).numpy(),
             f"true {names[targets[i]]}, pred {names[predictions[i]]}\np = {confidence[i]:.2f}, "
             f"H = {entropy[i]:.2f}")
            for i in picked[key]
        ]
        for key, title in (("confidently_wrong", "Most confidently wrong"),
                           ("most_uncertain", "Most uncertain (highest entropy)"))
    }
    return (
        report,
        {name: {"value": value, "step": 0} for name, value in _test_metrics(report).items()},
        predictions_table,
        plots.confusion_matrix_figure(report["confusion_matrix"],
                                      report["confusion_matrix_normalized"], class_names),
        plots.learning_curve_figure(history.to_dict("records")),
        plots.reliability_figure(report["calibration"]["bins"], report["calibration"]["ece"]),
        plots.per_class_figure(report["per_class"]),
        plots.gallery_figure(gallery),
    )


def _test_metrics(report: dict) -> dict[str, float]:
    """The report's numbers under the names MLflow shows and compares runs by."""
    test_metrics = {
        "test_accuracy": report["accuracy"],
        f"test_top{report['top_k']}_accuracy": report["top_k_accuracy"],
        "test_ece": report["calibration"]["ece"],
        "test_mean_entropy": report["mean_entropy"],
    }
    for average in ("macro_avg", "weighted_avg"):
        for score, value in report[average].items():
            test_metrics[f"test_{average.removesuffix('_avg')}_{score}"] = value
    for name, scores in report["per_class"].items():
        for score in ("precision", "recall", "f1"):
            test_metrics[f"test_{score}_{name}"] = scores[score]
    return test_metrics


def package_model(
    state_dict: dict[str, torch.Tensor],
    label_map: dict[str, int],
    normalization: dict[str, list[float]],
    evaluation_report: dict,
    data_params: dict[str, Any],
    model_params: dict[str, Any],
    inference_params: dict[str, Any],
    mlflow_params: dict[str, Any],
) -> tuple[dict, dict]:
    """The spec that rebuilds the model and its eval transform, and the model for MLflow.

    The spec is saved next to the weights, so inference and export rebuild the
    model the run trained, whatever the parameters say by then.
    """
    data_config = parse(DataConfig, data_params, "data")
    model_config = parse(ModelConfig, model_params, "model")
    inference = parse(InferenceConfig, inference_params, "inference")
    spec = ModelSpec(
        model_name=model_config.name,
        model_kwargs=model_config.kwargs,
        channels=data_config.channels,
        image_size=data_config.image_size,
        mean=normalization["mean"],
        std=normalization["std"],
        load_size=data_config.load_size,
        eval_transforms=[{"name": step.name, "kwargs": step.kwargs}
                         for step in data_config.transforms.eval],
    ).to_dict()
    packaged = {
        "state_dict": state_dict,
        "model_spec": spec,
        "label_map": label_map,
        "top_k": inference.top_k,
        "batch_size": inference.batch_size,
        "registered_model_name": parse(MlflowConfig, mlflow_params, "mlflow")
        .registered_model_name,
        "metrics": {"test_accuracy": evaluation_report["accuracy"]},
    }
    return spec, packaged
