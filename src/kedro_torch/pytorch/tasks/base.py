"""What a task is to the training loop.

A task names what varies with the kind of model: the step (forward and loss), the
metrics summed on the device during an epoch and how their totals become the epoch's
figures. Sums, not means, cross the ranks, so a figure of many processes is exact.
The rest of what a task owns (its data, model, evaluation and served model) is in
:mod:`kedro_torch.pytorch.tasks`' modules, one per task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from kedro_torch.pytorch import distributed, export, metrics, plots
from kedro_torch.pytorch.cache import ImageStore

logger = logging.getLogger(__name__)


class Spec(Protocol):
    """The JSON-able description that rebuilds a trained model and its preprocessing
    (``model_spec.json``); each task has its own, naming the task."""

    task: str

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PreparedData:
    """What checking and splitting the raw data produced."""

    model_input: pd.DataFrame  # the usable rows, with ``target`` and ``split``
    label_map: dict[str, int]  # class name -> output index ({} for regression)
    preprocessing: dict  # fitted on the training split: images' normalization, a table's coding
    report: dict  # the data-quality report
    images: ImageStore  # decoded images for the loaders (none kept with cache: none, or tables)
    on_disk: ImageStore | None  # the disk cache to save: updated under cache: disk


@dataclass(frozen=True)
class Evaluation:
    report: dict  # the task's figures: accuracy, per-class scores, calibration; or errors
    metrics: dict[str, float]  # the report's numbers under the names runs are compared by
    predictions: pd.DataFrame  # one row per test sample: what it is, true and predicted
    per_class: pd.DataFrame  # precision, recall, F1, support per class (empty: no classes)
    figures: dict[str, Figure]  # by file stem, e.g. confusion_matrix, learning_curve


class Task:
    """The parts of training that differ between tasks; the loop calls only these."""

    name: ClassVar[str]
    # The data sources (``data.source``) that give this task its samples.
    sources: ClassVar[tuple[str, ...]]
    # None: the model computes its own losses (torchvision's detectors, in training mode).
    default_loss: ClassVar[str | None]
    # The test metrics a run is summed up by, first the one its champion is chosen by.
    headline: ClassVar[tuple[str, ...]]
    # The task's epoch figures besides ``loss``, and whether they should go up or down.
    epoch_metrics: ClassVar[dict[str, Literal["min", "max"]]] = {}

    # What a torchvision dataset's samples must be for this task (``data.source:
    # torchvision``): an image and a class, or an image and a mask.
    samples_kind: ClassVar[str] = "classification"

    # The class of the task's model_spec.json (``from_dict``).
    spec_type: ClassVar[type]

    def __init__(self, preprocessing: Mapping[str, Any] | None = None):
        self.preprocessing = dict(preprocessing or {})

    @classmethod
    def check_config(cls, config: Any, key: str) -> None:
        """Refuse ``data`` parameters (``config``, found under ``key``) this task cannot
        train with, before any work."""

    # --- data, model, evaluation and serving: what the plain API asks of a task --------
    # Each task implements these; the signatures are those of image classification's.

    def prepare_data(self, raw: pd.DataFrame, config: Any, on_disk: ImageStore | None
                     ) -> PreparedData:
        """Check the raw samples (a manifest of images, a table), set unusable ones aside,
        encode the targets, split, and fit the preprocessing on the training split."""
        raise NotImplementedError

    def build_loaders(self, model_input: pd.DataFrame, preprocessing: Mapping[str, Any],
                      config: Any, seed: int, images: ImageStore | None,
                      pin_memory: bool) -> dict[str, Any]:
        """One loader per split, yielding ``(inputs, targets)`` batches."""
        raise NotImplementedError

    def model_arguments(self, config: Any, label_map: Mapping[str, int],
                        preprocessing: Mapping[str, Any]) -> dict[str, Any]:
        """The shapes the data gives the model's constructor (``num_classes``, ...)."""
        raise NotImplementedError

    def probe_arguments(self, config: Any) -> dict[str, Any]:
        """:meth:`model_arguments` for a small stand-in of the data, so that the model's
        arguments are checked before the data is read."""
        raise NotImplementedError

    # The outputs of the parameter checks' probe model, which :meth:`probe_targets` fit.
    probe_outputs: ClassVar[int]

    def probe_targets(self) -> dict[str, torch.Tensor]:
        """Targets of each kind the loss meets, for a batch of 3 (the plain kind first):
        the parameter checks take a step on them before any data is read."""
        raise NotImplementedError

    def spec(self, model: Any, config: Any, preprocessing: Mapping[str, Any]) -> Spec:
        """The spec that rebuilds the trained model and its preprocessing."""
        raise NotImplementedError

    def evaluate(self, state_dict: Mapping[str, torch.Tensor], spec: Spec,
                 model_input: pd.DataFrame, label_map: Mapping[str, int], config: Any,
                 data_config: Any, images: ImageStore | None, device: torch.device,
                 split: str) -> Evaluation:
        """The saved weights, rebuilt from ``spec``, measured on a split."""
        raise NotImplementedError

    def test_metrics(self, report: dict) -> dict[str, float]:
        """An evaluation report's numbers under the names runs are compared by."""
        raise NotImplementedError

    def predict(self, state_dict: Mapping[str, torch.Tensor], spec: Spec,
                label_map: Mapping[str, int], samples: pd.DataFrame, config: Any,
                device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The inference pipeline's predictions for new samples (a folder listing of
        images, a table), and the samples that could not be read, with why."""
        raise NotImplementedError

    def trained_model(self, spec: Spec, state_dict: Mapping[str, torch.Tensor],
                      label_map: Mapping[str, int]) -> nn.Module:
        """The architecture of ``spec`` with exactly these weights, in eval mode."""
        raise NotImplementedError

    def exported(self, model: nn.Module) -> dict[str, nn.Module]:
        """What the export pipeline writes of a trained model, by its catalog entry: the
        model itself as TorchScript and as a torch.export program, taking its input batch."""
        return {"torchscript": model, "exported_program": model}

    @staticmethod
    def output_difference(reference: Any, candidate: Any) -> float:
        """How far an export's output strays from the eager model's."""
        return export.tensor_difference(reference, candidate)

    def example_input(self, spec: Spec, batch: int) -> torch.Tensor:
        """A batch of the model's input shape (zeros), to trace or export it with."""
        raise NotImplementedError

    def input_batch(self, model_input: pd.DataFrame, spec: Spec, data_config: Any,
                    split: str) -> torch.Tensor:
        """A split's samples as one input batch of the model (for export checks)."""
        raise NotImplementedError

    def data_note(self, report: dict, config: Any) -> tuple[str, dict[str, int], str]:
        """A data-quality report in words, for the run's description: what was used
        (``"1797 images in 10 classes"``), the split sizes, and what was set aside."""
        raise NotImplementedError

    def input_note(self, config: Any, report: dict | None) -> str:
        """What the model's input is, for the run's description."""
        raise NotImplementedError

    def input_example(self, model_input: pd.DataFrame) -> pd.DataFrame | None:
        """Rows of what the served model takes, for its MLflow input example; None
        where the served model makes its own."""
        raise NotImplementedError

    @classmethod
    def monitors(cls) -> tuple[str, ...]:
        """The names of an epoch's row that training can watch (``training.monitor``)."""
        names = ("loss", *cls.epoch_metrics)
        return tuple(f"{stage}_{name}" for stage in ("train", "val") for name in names)

    def loss_defaults(self) -> dict[str, Any]:
        """Arguments the task gives the loss unless ``training.loss.kwargs`` sets them."""
        return {}

    def step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one batch."""
        outputs = model(inputs)
        return outputs, loss_fn(outputs, targets)

    def metric_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Zeroed sums for one epoch, on the device (read once, at the epoch's end)."""
        return {"loss": torch.zeros((), device=device),
                "seen": torch.zeros((), dtype=torch.long, device=device)}

    def accumulate(self, sums: dict[str, torch.Tensor], outputs: torch.Tensor,
                   targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add a batch to the sums, without waiting on the device."""
        sums["loss"] += loss.detach() * len(targets)
        sums["seen"] += len(targets)

    def summed(self, sums: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Every rank's sums added up, on the device, in one all-reduce: what an epoch's
        figures come from, and what an epoch interrupted midway is saved with. Entries
        that are no tensor (detection's boxes, which cannot be summed) are the task's to
        reduce in :meth:`totals`."""
        tensors = {name: value for name, value in sums.items() if isinstance(value, torch.Tensor)}
        return dict(zip(tensors, distributed.sum_across_ranks(*tensors.values()), strict=True))

    def totals(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`summed`, read from the device: a float each, a CPU tensor for a sum that
        is not one number."""
        return {name: total.item() if total.ndim == 0 else total.cpu()
                for name, total in self.summed(sums).items()}

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        """The epoch's figures from the sums of every rank (a float each, a CPU tensor
        for a sum that is not one number): ``loss`` and :attr:`epoch_metrics`."""
        return {"loss": totals["loss"] / totals["seen"]}


class ImageInputs:
    """For a task whose model takes images: the shapes the data gives its constructor."""

    def model_arguments(self, config: Any, label_map: Mapping[str, int],
                        preprocessing: Mapping[str, Any]) -> dict[str, Any]:
        return {"num_classes": len(label_map), "in_channels": config.channels}

    def probe_arguments(self, config: Any) -> dict[str, Any]:
        return {"num_classes": 2, "in_channels": config.channels}


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices, also from the soft (batch, classes) targets of MixUp and CutMix:
    their accuracy counts the class with the largest share."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


class Classification(Task):
    """One class per sample, from logits: the share of samples whose top class is right."""

    default_loss = "CrossEntropyLoss"
    headline = ("test_accuracy",)
    probe_outputs = 2
    epoch_metrics: ClassVar[dict[str, Literal["min", "max"]]] = {"accuracy": "max"}

    def metric_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        return super().metric_sums(device) | {
            "correct": torch.zeros((), dtype=torch.long, device=device)}

    def probe_targets(self) -> dict[str, torch.Tensor]:
        """Class indices, and the soft targets MixUp and CutMix make of them. Three
        samples of two classes, so that (samples,) targets never broadcast against
        (samples, classes) logits, as they would if the two sizes were equal."""
        labels = torch.tensor([0, 1, 0])
        return {"class-index": labels,
                "soft (MixUp/CutMix)": nn.functional.one_hot(labels, 2).float()}

    def accumulate(self, sums: dict[str, torch.Tensor], outputs: torch.Tensor,
                   targets: torch.Tensor, loss: torch.Tensor) -> None:
        super().accumulate(sums, outputs, targets, loss)
        sums["correct"] += (outputs.argmax(dim=1) == hard_labels(targets)).sum()

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        return super().summarize(totals) | {"accuracy": totals["correct"] / totals["seen"]}

    def test_metrics(self, report: dict) -> dict[str, float]:
        return metrics.flat_test_metrics(report)


@dataclass(frozen=True)
class Scored:
    """A classifier's logits on a split, measured (:func:`score_classifier`)."""

    report: dict  # accuracy, top-k, per-class scores, confusion matrices, calibration
    probabilities: torch.Tensor
    predictions: torch.Tensor
    confidence: torch.Tensor  # the probability of the predicted class
    entropy: torch.Tensor


def score_classifier(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                     top_k: int, calibration_bins: int) -> Scored:
    """How right a classifier is, and how well it knows when it is wrong: the report
    every classification task gives, whatever its samples are."""
    probabilities = logits.softmax(dim=1)
    confidence, predictions = probabilities.max(dim=1)
    entropy = metrics.predictive_entropy(probabilities)
    report = metrics.classification_report(targets, predictions, class_names)
    report["top_k"] = top_k
    report["top_k_accuracy"] = metrics.top_k_accuracy(logits, targets, top_k)
    report["calibration"] = metrics.calibration(probabilities, targets, calibration_bins)
    report["mean_entropy"] = entropy.mean().item()
    logger.info("Test accuracy: %.4f, top-%d: %.4f, ECE: %.4f", report["accuracy"], top_k,
                report["top_k_accuracy"], report["calibration"]["ece"])
    return Scored(report, probabilities, predictions, confidence, entropy)


def classification_figures(report: dict, class_names: list[str]) -> dict[str, Figure]:
    """The figures of a classification report, by file stem."""
    return {
        "confusion_matrix": plots.confusion_matrix_figure(
            report["confusion_matrix"], report["confusion_matrix_normalized"], class_names),
        "reliability_diagram": plots.reliability_figure(report["calibration"]["bins"],
                                                        report["calibration"]["ece"]),
        "per_class_metrics": plots.per_class_figure(report["per_class"]),
    }
