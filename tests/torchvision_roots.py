"""Tiny dataset roots in torchvision's own on-disk formats, written by the tests: CIFAR-10's
pickled batches and MNIST's raw idx files. Each class gets its own colour or brightness
under noise, so a few epochs learn something."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images, one per label, whose mean level depends on the class."""
    rng = np.random.default_rng(seed)
    level = (labels.astype(np.int64) * 97 % 200 + 28).reshape(-1, *[1] * len(shape))
    if len(shape) == 3:  # a colour per class: the channels get different levels
        level = (level + np.arange(shape[-1]) * labels.reshape(-1, 1, 1, 1) * 41) % 230 + 13
    noise = rng.integers(-12, 13, size=(len(labels), *shape))
    return np.clip(level + noise, 0, 255).astype(np.uint8)


def balanced_labels(classes: int, per_class: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


# --- CIFAR-10 ---------------------------------------------------------------------------


def write_cifar10(root: Path, train_per_class: int, test_per_class: int
                  ) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """``root/cifar-10-batches-py`` as the release unpacks it: five pickled training
    batches, a test batch (``data``: N x 3072 uint8, channel by channel; ``labels``) and
    ``batches.meta`` with the class names. Returns each file's md5, and the test
    images (N, 32, 32, 3) with their labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_labels = balanced_labels(10, train_per_class, seed=1)
    test_labels = balanced_labels(10, test_per_class, seed=2)
    train = class_images(train_labels, (32, 32, 3), seed=3)
    test = class_images(test_labels, (32, 32, 3), seed=4)
    batches = dict(zip(CIFAR10_TRAIN_BATCHES, np.array_split(np.arange(len(train)), 5),
                       strict=True))
    for name, rows in batches.items():
        _pickle(folder / name, _batch(name, train[rows], train_labels[rows]))
    _pickle(folder / "test_batch", _batch("test_batch", test, test_labels))
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES,
                                      "num_cases_per_batch": len(batches["data_batch_1"]),
                                      "num_vis": 3072})
    md5s = {path.name: hashlib.md5(path.read_bytes()).hexdigest()
            for path in folder.iterdir()}
    return md5s, test, test_labels


def _batch(name: str, images: np.ndarray, labels: np.ndarray) -> dict:
    return {"batch_label": name, "labels": labels.tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            "filenames": [f"{name}_{i}.png" for i in range(len(images))]}


def _pickle(path: Path, content: dict) -> None:
    with path.open("wb") as file:
        pickle.dump(content, file)


def trust_cifar10_files(patch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """CIFAR10 checks every file against the md5 of the real release, listed in its
    class attributes ``train_list``, ``test_list`` and ``meta``; files written by a test
    cannot match those, so the class is given the md5s of the files written, and it
    checks them as it checks the release's."""
    patch.setattr(CIFAR10, "train_list", [[name, md5s[name]] for name in CIFAR10_TRAIN_BATCHES])
    patch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    patch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})


# --- MNIST ------------------------------------------------------------------------------


def write_mnist(root: Path, train_per_class: int, test_per_class: int, classes: int = 10,
                with_test: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/MNIST/raw`` in the idx format (big-endian sizes after a magic number whose
    last bytes are the type, 8 = uint8, and the number of dimensions): 28x28 images and
    their labels, ``train-*`` and, ``with_test``, ``t10k-*``. Returns the images and
    labels of each split."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, prefix, per_class, seed in (("train", "train", train_per_class, 5),
                                           ("test", "t10k", test_per_class, 6)):
        if split == "test" and not with_test:
            continue
        labels = balanced_labels(classes, per_class, seed)
        pixels = class_images(labels, (28, 28), seed + 10)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
        written[split] = (pixels, labels)
    return written


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
