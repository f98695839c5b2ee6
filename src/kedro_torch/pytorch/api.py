"""The plain training API: the training pipeline's steps as functions of plain objects
and the typed parameters of :mod:`kedro_torch.pytorch.config`.

A script, a notebook, a worker process or a tuning trial calls these and gets what
``kedro run --pipelines training`` gets for the same parameters: the pipeline's
nodes do nothing but call them. In the order the pipeline runs them::

    manifest = data.manifest_from_listing(data.list_folder("data/01_raw/digits"))
    prepared = prepare_data(manifest, data_config)
    loaders = build_loaders(prepared.model_input, prepared.normalization, data_config,
                            seed=training.seed, images=prepared.images)
    model = build_model(model_config, len(prepared.label_map), data_config.channels,
                        seed=training.seed)
    result = fit(model, loaders, training, num_classes=len(prepared.label_map))
    spec = ModelSpec.from_configs(model_config, data_config, prepared.normalization)
    evaluation = evaluate(result.state_dict, spec, prepared.model_input, prepared.label_map)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from kedro_torch.pytorch import (
    cache,
    data,
    distributed,
    engine,
    images,
    loaders,
    metrics,
    models,
    optimizers,
    plots,
    torchvision_data,
)
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.checkpoints import CheckpointStore, differences, load_weights
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    TrainingConfig,
    flatten,
)
from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.pytorch.interrupts import TrainingInterrupted
from kedro_torch.pytorch.progress import RichProgressBar

logger = logging.getLogger(__name__)


# --- data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """What checking and splitting the images produced."""

    model_input: pd.DataFrame  # the readable images, with ``target`` and ``split``
    label_map: dict[str, int]  # class name -> output index
    normalization: dict  # mean, std and where they came from
    report: dict  # the data-quality report
    images: ImageStore  # decoded images for the loaders (none kept with cache: none)
    on_disk: ImageStore | None  # the disk cache to save: updated under cache: disk


def prepare_data(
    manifest: pd.DataFrame, config: DataConfig, on_disk: ImageStore | None = None
) -> PreparedData:
    """Check every image once, set unreadable ones aside, encode labels and split.

    ``on_disk`` is the store of ``data.cache: disk`` (``ImageStore.open(folder)``).
    Under torchrun, local rank 0 of each machine does it and the machine's other ranks
    receive its result.
    """
    return distributed.once_per_machine(lambda: _prepare_data(manifest, config, on_disk))


def _prepare_data(manifest: pd.DataFrame, config: DataConfig,
                  on_disk: ImageStore | None) -> PreparedData:
    shape = (config.channels, config.decode_size, config.decode_size)
    plan = cache.plan(config.cache, shape, len(manifest), on_disk)
    source = image_source(config)
    checks, store = data.check_images(
        manifest["path"].tolist(), plan.store, keep_pixels=plan.keep_pixels,
        use_fingerprints=plan.use_fingerprints, num_workers=_workers(config), source=source,
    )
    checked = pd.concat([manifest, checks.drop(columns=["fingerprint", "chunk", "row"])], axis=1)
    usable, bad = data.set_aside_bad_files(checked, config.max_bad_fraction)
    unusable = sorted(set(manifest["label"]) - set(usable["label"]))
    if unusable:
        raise data.DataError(
            f"classes without any readable image: {', '.join(map(repr, unusable))}")
    model_input, label_map, missed, rule = data.split_manifest(usable, config.split)
    if config.normalize.computed:
        train = usable[model_input["split"] == "train"]
        normalization = data.normalization_from_sums(
            train["pixel_sum"], train["pixel_sumsq"], config.decode_size**2
        ) | {"source": "training split"}
    else:
        normalization = {"mean": config.normalize.mean, "std": config.normalize.std,
                         "source": "parameters"}
    origin = source.describe() if config.source == "torchvision" else {"type": config.source}
    report = data.quality_report(checked, bad, model_input, missed, config.max_bad_fraction,
                                 source=origin, split_rule=rule)
    return PreparedData(model_input, label_map, normalization, report, store,
                        cache.to_save(config.cache, store, on_disk))


def image_source(config: DataConfig) -> images.ImageSource:
    """What reads the manifest's paths (``data.source``): image files, or the samples
    of the torchvision dataset ``data.torchvision`` names."""
    if config.source == "torchvision":
        return torchvision_data.TorchvisionSamples(config.torchvision)
    return images.FILES


def build_loaders(
    model_input: pd.DataFrame,
    normalization: Mapping[str, Sequence[float]],
    config: DataConfig,
    seed: int,
    *,
    images: ImageStore | None = None,
    device: str = "auto",
) -> dict[str, DataLoader]:
    """One DataLoader per split, reading decoded images from ``images`` where it has them."""
    transforms = {
        stage: loaders.image_transform(
            loaders.build_transforms(config.transforms.steps(stage),
                                     f"data.transforms.{stage}"),
            config.image_size, config.decode_size,
        )
        for stage in ("train", "eval")
    }
    mixing = loaders.batch_transform(loaders.build_transforms(
        config.transforms.steps("train_batch"), "data.transforms.train_batch",
        num_classes=int(model_input["target"].max()) + 1,
    ))
    source = image_source(config)
    datasets = {
        split: _dataset(rows, config.channels, config.decode_size, normalization, images,
                        transforms["train" if split == "train" else "eval"],
                        mixing if split == "train" else None, source, config.normalize_on)
        for split, rows in model_input.groupby("split", sort=False)
    }
    pin_memory = engine.resolve_device(device).type == "cuda"
    return loaders.build_dataloaders(datasets, config, seed, pin_memory)


def _dataset(rows: pd.DataFrame, channels: int, load_size: int,
             normalization: Mapping[str, Sequence[float]], store: ImageStore | None,
             transform, batch_transform=None, source: images.ImageSource = images.FILES,
             normalize_on: str = "loader") -> loaders.ImageManifestDataset:
    return loaders.ImageManifestDataset(
        rows["path"].tolist(), rows["target"].tolist(), channels=channels, load_size=load_size,
        mean=normalization["mean"], std=normalization["std"],
        content_hashes=rows["content_hash"].tolist(), store=store,
        transform=transform, batch_transform=batch_transform, source=source,
        normalize_on=normalize_on,
    )


def _workers(config: DataConfig) -> int:
    return loaders.default_num_workers() if config.num_workers is None else config.num_workers


# --- model and training --------------------------------------------------------------


def build_model(
    config: ModelConfig, num_classes: int, channels: int, seed: int,
    pretrained: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A fresh model by name, seeded, with pretrained tensors loaded where they fit
    (``pretrained``, or torchvision's ``model.weights``)."""
    if config.weights:
        pretrained = models.torchvision_weights(config.name, config.weights)
    engine.seed_everything(seed)
    model = models.build_model(config.name, num_classes, channels, **config.kwargs)
    if pretrained is not None:
        models.load_pretrained(model, pretrained, strict=config.pretrained_strict)
    return model


# Keys a resume may change: the length of the run, how it is watched, where it runs,
# where its data sits and how its images are fed, none of which changes what a step
# computes (the data's digest is compared apart). How the processes are launched is
# among them; how many there are is not (``world_size``).
RESUMABLE_KEYS = frozenset({
    "training.epochs", "training.resume", "training.keep_checkpoints",
    "training.progress_bar", "training.device", "data.num_workers",
    "data.persistent_workers", "data.prefetch_factor", "data.cache", "data.normalize_on",
    "training.strategy", "training.devices", "training.dist_backend", "training.dist_timeout",
    "data.torchvision.root", "data.torchvision.download",
})


def training_identity(data_config: DataConfig, model_config: ModelConfig,
                      training: TrainingConfig, model_input: pd.DataFrame) -> dict[str, Any]:
    """What determines training, as flat ``section.key`` values, and a digest of the
    data (``model_input``: the images' contents, targets and splits, not their paths).

    A checkpoint records it; a resume continues only a checkpoint with the same one.
    """
    content = model_input[["content_hash", "target", "split"]].sort_values(
        ["content_hash", "split", "target"], ignore_index=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(content, index=False).to_numpy()
                            .tobytes()).hexdigest()[:16]
    return _parameters(data_config, model_config, training) | {"model_input": digest}


def _parameters(data_config: DataConfig, model_config: ModelConfig,
                training: TrainingConfig) -> dict[str, Any]:
    values = flatten({"data": asdict(data_config), "model": asdict(model_config),
                      "training": asdict(training)})
    parameters = {key: value for key, value in values.items() if key not in RESUMABLE_KEYS}
    processes = distributed.plan(training, engine.resolve_device(training.device)).world_size
    if processes > 1:  # each process takes data.batch_size: the steps differ with their number
        parameters["world_size"] = processes
    return parameters


def checkpoints_for(root: CheckpointStore, identity: Mapping[str, Any],
                    training: TrainingConfig) -> CheckpointStore:
    """The checkpoint folder of this configuration, below ``root``.

    With ``training.resume``, a checkpoint of other parameters is never continued:
    ``auto`` starts afresh and says why; ``true`` stops, naming each key that differs.
    """
    store = root.for_identity(identity, training.keep_checkpoints)
    if not training.resume or store.steps():
        return store
    others = root.identities()
    if not others:
        return store  # nothing at all: the engine says so for resume: true
    folder, made_with = next(iter(others.items()))
    if training.resume is True:
        raise _made_with_others(folder, made_with, identity)
    logger.warning("training.resume: auto, but the latest checkpoint (%s) was made with other "
                   "parameters (%s): starting afresh", folder, _how_other(made_with, identity))
    return store


def refuse_unresumable(root: CheckpointStore, data_config: DataConfig,
                       model_config: ModelConfig, training: TrainingConfig) -> None:
    """``training.resume: true``, checked before any work: a checkpoint made with these
    parameters must exist below ``root``. Whether it was made on the same data is
    known once the files are checked; :func:`checkpoints_for` tells then."""
    if training.resume is not True:
        return
    made = root.identities()
    if not made:
        raise FileNotFoundError(
            f"training.resume is true but there is no checkpoint below {root.directory}. "
            "Set training.resume: auto to start afresh when there is none."
        )
    if None in made.values():
        return  # a folder whose identity is unknown may be this one: its digest tells, later
    wanted = _parameters(data_config, model_config, training)
    without_data = [{k: v for k, v in identity.items() if k != "model_input"}
                    for identity in made.values()]
    if wanted not in without_data:
        raise _made_with_others(next(iter(made)), without_data[0], wanted)


def _made_with_others(folder: str, made_with: Mapping[str, Any] | None,
                      identity: Mapping[str, Any]) -> ValueError:
    return ValueError(
        f"training.resume: the latest checkpoint ({folder}) was made with other parameters, "
        f"so continuing it would not be this run: {_how_other(made_with, identity)}"
        ". Resume with those values, or start afresh with training.resume: auto or false"
    )


def _how_other(made_with: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> str:
    if made_with is None:
        return "which ones is unknown, as its identity.json is missing"
    return "; ".join(differences(made_with, identity))


@dataclass(frozen=True)
class FitResult:
    """The weights to keep (the EMA's with EMA on, the best epoch's with early stopping
    or keep_best), the per-epoch history, and the module holding those weights."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    model: nn.Module


def fit(
    model: nn.Module,
    dataloaders: Mapping[str, DataLoader],
    config: TrainingConfig,
    *,
    num_classes: int,
    model_config: ModelConfig | None = None,
    checkpoints: CheckpointStore | None = None,
    callbacks: Sequence[engine.Callback] = (),
    checkpoint_tags: Mapping[str, str] | None = None,
) -> FitResult:
    """Train on ``dataloaders["train"]``, validating on ``"val"`` if there is one.

    ``model_config`` says whether the backbone starts frozen; ``checkpoints`` is where
    every epoch's checkpoint goes and ``training.resume`` reads from (see
    :func:`checkpoints_for`). SIGTERM or SIGINT stop it at the next step boundary
    with a checkpoint, raising :class:`~kedro_torch.pytorch.interrupts.TrainingInterrupted`.
    ``checkpoint_tags`` travel in every checkpoint, back to the callbacks of a resume.
    Another process training into the same folder at the same time is refused.

    Data-parallel as ``training.strategy`` and ``training.devices`` say: under torchrun
    (or in a process group that already exists) this process trains as its rank, in
    ``DistributedDataParallel``; with ``training.devices: N`` it starts N workers that
    each call this function as a rank, and gets rank 0's result and callbacks back.
    After a restart by ``torchrun --max-restarts``, training resumes as with
    ``training.resume: auto``.
    """
    device = engine.resolve_device(config.device)
    resolved = distributed.plan(config, device)
    if resolved.note:
        logger.warning("%s", resolved.note)
    options = {"num_classes": num_classes, "model_config": model_config,
               "checkpoints": checkpoints, "checkpoint_tags": checkpoint_tags}
    if resolved.spawn:
        return _fit_in_workers(resolved, model, dataloaders, config, callbacks, options)
    with distributed.process_group(config, resolved):
        return _fit_here(model, dataloaders, config, distributed.device_of_this_rank(device),
                         callbacks=callbacks, **options)


def _fit_here(
    model: nn.Module,
    dataloaders: Mapping[str, DataLoader],
    config: TrainingConfig,
    device: torch.device,
    *,
    num_classes: int,
    model_config: ModelConfig | None,
    checkpoints: CheckpointStore | None,
    callbacks: Sequence[engine.Callback],
    checkpoint_tags: Mapping[str, str] | None,
) -> FitResult:
    engine.seed_everything(config.seed)
    train_loader, val_loader = dataloaders["train"], dataloaders.get("val")
    optimizer_list = optimizers.build_optimizers(model, config.optimizer)
    batches = min(len(train_loader), config.max_batches_per_epoch or len(train_loader))
    schedulers = optimizers.build_schedulers(
        optimizer_list, config.scheduler, config.epochs,
        steps_per_epoch=math.ceil(batches / config.accumulate_grad_batches),
        monitor_mode=config.mode,
    )
    loss_fn = optimizers.build_loss(
        config.loss, getattr(train_loader.dataset, "targets", None), num_classes
    )
    callbacks = list(callbacks)
    if config.progress_bar and distributed.is_main_process():
        callbacks.append(RichProgressBar())
    if model_config is not None and model_config.freeze_backbone:
        callbacks.append(engine.FreezeBackbone(
            model, models.head_parameter_names(model), model_config.unfreeze_at_epoch
        ))
    trainer = engine.Trainer(model, optimizer_list, loss_fn, device, config, schedulers,
                             callbacks, checkpoints, checkpoint_tags)
    logger.info("Training %s on %s for %d epochs%s", type(model).__name__, device,
                config.epochs, _in_processes(trainer.plan, train_loader.batch_size))
    if checkpoints is not None:
        checkpoints.claim(checkpoint_tags)
    try:
        history = trainer.fit(train_loader, val_loader, resume=resume_mode(config))
    finally:
        if checkpoints is not None:
            checkpoints.release()
    trained = trainer.eval_model
    state_dict = {name: tensor.detach().cpu() for name, tensor in trained.state_dict().items()}
    return FitResult(state_dict, history, trained)


def resume_mode(config: TrainingConfig) -> bool | str:
    """``training.resume``; ``auto`` in a job that torchrun restarted after a failure, whose
    workers must carry on from the last checkpoint with nobody there to ask them."""
    return config.resume or ("auto" if distributed.restarts() else False)


def _in_processes(resolved: distributed.Plan, batch_size: int | None) -> str:
    if resolved.world_size == 1:
        return ""
    return (f" in {resolved.world_size} processes ({resolved.strategy}, "
            f"{resolved.backend}), global batch {(batch_size or 0) * resolved.world_size}")


def _fit_in_workers(resolved: distributed.Plan, model: nn.Module,
                    dataloaders: Mapping[str, DataLoader], config: TrainingConfig,
                    callbacks: Sequence[engine.Callback], options: dict[str, Any]) -> FitResult:
    """``training.devices: N``: N workers train as ranks of one job; this process relays
    rank 0's callbacks (MLflow stays here) and keeps its weights and history."""
    outcome: dict[str, Any] = {}

    def receive(message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind in ("result", "interrupted"):
            outcome[kind] = payload
        else:
            for callback in callbacks:
                getattr(callback, kind)(*payload)

    logger.info("Starting %d training processes", resolved.spawn)
    signum = distributed.spawn(_fit_worker, resolved.spawn,
                               (model, dict(dataloaders), config, options), receive)
    if "interrupted" in outcome:
        stopped_by, epoch, batch, checkpoint = outcome["interrupted"]
        raise TrainingInterrupted(signum or stopped_by, epoch, batch, checkpoint)
    if "result" not in outcome:
        raise RuntimeError("the training processes ended without a result")
    state_dict, history = load_weights(io.BytesIO(outcome["result"]), "the result of rank 0")
    model.load_state_dict(state_dict)
    return FitResult(state_dict, history, model)


def _fit_worker(send: Callable[[Any], None], model: nn.Module,
                dataloaders: dict[str, DataLoader], config: TrainingConfig,
                options: dict[str, Any]) -> None:
    """One of :func:`_fit_in_workers`' processes. The model arrives in shared memory:
    training a copy keeps the ranks' weights (and the parent's) apart."""
    main = distributed.is_main_process()
    try:
        result = fit(copy.deepcopy(model), dataloaders, dataclasses.replace(config, devices="auto"),
                     callbacks=[_SendEvents(send)] if main else [], **options)
    except TrainingInterrupted as stop:
        if main:
            send(("interrupted", (stop.signum, stop.epoch, stop.batch, stop.checkpoint)))
        return
    if main:
        buffer = io.BytesIO()
        torch.save((result.state_dict, result.history), buffer)
        send(("result", buffer.getvalue()))


class _SendEvents(engine.Callback):
    """Rank 0's training events, sent to the process that started the workers."""

    def __init__(self, send: Callable[[Any], None]):
        self.send = send

    def on_fit_start(self, *args: Any) -> None:
        self.send(("on_fit_start", args))

    def on_epoch_start(self, *args: Any) -> None:
        self.send(("on_epoch_start", args))

    def on_batch_end(self) -> None:
        self.send(("on_batch_end", ()))

    def on_epoch_end(self, *args: Any) -> None:
        self.send(("on_epoch_end", args))

    def on_fit_end(self) -> None:
        self.send(("on_fit_end", ()))

    def on_resume(self, *args: Any) -> None:
        self.send(("on_resume", args))


# --- evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    report: dict  # accuracy, top-k, per-class scores, confusion matrices, calibration
    metrics: dict[str, float]  # the report's numbers under the names runs are compared by
    predictions: pd.DataFrame  # one row per image: path, true, predicted, probability, entropy
    # confusion_matrix, reliability, per_class, gallery; learning_curve given a history
    figures: dict[str, Figure]


def evaluate(
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    model_input: pd.DataFrame,
    label_map: Mapping[str, int],
    config: EvaluationConfig | None = None,
    *,
    data_config: DataConfig | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    images: ImageStore | None = None,
    device: str = "auto",
    split: str = "test",
) -> Evaluation:
    """How good saved weights are on a split, how well the model knows when it is
    wrong, and where it fails.

    The model and its preprocessing are rebuilt from ``state_dict`` and ``spec``
    alone, as inference and the MLflow model rebuild them. ``data_config`` gives the
    loader settings (batch size, workers); ``images`` a store of decoded images to
    read instead of the files, used where it holds images of the spec's shape; and
    ``data_config.source`` what reads the others.
    """
    config = config or EvaluationConfig()
    data_config = data_config or DataConfig()
    class_names = sorted(label_map, key=label_map.get)
    if images is not None and images.image_shape != (spec.channels, spec.decode_size,
                                                     spec.decode_size):
        images = None
    dataset = _dataset(model_input[model_input["split"] == split], spec.channels,
                       spec.decode_size, {"mean": spec.mean, "std": spec.std}, images,
                       spec.eval_transform(), source=image_source(data_config))
    loader = loaders.build_dataloaders({split: dataset}, data_config, 0, shard=False)[split]
    device = engine.resolve_device(device)
    model = spec.build_model(state_dict, len(class_names)).to(device)
    logits, targets = engine.predict(model, loader, device)
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
    names = np.asarray(class_names, dtype=object)
    table = pd.DataFrame({
        "path": dataset.paths, "true": names[targets.numpy()],
        "predicted": names[predictions.numpy()], "probability": confidence.numpy(),
        "entropy": entropy.numpy(),
    })
    picked = metrics.gallery_indices(probabilities, targets, entropy, config.gallery_size)
    figures = _figures(report, class_names, {
        title: [(dataset.raw_image(i), table.iloc[i]) for i in picked[key]]
        for key, title in (("confidently_wrong", "Most confidently wrong"),
                           ("most_uncertain", "Most uncertain (highest entropy)"))
    })
    if history is not None:
        figures["learning_curve"] = plots.learning_curve_figure(list(history))
    return Evaluation(report, metrics.flat_test_metrics(report), table, figures)


def split_batch(model_input: pd.DataFrame, spec: ModelSpec, data_config: DataConfig,
                split: str = "test") -> torch.Tensor:
    """A split's images as the model's input batch, read as training read them (files,
    or a torchvision dataset's samples) and prepared as ``spec`` says."""
    paths = model_input.loc[model_input["split"] == split, "path"].tolist()
    return spec.load_batch(paths, image_source(data_config))


def _figures(report: dict, class_names: list[str],
             gallery: Mapping[str, list[tuple[torch.Tensor, pd.Series]]]) -> dict[str, Figure]:
    """The report's figures, and a gallery of the picked images with their table rows."""
    captioned = {
        title: [(image.permute(1, 2, 0).squeeze(-1).numpy(),
                 f"true {row.true}, pred {row.predicted}\n"
                 f"p = {row.probability:.2f}, H = {row.entropy:.2f}")
                for image, row in picked]
        for title, picked in gallery.items()
    }
    return {
        "confusion_matrix": plots.confusion_matrix_figure(
            report["confusion_matrix"], report["confusion_matrix_normalized"], class_names),
        "reliability": plots.reliability_figure(report["calibration"]["bins"],
                                                report["calibration"]["ece"]),
        "per_class": plots.per_class_figure(report["per_class"]),
        "gallery": plots.gallery_figure(captioned),
    }
