"""torchvision.datasets classes as a source of images: the registry, the parameters
checked against each class, a tiny MNIST root in its raw idx format read into the
same check, split, report and cache as files, and the errors that name their key."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.datasets import MNIST, FakeData

from kedro_torch.pytorch import api, data
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    DataConfig,
    ParameterError,
    SplitConfig,
    TorchvisionConfig,
    parse,
)
from kedro_torch.pytorch.tasks import image_classification
from kedro_torch.pytorch.torchvision_data import TorchvisionSamples, dataset_classes
from tests.torchvision_roots import write_mnist


def mnist_config(root, **data) -> DataConfig:
    return parse(DataConfig, {"source": "torchvision", "image_size": 28, "num_workers": 0,
                              "torchvision": {"name": "MNIST", "root": str(root)}, **data},
                 "data")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    return root, write_mnist(root, train_per_class=12, test_per_class=3)


# --- the registry and the parameters -------------------------------------------------------


def test_the_registry_holds_the_classification_datasets_only():
    names = dataset_classes()
    assert {"CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "EMNIST", "SVHN", "Food101",
            "ImageNet", "FakeData", "STL10", "Flowers102", "OxfordIIITPet"} <= set(names)
    assert not {"CocoDetection", "VOCSegmentation", "Kinetics", "FlyingChairs", "CelebA",
                "LFWPairs", "VisionDataset", "DatasetFolder"} & set(names)


@pytest.mark.parametrize(("config", "key", "message"), [
    ({"name": "CIFAR11", "root": "r"}, "data.torchvision.name", "Valid names: "),
    ({"name": "CIFAR10"}, "data.torchvision.root", "none is given"),
    ({"name": "FakeData", "root": "r"}, "data.torchvision.root", "reads no files"),
    ({"name": "FakeData", "download": True}, "data.torchvision.download", "cannot download"),
    ({"name": "CIFAR10", "root": "r", "kwargs": {"train": False}},
     "data.torchvision.kwargs.train", "set by the project"),
    ({"name": "Food101", "root": "r", "kwargs": {"split": "test"}},
     "data.torchvision.kwargs.split", "set by the project"),
    ({"name": "CIFAR10", "root": "r", "kwargs": {"transform": "x"}},
     "data.torchvision.kwargs.transform", "set by the project"),
    ({"name": "CIFAR10", "root": "r", "kwargs": {"colour": 1}},
     "data.torchvision.kwargs.colour", "takes no argument 'colour'"),
    ({"name": "CIFAR10", "root": "r", "test_split": "val"}, "data.torchvision.test_split",
     "train=True/False"),
    ({"name": "Food101", "root": "r", "test_split": "train"}, "data.torchvision.test_split",
     "the same split"),
])
def test_parameters_that_do_not_fit_the_class_are_refused_naming_the_key(config, key, message):
    with pytest.raises(ValueError, match=message) as refusal:
        TorchvisionSamples(TorchvisionConfig(**config))
    assert str(refusal.value).startswith(key)


def test_a_torchvision_source_needs_a_dataset_name():
    with pytest.raises(ParameterError, match=r"data\.torchvision\.name is required"):
        parse(DataConfig, {"source": "torchvision"}, "data")


def test_arguments_handed_on_to_a_base_class_are_accepted():
    """EMNIST names root and split (its variant) and hands train and download to MNIST."""
    source = TorchvisionSamples(TorchvisionConfig(name="emnist", root="r",
                                                  kwargs={"split": "digits"}, download=True))
    assert source.name == "EMNIST"
    assert source.arguments("test") == {"root": os.path.abspath("r"), "download": True,
                                        "split": "digits", "train": False}


def test_a_dataset_that_chooses_by_split_reads_the_named_splits():
    source = TorchvisionSamples(TorchvisionConfig(name="ImageNet", root="r", test_split="val"))
    assert source.splits == {"train": {"split": "train"}, "val": {"split": "val"}}
    assert source.test_segment == "val"
    alone = TorchvisionSamples(TorchvisionConfig(name="ImageNet", root="r", test_split=None))
    assert alone.splits == {"train": {"split": "train"}} and alone.test_segment is None


# --- missing roots and splits ----------------------------------------------------------------


def test_a_missing_root_is_refused_naming_the_key(tmp_path):
    source = TorchvisionSamples(TorchvisionConfig(name="MNIST", root=str(tmp_path / "none")))
    with pytest.raises(ParameterError, match=r"^data\.torchvision\.root: .* does not exist"):
        source.open()


def test_a_missing_test_split_is_refused_naming_the_key(tmp_path):
    write_mnist(tmp_path, train_per_class=2, test_per_class=0, with_test=False)
    source = TorchvisionSamples(TorchvisionConfig(name="MNIST", root=str(tmp_path)))
    with pytest.raises(ParameterError, match=r"^data\.torchvision\.test_split: "
                                             r"MNIST\(train=False\) cannot be read from") as e:
        source.open()
    assert "data.torchvision.download: true downloads it" in str(e.value)
    # Without a test split of its own, the training split is read alone.
    alone = TorchvisionSamples(TorchvisionConfig(name="MNIST", root=str(tmp_path),
                                                 test_split=None))
    with pytest.raises(ParameterError, match=r"^data\.torchvision\.train_split: "):
        alone.open()  # MNIST checks that the files of both splits are there


def test_an_unknown_split_is_refused_with_the_classes_own_choices(tmp_path):
    source = TorchvisionSamples(TorchvisionConfig(name="Food101", root=str(tmp_path),
                                                  test_split="tst"))
    with pytest.raises(ParameterError, match=r"^data\.torchvision\.test_split: .*'tst'.*train"):
        source.open()


# --- MNIST through the checks, split, report and cache --------------------------------------


def test_mnist_samples_become_manifest_rows_labelled_by_the_class_names(mnist_root):
    root, written = mnist_root
    manifest = image_classification.image_source(mnist_config(root)).manifest()
    assert len(manifest) == 120 + 30
    first_test = manifest[manifest["own_split"] == "test"].iloc[0]
    assert first_test["path"] == "torchvision://MNIST/test/0"
    assert first_test["relative_path"] == "test/0"
    assert first_test["label"] == MNIST.classes[written["test"][1][0]]
    assert (manifest["own_split"] == "train").sum() == 120


def test_the_dataset_s_own_test_split_is_the_test_split(mnist_root):
    root, written = mnist_root
    config = mnist_config(root)
    prepared = api.prepare_data(image_classification.image_source(config).manifest(), config)
    frame = prepared.model_input
    assert (frame.loc[frame["split"] == "test", "own_split"] == "test").all()
    assert (frame["split"] == "test").sum() == 30
    assert set(frame.loc[frame["own_split"] == "train", "split"]) == {"train", "val"}
    report = prepared.report
    assert report["source"]["dataset"] == "MNIST"
    assert report["source"]["root"] == str(root)
    assert report["source"]["splits"] == {"train": "train=True", "test": "train=False"}
    assert report["split_rule"].startswith("own test split")
    assert report["images_per_split"]["test"] == 30
    # The pixels are those written: an MNIST image at its own size goes through unchanged.
    row = frame.index[frame["path"] == "torchvision://MNIST/test/4"][0]
    (chunk,), (index,) = prepared.images.locate([frame.loc[row, "content_hash"]])
    assert np.array_equal(prepared.images.image(chunk, index)[0].numpy(), written["test"][0][4])


def test_loaders_decode_samples_the_cache_does_not_hold(mnist_root):
    root, written = mnist_root
    config = mnist_config(root, cache="none", batch_size=8)
    prepared = api.prepare_data(image_classification.image_source(config).manifest(), config)
    loaders = api.build_loaders(prepared.model_input, prepared.preprocessing, config, 0)
    test = loaders["test"].dataset
    assert test.store is None
    index = test.paths.index("torchvision://MNIST/test/7")
    assert np.array_equal(test.raw_image(index)[0].numpy(), written["test"][0][7])
    images, targets = next(iter(loaders["train"]))
    assert images.shape == (8, 1, 28, 28) and targets.dtype == torch.long


def test_the_disk_cache_knows_unchanged_samples_and_sees_a_changed_root(mnist_root, tmp_path,
                                                                         caplog):
    root, _ = mnist_root
    config = mnist_config(root, cache="disk")
    manifest = image_classification.image_source(config).manifest()
    first = api.prepare_data(manifest, config, ImageStore.open(str(tmp_path / "cache")))
    first.on_disk.save()
    with caplog.at_level("INFO"):
        second = api.prepare_data(manifest, config, ImageStore.open(str(tmp_path / "cache")))
    assert "Checked 150 files: 0 decoded now, 150 known from the cache" in caplog.text
    pd.testing.assert_frame_equal(second.model_input, first.model_input)
    path = "torchvision://MNIST/test/0"
    known = second.on_disk.entries["fingerprint"]
    assert image_classification.image_source(config).fingerprint(path) in set(known)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    assert image_classification.image_source(config).fingerprint(path) not in set(known)


def test_a_sample_reads_the_same_after_pickling_as_a_spawned_worker_gets_it():
    source = TorchvisionSamples(TorchvisionConfig(name="FakeData",
                                                  kwargs={"size": 4, "image_size": [3, 6, 6]}))
    copy = pickle.loads(pickle.dumps(source))
    path = "torchvision://FakeData/all/2"
    assert np.array_equal(copy.decode(path, 6, 3), source.decode(path, 6, 3))
    expected = np.asarray(FakeData(size=4, image_size=(3, 6, 6))[2][0]).transpose(2, 0, 1)
    assert np.array_equal(source.decode(path, 6, 3), expected)


def test_a_sample_the_dataset_cannot_give_is_set_aside_not_fatal():
    source = TorchvisionSamples(TorchvisionConfig(name="FakeData", kwargs={"size": 4}))
    check = source.check("torchvision://FakeData/all/9", 8, 1, keep_pixels=False)
    assert check.reason.startswith("cannot read: IndexError")
    assert source.check("torchvision://FakeData/all/3", 8, 1, False).reason is None


# --- the rule of a source's own test split ---------------------------------------------------


def test_copies_of_test_images_in_the_training_part_go_to_test():
    usable = pd.DataFrame({
        "path": [f"p{i}" for i in range(40)], "relative_path": [f"r{i}" for i in range(40)],
        "label": ["a", "b"] * 20, "content_hash": [f"h{i}" for i in range(39)] + ["h0"],
        "own_split": ["test"] * 8 + ["train"] * 32,
        "reason": None, "mode": "L", "missing": False, "pixel_sum": 0, "pixel_sumsq": 0,
    })
    frame, _, _, rule = data.split_manifest(usable, SplitConfig(train=0.5, val=0.3, test=0.2))
    assert frame.loc[39, "split"] == "test"  # the copy of row 0, a test image
    assert (frame["split"] == "test").sum() == 9
    assert "1 training images that are copies of test images" in rule
    assert set(frame.loc[8:38, "split"]) == {"train", "val"}
