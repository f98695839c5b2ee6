"""Predicting from paths and pixel arrays with a model rebuilt from its spec."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kedro_torch.pytorch.inference import (
    ImageClassifier,
    ModelSpec,
    image_files,
    image_from_array,
    predictions_table,
)
from kedro_torch.pytorch.loaders import ImageManifestDataset, build_transforms, image_transform
from kedro_torch.pytorch.models import build_model

SPEC = ModelSpec(model_name="small_cnn", channels=1, image_size=8, mean=[0.5], std=[0.5],
                 model_kwargs={"width": 4})
LABEL_MAP = {"cat": 0, "dog": 1, "eel": 2}


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    state_dict = build_model("small_cnn", 3, 1, width=4).state_dict()
    return ImageClassifier.from_state_dict(state_dict, SPEC, LABEL_MAP)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.jpg"):
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    return [paths[0], str(broken), paths[1], str(tmp_path / "missing.png")]


def test_spec_round_trips_through_a_dict():
    assert ModelSpec.from_dict(SPEC.to_dict()) == SPEC


def test_a_spec_written_before_load_size_and_eval_transforms_still_loads():
    old = {k: v for k, v in SPEC.to_dict().items() if k not in ("load_size", "eval_transforms")}
    spec = ModelSpec.from_dict(old)
    assert spec.decode_size == spec.image_size
    assert spec.eval_transforms == []


def test_inputs_are_prepared_exactly_as_the_test_split_was(tmp_path):
    """Decoded at load_size (JPEG draft, EXIF, resize), eval transforms, resize,
    normalization: the same floats as training's evaluation batches."""
    rng = np.random.default_rng(1)
    paths = []
    for name, (height, width) in (("small.png", (30, 40)), ("large.jpg", (300, 220))):
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    crop = [{"name": "CenterCrop", "kwargs": {"size": 14}}]
    spec = ModelSpec(model_name="small_cnn", channels=3, image_size=10, mean=[0.4, 0.5, 0.6],
                     std=[0.2, 0.25, 0.3], load_size=20, eval_transforms=crop)
    test_split = ImageManifestDataset(
        paths, [0, 1], channels=3, load_size=20, mean=spec.mean, std=spec.std,
        transform=image_transform(build_transforms([("CenterCrop", {"size": 14})], "t"), 10, 20),
    )
    expected, _ = test_split.__getitems__([0, 1])
    assert torch.equal(spec.load_batch(paths), expected)
    from_images = spec.preprocessor()([spec.decode_image(Image.open(p)) for p in paths[:1]])
    assert torch.equal(from_images, expected[:1])


def test_an_unknown_eval_transform_in_a_spec_names_its_key():
    spec = ModelSpec(model_name="small_cnn", channels=1, image_size=8, mean=[0.5], std=[0.5],
                     eval_transforms=[{"name": "CentreCrop", "kwargs": {"size": 4}}])
    with pytest.raises(ValueError, match=r"model_spec\.eval_transforms\[0\]\.name"):
        spec.preprocessor()


def test_spec_refuses_weights_of_another_architecture():
    other = build_model("small_cnn", 3, 1, width=8).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        SPEC.build_model(other, 3)


def test_paths_predicted_and_unreadable_files_reported_by_position(classifier, images):
    predictions, failures = classifier.predict_paths(images, top_k=2, batch_size=1)
    assert predictions.index.tolist() == [0, 2]
    assert predictions["path"].tolist() == [images[0], images[2]]
    assert set(predictions["label"]) <= set(LABEL_MAP)
    assert failures.index.tolist() == [1, 3]
    assert failures.loc[1, "error"] == "not an image file PIL can decode"
    assert failures.loc[3, "error"].startswith("FileNotFoundError")


def test_predictions_match_the_model_on_the_same_tensors(classifier, images):
    predictions, _ = classifier.predict_paths([images[0]], top_k=3)
    with torch.no_grad():
        expected = classifier.model(SPEC.load_batch([images[0]])).softmax(dim=1)[0]
    assert predictions["probability"].iloc[0] == pytest.approx(expected.max().item(), abs=1e-6)
    assert predictions["label"].iloc[0] == sorted(LABEL_MAP)[expected.argmax().item()]


def test_arrays_give_the_same_answer_as_the_files_they_came_from(classifier, images):
    from_path, _ = classifier.predict_paths([images[0]], top_k=3)
    pixels = np.asarray(Image.open(images[0]))
    from_array = classifier.predict_arrays([pixels], top_k=3)
    pd.testing.assert_frame_equal(from_path.drop(columns="path").reset_index(drop=True),
                                  from_array)


@pytest.mark.parametrize(("shape", "mode"),
                         [((9, 9), "L"), ((9, 9, 1), "L"), ((9, 9, 3), "RGB"), ((9, 9, 4), "RGBA")])
def test_image_arrays_of_any_channel_count_become_the_model_input(shape, mode):
    image = image_from_array(np.zeros(shape, dtype=np.uint8))
    assert image.mode == mode
    assert image.size == (9, 9)
    assert SPEC.decode_image(image).shape == (1, 8, 8)


def test_transparent_pixels_of_an_array_meet_the_background_files_get():
    """RGBA arrays are flattened as training flattens RGBA files, not by dropping alpha."""
    pixels = np.zeros((9, 9, 4), dtype=np.uint8)  # black and fully transparent
    from_array = SPEC.decode_image(image_from_array(pixels))
    assert from_array.min() == 255  # on a white background, as for files


@pytest.mark.parametrize(
    ("pixels", "message"),
    [(np.zeros((4, 4), dtype=np.float32), "uint8"),
     (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
     (np.zeros(4, dtype=np.uint8), "shape")],
)
def test_image_arrays_that_are_not_images_are_refused(pixels, message):
    with pytest.raises(ValueError, match=message):
        image_from_array(pixels)


def test_predictions_table_has_flat_top_k_columns_sorted_by_probability():
    probabilities = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    table = predictions_table(probabilities, ["cat", "dog", "eel"], top_k=5)
    assert list(table.columns) == [
        "label", "probability", "top1_label", "top1_probability", "top2_label",
        "top2_probability", "top3_label", "top3_probability",
    ]
    assert table["label"].tolist() == ["dog", "cat"]
    assert table.loc[0, ["top1_label", "top2_label", "top3_label"]].tolist() == [
        "dog", "eel", "cat"
    ]
    assert table["probability"].tolist() == pytest.approx([0.5, 0.6])


def test_image_files_keeps_images_at_any_depth():
    listing = pd.DataFrame({"relative_path": ["a.png", "x/y/b.JPG", ".hidden.png", "c.txt",
                                              ".git/d.png"]})
    listing["path"] = "/root/" + listing["relative_path"]
    assert image_files(listing)["relative_path"].tolist() == ["a.png", "x/y/b.JPG"]


def test_a_folder_of_nothing_but_broken_files_gives_an_empty_table(classifier, images):
    predictions, failures = classifier.predict_paths([images[1], images[3]], top_k=2)
    assert predictions.empty
    assert {"path", "label", "probability"} <= set(predictions.columns)
    assert len(failures) == 2
