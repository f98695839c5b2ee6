"""``torchvision.datasets`` classes by name as a source of labelled images.

Plain torchvision and pandas. A dataset's samples have no files of their own, so each
becomes a manifest row whose ``path`` names it, ``torchvision://<name>/<split>/<index>``
(``<split>`` as the dataset's constructor calls it: ``train``/``test`` for the classes
that take ``train=True/False``, the ``split`` value for the others, ``all`` for classes
with neither), and :class:`TorchvisionSamples` reads such paths through the dataset's
``__getitem__``, a PIL image, where :class:`~kedro_torch.pytorch.images.ImageFiles`
reads files. The check, content hash, split, cache and DataLoaders are those of files.

Some formats are Python pickles (CIFAR's batches): opening such a dataset runs code
from its files, so read only roots you made or trust.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.vision import VisionDataset

from kedro_torch.pytorch import images, interrupts
from kedro_torch.pytorch.config import ParameterError, TorchvisionConfig
from kedro_torch.pytorch.data import OWN_SPLIT
from kedro_torch.pytorch.optimizers import classes_in, resolve

logger = logging.getLogger(__name__)

SCHEME = "torchvision://"
KEY = "data.torchvision"
WHOLE = "all"  # the split segment of classes that take neither train nor split
# Classes of torchvision.datasets whose samples are not one image with one class
# index (detection, segmentation, captions, image pairs, video, optical flow, stereo,
# face attributes), and the bases other datasets build on.
NOT_CLASSIFICATION = frozenset({
    "VisionDataset", "DatasetFolder", "LSUNClass", "CocoCaptions", "CocoDetection",
    "VOCSegmentation", "VOCDetection", "Cityscapes", "SBDataset", "WIDERFace", "Kitti",
    "CelebA", "SBU", "Flickr8k", "Flickr30k", "PhotoTour", "LFWPairs", "MovingMNIST",
    "Kinetics", "HMDB51", "UCF101", "KittiFlow", "Sintel", "FlyingChairs",
    "FlyingThings3D", "HD1K", "Kitti2012Stereo", "Kitti2015Stereo", "CarlaStereo",
    "Middlebury2014Stereo", "CREStereo", "FallingThingsStereo", "SceneFlowStereo",
    "SintelStereo", "InStereo2k", "ETH3DStereo",
})
# Arguments with keys of their own, or that would turn samples into something other
# than PIL images.
RESERVED_ARGUMENTS = frozenset({"root", "download", "transform", "target_transform",
                                "transforms"})
# Where datasets keep one class index per sample, read instead of decoding every sample.
TARGET_ATTRIBUTES = ("targets", "labels", "_labels", "y")
CLASS_NAME_ATTRIBUTES = ("classes", "categories")


# The classes whose samples are an image and its mask of class indices.
SEGMENTATION = frozenset({"VOCSegmentation", "SBDataset", "Cityscapes"})


def dataset_classes(kind: str = "classification") -> dict[str, type]:
    """The datasets of ``torchvision.datasets`` whose samples are of ``kind``
    (``classification``: an image and a class; ``segmentation``: an image and a mask),
    by class name."""
    every = classes_in(datasets, VisionDataset)
    if kind == "segmentation":
        return {name: cls for name, cls in every.items() if name in SEGMENTATION}
    return {name: cls for name, cls in every.items() if name not in NOT_CLASSIFICATION}


class TorchvisionSamples:
    """The samples of one ``torchvision.datasets`` class, as ``data.torchvision`` says.

    Building it checks the parameters against the class (no file is read); datasets
    are opened on first use, once per process and arguments. Picklable, so DataLoader
    workers started by any method open their own.
    """

    def __init__(self, config: TorchvisionConfig, kind: str = "classification"):
        self.kind = kind
        self.cls = resolve(config.name, dataset_classes(kind), f"{KEY}.name")
        self.name = self.cls.__name__
        named, accepted = _arguments_taken(self.cls)
        self.root = os.path.abspath(config.root) if config.root is not None else None
        if "root" in named and self.root is None:
            raise ParameterError(f"{KEY}.root: {self.name} reads its files from a root "
                                 "folder; none is given")
        if "root" not in named and self.root is not None:
            raise ParameterError(f"{KEY}.root: {self.name} reads no files; leave it null")
        if config.download and "download" not in accepted:
            raise ParameterError(f"{KEY}.download: {self.name} cannot download its files")
        self.download = config.download
        # VOC's classes choose theirs with image_set (train, val, trainval)
        chooser = next((name for name in ("train", "split", "image_set") if name in accepted),
                       None)
        for name in config.kwargs:
            if name in RESERVED_ARGUMENTS or name == chooser:
                raise ParameterError(
                    f"{KEY}.kwargs.{name}: set by the project (root, download, and the "
                    f"split by {KEY}.train_split and {KEY}.test_split), not by kwargs")
            if name not in accepted:
                raise ParameterError(
                    f"{KEY}.kwargs.{name}: {self.name} takes no argument {name!r}; it takes "
                    f"{', '.join(sorted(accepted - RESERVED_ARGUMENTS - {chooser}))}")
        self.kwargs = dict(config.kwargs)
        self.splits = _splits(self.name, chooser, config)  # segment -> chooser argument
        self.test_segment = list(self.splits)[1] if len(self.splits) > 1 else None
        self._signatures: dict[str, str] = {}  # by split: the root is walked once

    # --- opening -----------------------------------------------------------------------

    def arguments(self, segment: str) -> dict[str, Any]:
        """The constructor's arguments for one split."""
        given = {"root": self.root} if self.root is not None else {}
        given |= {"download": True} if self.download else {}
        return given | self.kwargs | self.splits[segment]

    def dataset(self, segment: str) -> Dataset:
        """One split, opened; failing, the error names the keys to look at."""
        try:
            return _open(self.cls, json.dumps(self.arguments(segment), sort_keys=True))
        except Exception as error:
            key = (KEY if segment == WHOLE else f"{KEY}.test_split"
                   if segment == self.test_segment else f"{KEY}.train_split")
            hint = (f" ({KEY}.download: true downloads it, which needs network access)"
                    if "download=True" in str(error) else "")
            where = f" from {KEY}.root {self.root!r}" if self.root is not None else ""
            raise ParameterError(
                f"{key}: {self.name}({_call(self.splits[segment])}) cannot be read{where}: "
                f"{error}{hint}") from error

    def open(self) -> dict[str, Dataset]:
        """Every split the run reads, opened, before any work: a missing root or split
        stops the run here. The test split first: some classes (CIFAR, MNIST) check
        the files of both splits whichever they open, and a missing test split is
        the likelier."""
        if self.root is not None and not self.download and not os.path.isdir(self.root):
            raise ParameterError(f"{KEY}.root: {self.root!r} does not exist or is not a "
                                 f"folder (set {KEY}.download: true to download "
                                 f"{self.name}, which needs network access)")
        order = sorted(self.splits, key=lambda segment: segment != self.test_segment)
        opened = {segment: self.dataset(segment) for segment in order}
        return {segment: opened[segment] for segment in self.splits}

    # --- the manifest ------------------------------------------------------------------

    def manifest(self) -> pd.DataFrame:
        """One row per sample: its ``path``, ``relative_path`` (``<split>/<index>``),
        ``label`` (the dataset's class name, else the class index), and, where the
        dataset has a test split of its own, ``own_split`` (train or test)."""
        frames = []
        for segment, dataset in self.open().items():
            relative = [f"{segment}/{index}" for index in range(len(dataset))]
            paths = [f"{SCHEME}{self.name}/{path}" for path in relative]
            if self.kind == "segmentation":  # a sample holds its mask: the same path
                frame = pd.DataFrame({"path": paths, "relative_path": relative,
                                      "mask_path": paths})
            else:
                targets = _targets(dataset, self.name)
                names = _class_names(dataset, int(targets.max(initial=-1)) + 1)
                frame = pd.DataFrame({
                    "path": paths, "relative_path": relative,
                    "label": np.asarray(names, dtype=object)[targets] if names else
                    targets.astype(str),
                })
            if self.test_segment is not None:
                frame[OWN_SPLIT] = "test" if segment == self.test_segment else "train"
            frames.append(frame)
        manifest = pd.concat(frames, ignore_index=True)
        classes = f" in {manifest['label'].nunique()} classes" if "label" in manifest else ""
        logger.info("Found %d samples%s in torchvision.datasets.%s (%s)",
                    len(manifest), classes, self.name,
                    ", ".join(f"{len(f)} {s}" for s, f in zip(self.splits, frames, strict=True)))
        return manifest

    def describe(self) -> dict[str, Any]:
        """Where the samples come from, for the data-quality report."""
        return {"type": "torchvision", "dataset": self.name, "root": self.root,
                "kwargs": self.kwargs,
                "splits": {segment: _call(arguments) or "the whole dataset"
                           for segment, arguments in self.splits.items()},
                "test_split": self.test_segment}

    # --- reading samples (the three methods of images.ImageSource) -----------------------

    def sample(self, path: str) -> tuple[Any, Any]:
        """The sample a manifest path names, as the dataset gives it: the image and
        its target (a class index, or a mask)."""
        name, _, rest = path.removeprefix(SCHEME).partition("/")
        segment, _, index = rest.rpartition("/")
        if not path.startswith(SCHEME) or name != self.name or segment not in self.splits:
            raise ValueError(f"{path!r} names no sample of {self.name} as {KEY} reads it "
                             f"(splits {', '.join(self.splits)})")
        return self.dataset(segment)[int(index)]

    def image(self, path: str) -> Image.Image:
        """The image of the sample a manifest path names."""
        image = self.sample(path)[0]
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"{self.name} gives a {type(image).__name__}, not a PIL image")
        return image

    def fingerprint(self, path: str) -> str:
        """Changes whenever the dataset's arguments or any file under its root do."""
        segment = path.removeprefix(SCHEME).split("/")[1]
        if segment not in self._signatures:
            arguments = {k: v for k, v in self.arguments(segment).items() if k != "download"}
            self._signatures[segment] = _signature(self.name, arguments)
        return f"{path}|{self._signatures[segment]}"

    def check(self, path: str, size: int, channels: int, keep_pixels: bool
              ) -> images.FileCheck:
        """Like a file's check; a sample the dataset cannot give is set aside, not fatal."""
        try:
            image = self.image(path)
        except interrupts.Interrupted:
            raise
        except Exception as error:
            return images.FileCheck(reason=f"cannot read: {type(error).__name__}: {error}")
        return images.check_image(image, size, channels, keep_pixels)

    def decode(self, path: str, size: int, channels: int) -> np.ndarray:
        return images.decode_image(self.image(path), size, channels)


def _arguments_taken(cls: type) -> tuple[set[str], set[str]]:
    """The arguments ``cls`` names, and all it accepts: with those its bases take when
    it hands ``**kwargs`` on (EMNIST hands ``train`` to MNIST)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(cls).parameters
    named = {name for name, p in parameters.items() if p.kind not in kinds}
    accepted = set(named)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for base in cls.__mro__[1:]:
            if "__init__" in vars(base) and base is not object:
                accepted |= {name for name, p in inspect.signature(base.__init__).parameters
                             .items() if p.kind not in kinds and name != "self"}
    return named, accepted


def _splits(name: str, chooser: str | None, config: TorchvisionConfig) -> dict[str, dict]:
    """The splits the run reads, by manifest segment, and the argument choosing each."""
    if chooser is None:
        return {WHOLE: {}}
    if chooser == "train":
        if config.train_split != "train":
            raise ParameterError(f"{KEY}.train_split: {name} chooses its split with "
                                 f"train=True/False; use train (train=True)")
        if config.test_split not in ("test", None):
            raise ParameterError(f"{KEY}.test_split: {name} chooses its split with "
                                 f"train=True/False; use test (train=False) or null")
        splits = {"train": {"train": True}, "test": {"train": False}}
        return splits if config.test_split else {"train": splits["train"]}
    if config.test_split == config.train_split:
        raise ParameterError(f"{KEY}.test_split: the same split as {KEY}.train_split "
                             f"({config.train_split!r}); name another, or null")
    chosen = [config.train_split] + ([config.test_split] if config.test_split else [])
    return {segment: {chooser: segment} for segment in chosen}


def _call(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in arguments.items())


@functools.lru_cache(maxsize=8)
def _open(cls: type, arguments: str) -> Dataset:
    """Opened once per process and arguments: the parameter check, ingest and the
    loaders of one run share it (CIFAR and MNIST hold their splits in memory)."""
    return cls(**json.loads(arguments))


def _signature(name: str, arguments: dict[str, Any]) -> str:
    """A digest of the arguments and of the name, size and modification time of every
    file under the root."""
    digest = hashlib.blake2b(f"{name}:{json.dumps(arguments, sort_keys=True)}".encode(),
                             digest_size=16)
    root = arguments.get("root")
    for folder, subfolders, files in os.walk(root) if root else ():
        subfolders.sort()
        for file in sorted(files):
            status = os.stat(os.path.join(folder, file))
            relative = os.path.relpath(os.path.join(folder, file), root)
            digest.update(f"{relative}|{status.st_size}|{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _targets(dataset: Dataset, name: str) -> np.ndarray:
    """One class index per sample: from the list the dataset keeps (``targets``,
    ``labels``, ...) where it has one, else from every sample, which decodes it."""
    size = len(dataset)
    kept = next((values for values in (getattr(dataset, a, None) for a in TARGET_ATTRIBUTES)
                 if values is not None and not isinstance(values, str)
                 and len(values) == size), None)
    samples = getattr(dataset, "_samples", None)
    if kept is None and isinstance(samples, list) and len(samples) == size:
        kept = [sample[1] for sample in samples]
    if kept is None:
        kept = [dataset[index][1] for index in range(size)]
    targets = np.asarray(kept)
    if targets.ndim != 1 or not (np.issubdtype(targets.dtype, np.integer) or size == 0) \
            or (size and targets.min() < 0):
        raise ParameterError(
            f"{KEY}.name: the targets of {name} are not one class index per sample "
            f"(got {targets.dtype} of shape {targets.shape}); only classification datasets "
            "can be trained on")
    return targets.astype(np.int64)


def _class_names(dataset: Dataset, count: int) -> list[str] | None:
    """The dataset's class names where it has one distinct name per class index."""
    for attribute in CLASS_NAME_ATTRIBUTES:
        names = getattr(dataset, attribute, None)
        if isinstance(names, list | tuple) and len(names) >= count \
                and len({str(n) for n in names}) == len(names):
            return [str(n) for n in names]
    return None
