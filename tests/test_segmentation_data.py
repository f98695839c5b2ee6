"""The segmentation data the tests and the shapes run read: the test writers give what
their docstrings promise, torchvision opens the VOC root as the real one, and the
bundled shapes set is whole and its writer reproduces it."""

import runpy

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import VOCSegmentation

from tests.conftest import PROJECT_ROOT
from tests.segmentation_data import VOC_VOID, write_bad_pairs, write_folder_pair, write_voc_root

SHAPES = PROJECT_ROOT / "data" / "01_raw" / "shapes_segmentation"


def _stems(folder):
    return sorted(path.stem for path in folder.glob("*.png"))


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_a_folder_pair_has_a_mask_per_image_and_every_class(tmp_path, classes):
    root = write_folder_pair(tmp_path / "pair", count=8, size=24, classes=classes)
    assert _stems(root / "images") == _stems(root / "masks") == [f"i{i:03d}" for i in range(8)]
    seen = set()
    for stem in _stems(root / "images"):
        with Image.open(root / "images" / f"{stem}.png") as image, \
                Image.open(root / "masks" / f"{stem}.png") as mask:
            assert (image.mode, mask.mode) == ("RGB", "L")
            assert image.size == mask.size == (24, 24)
            values = set(np.unique(np.asarray(mask)).tolist())
        assert 0 in values and len(values) > 1  # background and at least one object
        seen |= values
    assert seen == set(range(classes))


def test_the_same_seed_writes_the_same_pair(tmp_path):
    first = write_folder_pair(tmp_path / "a", count=3, seed=4)
    second = write_folder_pair(tmp_path / "b", count=3, seed=4)
    for folder in ("images", "masks"):
        for stem in _stems(first / folder):
            name = f"{folder}/{stem}.png"
            assert (first / name).read_bytes() == (second / name).read_bytes()


def test_torchvision_opens_the_voc_root_as_it_opens_pascal_voc(tmp_path):
    root = write_voc_root(tmp_path / "voc", count=9, classes=4)
    train, val, trainval = (VOCSegmentation(root, year="2012", image_set=name, download=False)
                            for name in ("train", "val", "trainval"))
    assert (len(train), len(val), len(trainval)) == (6, 3, 9)
    seen = set()
    for image, mask in trainval:
        assert (image.mode, mask.mode) == ("RGB", "P")
        assert image.size == mask.size == (32, 32)
        values = set(np.unique(np.asarray(mask)).tolist())
        assert 0 in values and VOC_VOID in values  # an outline of void round the objects
        seen |= values
    assert seen == {0, 1, 2, 3, VOC_VOID}
    assert mask.getpalette()[3 * VOC_VOID: 3 * VOC_VOID + 3] == [224, 224, 192]


def test_the_bad_pairs_are_broken_as_they_say(tmp_path):
    root = write_folder_pair(tmp_path / "pair", count=2, size=16)
    broken = write_bad_pairs(root)
    assert sorted(broken.values()) == ["no_mask", "unknown_class", "wrong_size"]
    stems = {problem: stem for stem, problem in broken.items()}
    for stem in broken:
        assert (root / "images" / f"{stem}.png").exists()
    with Image.open(root / "images" / f"{stems['wrong_size']}.png") as image, \
            Image.open(root / "masks" / f"{stems['wrong_size']}.png") as mask:
        assert image.size == (16, 16) and mask.size != image.size
    with Image.open(root / "masks" / f"{stems['unknown_class']}.png") as mask:
        assert 77 in np.asarray(mask)
    assert not (root / "masks" / f"{stems['no_mask']}.png").exists()


def test_the_bundled_shapes_set_is_whole():
    stems = _stems(SHAPES / "images")
    assert len(stems) == 320
    assert _stems(SHAPES / "masks") == stems
    assert {path.name for path in SHAPES.iterdir()} == {"images", "masks"}
    counts = np.zeros(256, np.int64)
    for stem in stems:
        with Image.open(SHAPES / "images" / f"{stem}.png") as image, \
                Image.open(SHAPES / "masks" / f"{stem}.png") as mask:
            assert (image.mode, mask.mode) == ("RGB", "L")
            assert image.size == mask.size == (64, 64)
            counts += np.bincount(np.asarray(mask).ravel(), minlength=256)
    assert counts[4:].sum() == 0  # background, circle, square, triangle: nothing else
    assert (counts[1:4] > 0.03 * counts.sum()).all()


def test_the_shapes_writer_reproduces_the_committed_files(tmp_path):
    script = runpy.run_path(str(PROJECT_ROOT / "data" / "01_raw" / "write_shapes_segmentation.py"))
    script["main"](tmp_path)
    for folder in ("images", "masks"):
        written = _stems(tmp_path / folder)
        assert written == _stems(SHAPES / folder)
        for stem in written:
            name = f"{folder}/{stem}.png"
            assert (tmp_path / name).read_bytes() == (SHAPES / name).read_bytes(), name
