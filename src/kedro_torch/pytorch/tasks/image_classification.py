"""Image classification: one class per image, from a folder, a table of paths or a
torchvision dataset.

Images are checked once (unreadable files set aside), split by a hash of their
content, decoded into the cache ``data.cache`` asks for, and fed by DataLoaders that
apply the ``data.transforms``. Evaluation reads the saved weights back and reports
accuracy, per-class scores, calibration and the images the model gets most wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
    plots,
    sources,
)
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    ModelConfig,
)
from kedro_torch.pytorch.inference import ImageClassifier, ModelSpec, image_files
from kedro_torch.pytorch.tasks.base import (
    Classification,
    Evaluation,
    ImageInputs,
    PreparedData,
    classification_figures,
    score_classifier,
)

logger = logging.getLogger(__name__)


class ImageClassification(ImageInputs, Classification):
    name = "image_classification"
    sources = ("folder", "manifest", "torchvision")
    spec_type = ModelSpec

    def prepare_data(self, manifest: pd.DataFrame, config: DataConfig,
                     on_disk: ImageStore | None) -> PreparedData:
        return distributed.once_per_machine(lambda: _prepare_data(manifest, config, on_disk))

    def build_loaders(self, model_input: pd.DataFrame, preprocessing: Mapping[str, Any],
                      config: DataConfig, seed: int, images: ImageStore | None,
                      pin_memory: bool) -> dict[str, DataLoader]:
        return _build_loaders(model_input, preprocessing, config, seed, images, pin_memory)

    def spec(self, model: ModelConfig, config: DataConfig,
             preprocessing: Mapping[str, Any]) -> ModelSpec:
        return ModelSpec.from_configs(model, config, preprocessing)

    def evaluate(self, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec,
                 model_input: pd.DataFrame, label_map: Mapping[str, int],
                 config: EvaluationConfig, data_config: DataConfig,
                 images: ImageStore | None, device: torch.device, split: str) -> Evaluation:
        return _evaluate(state_dict, spec, model_input, label_map, config, data_config,
                         images, device, split)

    def data_note(self, report: dict, config: DataConfig) -> tuple[str, dict[str, int], str]:
        return (f"{report['images_used']} images in {len(report['images_per_class'])} "
                "classes", report["images_per_split"],
                f"{len(report['bad_files'])} unreadable files set aside")

    def input_note(self, config: DataConfig, report: dict | None) -> str:
        channels = "grey" if config.channels == 1 else "RGB"
        return f"{config.image_size}x{config.image_size} px, {channels}"

    def input_example(self, model_input: pd.DataFrame) -> None:
        """The served model takes image files; it makes its example (a blank PNG) itself."""
        return None

    def predict(self, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec,
                label_map: Mapping[str, int], listing: pd.DataFrame, config: InferenceConfig,
                device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Every image of a folder listing: labels with the top-k, and the files that do
        not decode."""
        files = image_files(listing)
        classifier = ImageClassifier.from_state_dict(state_dict, spec, label_map, device)
        predictions, failures = classifier.predict_paths(
            files["path"].tolist(), config.top_k, config.batch_size)
        relative = files["relative_path"]
        predictions.insert(1, "relative_path", relative[predictions.index].to_numpy())
        failures.insert(1, "relative_path", relative[failures.index].to_numpy())
        return predictions.reset_index(drop=True), failures.reset_index(drop=True)

    def trained_model(self, spec: ModelSpec, state_dict: Mapping[str, torch.Tensor],
                      label_map: Mapping[str, int]) -> nn.Module:
        return spec.build_model(state_dict, len(label_map))

    def example_input(self, spec: ModelSpec, batch: int) -> torch.Tensor:
        return torch.zeros(batch, spec.channels, spec.image_size, spec.image_size)

    def input_batch(self, model_input: pd.DataFrame, spec: ModelSpec,
                    data_config: DataConfig, split: str) -> torch.Tensor:
        """A split's images as the model's input batch, read as training read them
        (files, or a torchvision dataset's samples) and prepared as ``spec`` says."""
        paths = model_input.loc[model_input["split"] == split, "path"].tolist()
        return spec.load_batch(paths, image_source(data_config))


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
    normalization = data.fitted_normalization(config, usable[model_input["split"] == "train"])
    origin = sources.get(config.source).describe(config)
    report = data.quality_report(checked, bad, model_input, missed, config.max_bad_fraction,
                                 source=origin, split_rule=rule)
    return PreparedData(model_input, label_map, normalization, report, store,
                        cache.to_save(config.cache, store, on_disk))


def image_source(config: DataConfig) -> images.ImageSource:
    """What reads the manifest's paths (``data.source``): image files, or the samples
    of the torchvision dataset ``data.torchvision`` names."""
    return sources.get(config.source).samples(config)


def _build_loaders(model_input: pd.DataFrame, normalization: Mapping[str, Sequence[float]],
                   config: DataConfig, seed: int, store: ImageStore | None,
                   pin_memory: bool) -> dict[str, DataLoader]:
    """One DataLoader per split, reading decoded images from ``store`` where it has them."""
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
        split: image_dataset(rows, config.channels, config.decode_size, normalization, store,
                             transforms["train" if split == "train" else "eval"],
                             mixing if split == "train" else None, source,
                             config.normalize_on)
        for split, rows in model_input.groupby("split", sort=False)
    }
    return loaders.build_dataloaders(datasets, config, seed, pin_memory)


def image_dataset(rows: pd.DataFrame, channels: int, load_size: int,
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


def _evaluate(state_dict: Mapping[str, torch.Tensor], spec: ModelSpec,
              model_input: pd.DataFrame, label_map: Mapping[str, int],
              config: EvaluationConfig, data_config: DataConfig, store: ImageStore | None,
              device: torch.device, split: str) -> Evaluation:
    """How good saved weights are on a split, how well the model knows when it is
    wrong, and where it fails. ``store`` is used where it holds images of the spec's
    shape."""
    class_names = sorted(label_map, key=label_map.get)
    if store is not None and store.image_shape != (spec.channels, spec.decode_size,
                                                   spec.decode_size):
        store = None
    dataset = image_dataset(model_input[model_input["split"] == split], spec.channels,
                            spec.decode_size, {"mean": spec.mean, "std": spec.std}, store,
                            spec.eval_transform(), source=image_source(data_config))
    loader = loaders.build_dataloaders({split: dataset}, data_config, 0, shard=False)[split]
    model = spec.build_model(state_dict, len(class_names)).to(device)
    logits, targets = engine.predict(model, loader, device)
    scored = score_classifier(logits, targets, class_names, config.top_k,
                              config.calibration_bins)
    report = scored.report
    names = np.asarray(class_names, dtype=object)
    table = pd.DataFrame({
        "path": dataset.paths, "true": names[targets.numpy()],
        "predicted": names[scored.predictions.numpy()],
        "probability": scored.confidence.numpy(), "entropy": scored.entropy.numpy(),
    })
    picked = metrics.gallery_indices(scored.probabilities, targets, scored.entropy,
                                     config.gallery_size)
    figures = classification_figures(report, class_names) | {"prediction_gallery": _gallery({
        title: [(dataset.raw_image(i), table.iloc[i]) for i in picked[key]]
        for key, title in (("confidently_wrong", "Most confidently wrong"),
                           ("most_uncertain", "Most uncertain (highest entropy)"))
    })}
    return Evaluation(report, metrics.flat_test_metrics(report), table,
                      metrics.per_class_table(report), figures)


def _gallery(picked: Mapping[str, list[tuple[torch.Tensor, pd.Series]]]) -> Figure:
    """The picked images with their table rows."""
    return plots.gallery_figure({
        title: [(image.permute(1, 2, 0).squeeze(-1).numpy(),
                 f"true {row.true}, pred {row.predicted}\n"
                 f"p = {row.probability:.2f}, H = {row.entropy:.2f}")
                for image, row in rows]
        for title, rows in picked.items()
    })
