"""Typed parameters, checked before any work starts.

Every YAML section is read into a frozen dataclass. Unknown keys, wrong types and
values out of range raise :class:`ParameterError` naming the full YAML key
(``training.optimizer.name``), so a typo is caught at the door instead of after an
hour of training. Resolving names (optimizers, models, ...) is done by the modules
that own those registries; this module only checks shape and types.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


class ParameterError(ValueError):
    """A parameter is missing, unknown, mistyped or out of range."""


@dataclass(frozen=True)
class NamedSpec:
    """A class chosen by name in a registry, with its keyword arguments."""

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 42
    group_column: str | None = None

    def validate(self, key: str) -> None:
        fractions = {"train": self.train, "val": self.val, "test": self.test}
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise ParameterError(f"{key}.{name} must lie in [0, 1], got {value}")
        if self.train <= 0 or self.test <= 0:
            raise ParameterError(f"{key}.train and {key}.test must be greater than 0")
        if abs(sum(fractions.values()) - 1) > 1e-6:
            raise ParameterError(
                f"{key}.train + {key}.val + {key}.test must sum to 1, got {sum(fractions.values())}"
            )

    @property
    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class NormalizeConfig:
    # Both null: computed from the training split.
    mean: list[float] | None = field(default_factory=lambda: [0.5])
    std: list[float] | None = field(default_factory=lambda: [0.5])

    @property
    def computed(self) -> bool:
        return self.mean is None


@dataclass(frozen=True)
class ManifestConfig:
    path_column: str = "path"
    label_column: str = "label"
    mask_column: str = "mask_path"  # segmentation: the mask of the image in path_column
    # detection: one row per box, its corners in the image's pixels (a row with these
    # empty: an image without boxes)
    box_columns: list[str] = field(default_factory=lambda: ["x_min", "y_min", "x_max",
                                                            "y_max"])


@dataclass(frozen=True)
class TorchvisionConfig:
    """A ``torchvision.datasets`` class by name, read from a local root; the name and
    the arguments are resolved by :mod:`kedro_torch.pytorch.torchvision_data`, which
    owns that registry."""

    name: str | None = None
    root: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    test_split: str | None = "test"  # null: the test split is carved by hash too
    download: bool = False


@dataclass(frozen=True)
class TransformsConfig:
    """``torchvision.transforms.v2`` classes by name; the names are resolved by
    :mod:`kedro_torch.pytorch.loaders`, which owns that registry."""

    train: list[NamedSpec] = field(default_factory=list)
    eval: list[NamedSpec] = field(default_factory=list)
    train_batch: list[NamedSpec] = field(default_factory=list)

    def validate(self, key: str) -> None:
        for stage in ("train", "eval", "train_batch"):
            for i, spec in enumerate(getattr(self, stage)):
                if not spec.name:
                    raise ParameterError(f"{key}.{stage}[{i}].name is required")

    def steps(self, stage: str) -> list[tuple[str, dict[str, Any]]]:
        """A stage's transforms as ``(name, kwargs)``, as the loaders build them."""
        return [(spec.name, spec.kwargs) for spec in getattr(self, stage)]


@dataclass(frozen=True)
class TableConfig:
    """The columns of a table (``data.source: table``); names are checked against the
    table by :mod:`kedro_torch.pytorch.tables` once it is read."""

    target: str | None = None
    numeric: list[str] | None = None  # null: inferred from the dtypes
    categorical: list[str] | None = None  # null: inferred from the dtypes
    drop: list[str] = field(default_factory=list)
    max_categories: int = 50


def _check_classes(classes: list[str], colors: list[list[int]], key: str) -> None:
    """Class names once each, and an RGB colour for each where colours are given."""
    if len(set(classes)) != len(classes):
        raise ParameterError(f"{key}.classes names a class twice: {classes}")
    if colors and len(colors) != len(classes):
        raise ParameterError(f"{key}.colors needs one RGB triple per class "
                             f"({len(classes)}), got {len(colors)}")
    if any(len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) for rgb in colors):
        raise ParameterError(f"{key}.colors: each colour is [red, green, blue], 0-255")


@dataclass(frozen=True)
class SegmentationConfig:
    """The classes of segmentation masks: a mask's pixel value is its class's index."""

    classes: list[str] = field(default_factory=list)
    # RGB per class, for drawn masks and palette PNGs; empty: PASCAL VOC's colour map.
    colors: list[list[int]] = field(default_factory=list)
    ignore_index: int = 255  # pixels that count for nothing (VOC's object borders)

    def validate(self, key: str) -> None:
        _check_classes(self.classes, self.colors, key)
        if 0 <= self.ignore_index < len(self.classes):
            raise ParameterError(f"{key}.ignore_index {self.ignore_index} is the index of class "
                                 f"{self.classes[self.ignore_index]!r}; use a value no class has")


@dataclass(frozen=True)
class DetectionConfig:
    """The object classes of boxes; the model numbers them from 1 (0 is background)."""

    classes: list[str] = field(default_factory=list)
    # RGB per class, for drawn boxes; empty: PASCAL VOC's colour map.
    colors: list[list[int]] = field(default_factory=list)
    # data.source coco: the COCO file, relative to the catalog's raw_images folder.
    annotations: str = "annotations.json"
    # The served model, the inference table and the box grid keep detections at least
    # this sure; evaluation's mAP ranks every detection.
    score_threshold: float = 0.5

    def validate(self, key: str) -> None:
        _check_classes(self.classes, self.colors, key)
        if not 0 <= self.score_threshold <= 1:
            raise ParameterError(f"{key}.score_threshold must lie in [0, 1], got "
                                 f"{self.score_threshold}")


@dataclass(frozen=True)
class DataConfig:
    task: str = "image_classification"  # a name of kedro_torch.pytorch.tasks' registry
    source: str = "folder"  # a name of kedro_torch.pytorch.sources' registry
    table: TableConfig = field(default_factory=TableConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    torchvision: TorchvisionConfig = field(default_factory=TorchvisionConfig)
    image_size: int = 16
    load_size: int | None = None
    channels: Literal[1, 3] = 1
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    max_bad_fraction: float = 0.01
    cache: Literal["none", "memory", "disk"] = "memory"
    batch_size: int = 32
    eval_batch_size: int | None = None
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    num_workers: int | None = None
    persistent_workers: bool = True
    prefetch_factor: int | None = None
    # Where uint8 images become normalized floats: in the DataLoader's workers, or on
    # the training device after the copy (a quarter of the bytes to pass and copy).
    normalize_on: Literal["loader", "device"] = "loader"
    split: SplitConfig = field(default_factory=SplitConfig)

    def validate(self, key: str) -> None:
        _positive(self.image_size, f"{key}.image_size")
        _positive(self.batch_size, f"{key}.batch_size")
        for optional in ("load_size", "eval_batch_size", "prefetch_factor"):
            if getattr(self, optional) is not None:
                _positive(getattr(self, optional), f"{key}.{optional}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ParameterError(f"{key}.num_workers must be 0 or more, got {self.num_workers}")
        from kedro_torch.pytorch import sources  # noqa: PLC0415 (they import this module)

        sources.get(self.source, f"{key}.source")
        task = _tasks().get(self.task, f"{key}.task")
        if self.source not in task.sources:
            raise ParameterError(
                f"{key}.task {self.task} reads {' or '.join(task.sources)}, not {key}.source "
                f"{self.source!r}")
        if self.source == "table" and not self.table.target:
            raise ParameterError(f"{key}.table.target is required for {key}.task {self.task}: "
                                 "the column to predict")
        _positive(self.table.max_categories, f"{key}.table.max_categories")
        self.segmentation.validate(f"{key}.segmentation")
        self.detection.validate(f"{key}.detection")
        task.check_config(self, key)
        if self.source == "torchvision" and not self.torchvision.name:
            raise ParameterError(f"{key}.torchvision.name is required when {key}.source is "
                                 "torchvision: a torchvision.datasets class, e.g. CIFAR10")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ParameterError(
                f"{key}.max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}"
            )
        if (self.normalize.mean is None) != (self.normalize.std is None):
            raise ParameterError(
                f"{key}.normalize.mean and {key}.normalize.std must both be given, or both "
                "be null (computed from the training split)"
            )
        for stat in ("mean", "std"):
            values = getattr(self.normalize, stat) or []
            if values and len(values) not in (1, self.channels):
                raise ParameterError(
                    f"{key}.normalize.{stat} needs 1 or {self.channels} values "
                    f"(data.channels), got {len(values)}"
                )
        if any(value <= 0 for value in self.normalize.std or []):
            raise ParameterError(f"{key}.normalize.std values must be greater than 0")
        if self.normalize_on == "device" and self.transforms.train_batch:
            raise ParameterError(
                f"{key}.normalize_on: device leaves batches as uint8 pixels, but "
                f"{key}.transforms.train_batch (MixUp, CutMix) mixes normalized floats in the "
                "DataLoader; use normalize_on: loader with batch transforms"
            )
        self.split.validate(f"{key}.split")

    @property
    def decode_size(self) -> int:
        """The size images are decoded, cached and augmented at."""
        return self.load_size or self.image_size

    @property
    def validation_batch_size(self) -> int:
        """Evaluation keeps no gradients, so twice the training batch fits by default."""
        return self.eval_batch_size or 2 * self.batch_size


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Read by the catalog entry `pretrained_state_dict`; kept here so it is logged.
    pretrained_path: str | None = None
    pretrained_strict: bool = False
    weights: str | None = None
    freeze_backbone: bool = False
    unfreeze_at_epoch: int | None = None

    def validate(self, key: str) -> None:
        if self.weights and self.pretrained_path:
            raise ParameterError(
                f"{key}.weights and {key}.pretrained_path both set: choose one source of weights"
            )
        if self.unfreeze_at_epoch is not None:
            if not self.freeze_backbone:
                raise ParameterError(f"{key}.unfreeze_at_epoch needs {key}.freeze_backbone: true")
            _positive(self.unfreeze_at_epoch, f"{key}.unfreeze_at_epoch")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str | None = "AdamW"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"lr": 0.003, "weight_decay": 0.0001})
    no_weight_decay_on_norm_and_bias: bool = False
    head_lr: float | None = None
    # For the parameters the main optimizer cannot take (Muon: all but 2-D weights;
    # SparseAdam: all with dense gradients).
    fallback: NamedSpec = field(default_factory=lambda: NamedSpec("AdamW"))


@dataclass(frozen=True)
class SchedulerConfig:
    name: str | None = "CosineAnnealingLR"
    kwargs: dict[str, Any] = field(default_factory=dict)
    interval: Literal["epoch", "step"] | None = None
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.01

    def validate(self, key: str) -> None:
        if self.warmup_epochs < 0:
            raise ParameterError(f"{key}.warmup_epochs must be 0 or more")
        if not 0 < self.warmup_start_factor <= 1:
            raise ParameterError(f"{key}.warmup_start_factor must lie in (0, 1]")


@dataclass(frozen=True)
class LossConfig:
    name: str | None = None  # null: the task's own (cross-entropy, or MSE for regression)
    kwargs: dict[str, Any] = field(default_factory=dict)
    class_weights: Literal["balanced"] | None = None


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int | None = None
    min_delta: float = 0.0


PRECISIONS = ("32", "bf16", "16")


def _tasks() -> types.ModuleType:
    """The task registry, which knows the tasks' names and metrics; imported when first
    needed, as the tasks import this module."""
    from kedro_torch.pytorch import tasks  # noqa: PLC0415

    return tasks


def _check_metric(name: str, key: str) -> None:
    """A metric of the epoch rows, which early stopping, keep_best, ReduceLROnPlateau
    and tuning can watch; the tasks know which their rows hold."""
    if name not in _tasks().monitors():
        raise ParameterError(f"{key} must be one of {', '.join(_tasks().monitors())}, "
                             f"got {name!r}")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    precision: int | str = 32
    accumulate_grad_batches: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    ema_decay: float | None = None
    monitor: str = "val_loss"
    monitor_mode: Literal["auto", "min", "max"] = "auto"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    keep_best: bool = False
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    detect_anomaly: bool = False
    nan_guard: bool = True
    max_batches_per_epoch: int | None = None
    resume: bool | Literal["auto"] = False
    keep_checkpoints: int = 1
    progress_bar: bool = True
    # Data parallelism (pytorch/distributed.py): auto = ddp under torchrun or with
    # devices > 1, else single.
    strategy: Literal["auto", "single", "dp", "ddp"] = "auto"
    devices: int | Literal["auto"] = 1
    sync_batchnorm: bool = False
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    dist_timeout: float = 1800.0

    def validate(self, key: str) -> None:
        _positive(self.epochs, f"{key}.epochs")
        _positive(self.accumulate_grad_batches, f"{key}.accumulate_grad_batches")
        _positive(self.keep_checkpoints, f"{key}.keep_checkpoints")
        _positive(self.dist_timeout, f"{key}.dist_timeout")
        if self.devices != "auto":
            _positive(self.devices, f"{key}.devices")
        if not self.optimizer.name:
            raise ParameterError(f"{key}.optimizer.name is required")
        if str(self.precision) not in PRECISIONS:
            raise ParameterError(
                f"{key}.precision must be one of 32, bf16, 16, got {self.precision!r}"
            )
        for name in ("clip_grad_norm", "clip_grad_value", "max_batches_per_epoch"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"{key}.{name}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ParameterError(f"{key}.ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.early_stopping.patience is not None:
            _positive(self.early_stopping.patience, f"{key}.early_stopping.patience")
        _check_metric(self.monitor, f"{key}.monitor")

    @property
    def mode(self) -> Literal["min", "max"]:
        """``monitor_mode``, with ``auto`` read off the metric's name."""
        return _tasks().mode(self.monitor) if self.monitor_mode == "auto" else self.monitor_mode

    @property
    def restores_best(self) -> bool:
        """Early stopping always hands back the best epoch, not the last."""
        return self.keep_best or self.early_stopping.patience is not None



def parse(cls: type, data: Mapping[str, Any] | None, key: str) -> Any:
    """Build dataclass ``cls`` from a parameters mapping found under YAML key ``key``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParameterError(f"{key} must be a mapping, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParameterError(
            f"unknown parameter {', '.join(f'{key}.{k}' for k in unknown)}; "
            f"valid keys under {key}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], data[name], f"{key}.{name}") for name in data}
    config = cls(**values)
    if hasattr(config, "validate"):
        config.validate(key)
    return config


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ParameterError as error:
                errors.append(str(error).removeprefix(f"{key} "))
        raise ParameterError(f"{key} {' or '.join(errors)}")
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, key)
    if origin is Literal:
        # Compare types too: True == 1 and 3.0 == 3, but neither is a valid choice.
        if not any(type(value) is type(arg) and value == arg for arg in args):
            choices = ", ".join(repr(arg) for arg in args)
            raise ParameterError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ParameterError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParameterError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    return _scalar(hint, value, key)


def _scalar(hint: type, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, hint):
        return value
    raise ParameterError(f"{key} must be {hint.__name__}, got {type(value).__name__}: {value!r}")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameters as ``section.key`` values, the names the YAML and ``--params``
    give them; an empty mapping stays a value of its own."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _positive(value: int, key: str) -> None:
    if value <= 0:
        raise ParameterError(f"{key} must be greater than 0, got {value}")


@dataclass(frozen=True)
class EvaluationConfig:
    top_k: int = 3
    calibration_bins: int = 10
    gallery_size: int = 8

    def validate(self, key: str) -> None:
        for name in ("top_k", "calibration_bins", "gallery_size"):
            _positive(getattr(self, name), f"{key}.{name}")


@dataclass(frozen=True)
class MlflowConfig:
    registered_model_name: str = "kedro_torch"
    system_metrics_interval: float | None = 5.0
    outage_wait: float = 600.0  # seconds a run waits at its end for a server that went away

    def validate(self, key: str) -> None:
        if not self.registered_model_name.strip():
            raise ParameterError(f"{key}.registered_model_name must not be empty")
        if self.system_metrics_interval is not None:
            _positive(self.system_metrics_interval, f"{key}.system_metrics_interval")
        if self.outage_wait < 0:
            raise ParameterError(f"{key}.outage_wait must be 0 or more, got {self.outage_wait}")


@dataclass(frozen=True)
class InferenceConfig:
    top_k: int = 3
    batch_size: int = 64
    # detection: keep detections at least this sure; null: data.detection.score_threshold
    # as the model was trained with
    score_threshold: float | None = None

    def validate(self, key: str) -> None:
        _positive(self.top_k, f"{key}.top_k")
        _positive(self.batch_size, f"{key}.batch_size")
        if self.score_threshold is not None and not 0 <= self.score_threshold <= 1:
            raise ParameterError(f"{key}.score_threshold must lie in [0, 1], got "
                                 f"{self.score_threshold}")


@dataclass(frozen=True)
class ExportConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 7])
    tolerance: float = 1e-5

    def validate(self, key: str) -> None:
        if not self.batch_sizes:
            raise ParameterError(f"{key}.batch_sizes needs at least one batch size")
        for i, size in enumerate(self.batch_sizes):
            _positive(size, f"{key}.batch_sizes[{i}]")
        if self.tolerance < 0:
            raise ParameterError(f"{key}.tolerance must be 0 or more, got {self.tolerance}")


@dataclass(frozen=True)
class SearchDimension:
    """One entry of ``tuning.space``: the values a trial may give one parameter."""

    type: Literal["float", "int", "categorical"] | None = None
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def validate(self, key: str) -> None:
        if self.type is None:
            raise ParameterError(f"{key}.type is required: float, int or categorical")
        if self.type == "categorical":
            if not self.choices:
                raise ParameterError(f"{key}.choices: a categorical entry needs a non-empty list")
            given = [name for name in ("low", "high", "step") if getattr(self, name) is not None]
            if given or self.log:
                raise ParameterError(f"{key}: a categorical entry takes choices, not "
                                     f"{', '.join(given or ['log'])}")
            return
        if self.low is None or self.high is None or self.choices is not None:
            raise ParameterError(f"{key}: a {self.type} entry needs low and high (and no choices)")
        if self.type == "int":
            for name in ("low", "high", "step"):
                if getattr(self, name) is not None and not isinstance(getattr(self, name), int):
                    raise ParameterError(f"{key}.{name} must be an integer for type int, "
                                         f"got {getattr(self, name)!r}")
        if self.low > self.high:
            raise ParameterError(f"{key}: low ({self.low}) must not exceed high ({self.high})")
        if self.step is not None:
            _positive(self.step, f"{key}.step")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ParameterError(f"{key}.log needs low > 0 and no step, got low={self.low}, "
                                 f"step={self.step}")

    @property
    def extremes(self) -> list[Any]:
        """The values that show whether the parameter takes the whole range: the
        bounds, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def _flat_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``tuning.space`` by dotted parameter name. ``--params
    tuning.space.model.kwargs.width.high=32`` arrives nested, as
    ``{model: {kwargs: {width: {high: 32}}}}``: it is flattened and merged into the
    entry ``model.kwargs.width``. A mapping with any key of an entry (``type``, ``low``,
    ...) is one."""
    entry_keys = {f.name for f in dataclasses.fields(SearchDimension)}
    flat: dict[str, Any] = {}
    for name, entry in space.items():
        key = f"{prefix}{name}"
        is_entry = not isinstance(entry, Mapping) or not entry or bool(set(entry) & entry_keys)
        for inner, value in ({key: entry} if is_entry else _flat_space(entry, f"{key}.")).items():
            earlier = flat.get(inner)
            both = isinstance(earlier, Mapping) and isinstance(value, Mapping)
            flat[inner] = {**earlier, **value} if both else value
    return flat


@dataclass(frozen=True)
class TuningConfig:
    space: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = 20
    timeout: float | None = None
    metric: str = "val_accuracy"
    sampler: NamedSpec = field(default_factory=lambda: NamedSpec("TPESampler"))
    pruner: NamedSpec = field(default_factory=lambda: NamedSpec("MedianPruner"))
    seed: int | None = 42
    study_name: str = "kedro_torch"
    storage: str | None = None
    retrain_best: bool = False

    def validate(self, key: str) -> None:
        if not self.dimensions:
            raise ParameterError(f"{key}.space is empty: name at least one parameter to search")
        for name in ("n_trials", "timeout"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"{key}.{name}")
        if self.n_trials is None and self.timeout is None:
            raise ParameterError(f"{key}.n_trials and {key}.timeout are both null: the study "
                                 "would never end; set one")
        _check_metric(self.metric, f"{key}.metric")
        if not self.sampler.name:
            raise ParameterError(f"{key}.sampler.name is required")
        if not self.study_name.strip():
            raise ParameterError(f"{key}.study_name must not be empty")

    @functools.cached_property
    def dimensions(self) -> dict[str, SearchDimension]:
        """``space``'s entries by dotted parameter name, each parsed and checked. An
        entry set to null is not searched: a conf env (or ``--params``) removes so an
        entry of conf/base's space, which a key-by-key merge cannot delete."""
        return {name: parse(SearchDimension, entry, f"tuning.space.{name}")
                for name, entry in _flat_space(self.space).items() if entry is not None}

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """Losses and errors go down, accuracies up."""
        return "minimize" if _tasks().mode(self.metric) == "min" else "maximize"
