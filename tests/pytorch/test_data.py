"""Manifests from folders and tables, checking every file, splits, statistics, the report."""

from __future__ import annotations

import os
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from kedro_torch.datasets import ImageFolderDataset
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.data import (
    HASH_RULE,
    ImageTable,
    assign_splits,
    check_images,
    check_split,
    encode_labels,
    manifest_from_listing,
    manifest_from_table,
    normalization_from_sums,
    quality_report,
    set_aside_bad_files,
    split_keys,
)
from tests.image_files import (
    image_folder,
    write_empty_file,
    write_image,
    write_text_as_jpeg,
    write_truncated_jpeg,
)

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def listing(relative_paths: list[str], folders: tuple[str, ...] = ()) -> pd.DataFrame:
    """A listing as ImageFolderDataset loads it: openable path, relative path, is_dir."""
    entries = [(p, False) for p in relative_paths] + [(f, True) for f in folders]
    return pd.DataFrame(
        {"path": [f"/root/{p}" for p, _ in entries],
         "relative_path": [p for p, _ in entries],
         "is_dir": [d for _, d in entries]}
    )


# --- manifests from a folder --------------------------------------------------------


def test_manifest_keeps_images_in_class_folders_and_labels_them(caplog):
    with caplog.at_level("INFO"):
        manifest = manifest_from_listing(
            listing(
                [
                    "dog/b.png",
                    "cat/a.png",
                    "cat/.hidden.png",  # hidden file
                    ".DS_Store",  # hidden, root level
                    "cat/.ipynb_checkpoints/c.png",  # inside a hidden folder
                    "cat/notes.txt",  # not an image
                    "dog/archive.zip",  # not an image
                    "root.png",  # image outside any class folder
                    "dog/UPPER.PNG",  # extensions match whatever their case
                    "dog/mixed.JpEg",
                    "bird/nested/deep.webp",  # labelled by the top-level folder
                    "sea lion/x.tif",  # spaces and non-ASCII letters in class names
                    "café/y.TIFF",
                    "猫/z.bmp",
                    "猫/w.gif",
                ],
                folders=("bird", "cat", "dog", "sea lion", "café", "猫", ".git"),
            )
        )
    assert list(manifest.columns) == ["path", "relative_path", "label"]
    # Sorted by relative path, so the manifest does not depend on listing order.
    assert manifest["relative_path"].tolist() == [
        "bird/nested/deep.webp", "café/y.TIFF", "cat/a.png", "dog/UPPER.PNG", "dog/b.png",
        "dog/mixed.JpEg", "sea lion/x.tif", "猫/w.gif", "猫/z.bmp",
    ]
    assert manifest["label"].tolist() == [
        "bird", "café", "cat", "dog", "dog", "dog", "sea lion", "猫", "猫",
    ]
    assert manifest["path"].tolist() == [f"/root/{p}" for p in manifest["relative_path"]]
    assert "Skipped files: 3 hidden, 2 not an image, 1 outside a class folder" in caplog.text


def test_manifest_does_not_depend_on_listing_order():
    paths = [f"c{i % 3}/img{i}.png" for i in range(12)]
    shuffled = paths.copy()
    random.Random(0).shuffle(shuffled)
    pd.testing.assert_frame_equal(
        manifest_from_listing(listing(paths)), manifest_from_listing(listing(shuffled))
    )


@pytest.mark.parametrize(
    "paths", [["cat/readme.md", "dog/.x.png", "top.png"], ["a/b.txt"]]
)
def test_manifest_without_any_image_raises(paths):
    with pytest.raises(ValueError, match="no images found"):
        manifest_from_listing(listing(paths))


def test_empty_class_folders_stop_the_run_naming_them():
    with pytest.raises(ValueError, match=r"class folders without any image: 'empty', 'notes'"):
        manifest_from_listing(
            listing(["cat/a.png", "notes/todo.txt", "empty/.keep"],
                    folders=("cat", "empty", "notes", ".cache"))
        )


def test_an_empty_class_folder_on_disk_is_found(tmp_path):
    image_folder(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="'dog'"):
        manifest_from_listing(ImageFolderDataset(path=str(tmp_path)).load())


# --- manifests from a table ------------------------------------------------------------


def test_table_paths_start_from_its_folder_and_extra_columns_are_kept():
    table = pd.DataFrame(
        {
            "file": ["b/2.png", "/abs/1.jpg", "s3://bucket/3.png", "./c/../d/4.png"],
            "class": [7, 7, "zebra", "7"],
            "patient": ["p1", "p2", "p1", "p3"],
        }
    )
    manifest = manifest_from_table(ImageTable(table, "/data/set"), "file", "class")
    by_written = manifest.set_index("relative_path")
    assert by_written["path"].to_dict() == {
        "b/2.png": "/data/set/b/2.png",
        "/abs/1.jpg": "/abs/1.jpg",
        "s3://bucket/3.png": "s3://bucket/3.png",
        "./c/../d/4.png": "/data/set/d/4.png",
    }
    assert by_written["label"].to_dict() == {
        "b/2.png": "7", "/abs/1.jpg": "7", "s3://bucket/3.png": "zebra", "./c/../d/4.png": "7",
    }
    assert by_written["patient"].to_dict()["b/2.png"] == "p1"
    assert list(manifest.columns) == ["path", "relative_path", "label", "patient"]


def test_table_relative_paths_under_a_url_folder_keep_the_protocol():
    table = pd.DataFrame({"path": ["a/1.png"], "label": ["x"]})
    manifest = manifest_from_table(ImageTable(table, "s3://bucket/set"), "path", "label")
    assert manifest["path"].tolist() == ["s3://bucket/set/a/1.png"]


def test_table_without_the_configured_column_names_the_yaml_key():
    table = pd.DataFrame({"path": ["a.png"], "label": ["x"]})
    with pytest.raises(ValueError, match=r"data\.manifest\.label_column.*'class'"):
        manifest_from_table(ImageTable(table, "/d"), "path", "class")


def test_table_rows_without_a_label_stop_the_run_naming_them():
    table = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", None, " "]})
    with pytest.raises(ValueError, match=r"2 manifest rows have no label.*'b\.png', 'c\.png'"):
        manifest_from_table(ImageTable(table, "/d"), "path", "label")


def test_table_columns_may_not_clash_with_the_pipelines_own():
    table = pd.DataFrame({"file": ["a.png"], "label": ["x"], "split": ["test"]})
    with pytest.raises(ValueError, match="'split' clash"):
        manifest_from_table(ImageTable(table, "/d"), "file", "label")


# --- checking every file ------------------------------------------------------------


@pytest.fixture
def mixed_files(tmp_path):
    """Three good images, a truncated JPEG, an empty file and a text file named .jpg."""
    good = [str(write_image(tmp_path / f"good{i}.png", i)) for i in range(3)]
    bad = [
        str(write_truncated_jpeg(tmp_path / "cut.jpg")),
        str(write_empty_file(tmp_path / "empty.png")),
        str(write_text_as_jpeg(tmp_path / "note.jpg")),
    ]
    return good, bad


def test_check_keeps_pixels_of_good_files_and_reasons_for_bad_ones(mixed_files):
    good, bad = mixed_files
    entries, store = check_images([*good, *bad], ImageStore((3, 8, 8)), keep_pixels=True)
    assert entries["reason"].isna().tolist() == [True] * 3 + [False] * 3
    assert entries["reason"][3].startswith("cannot decode: image file is truncated")
    assert entries["reason"][4] == "empty file (0 bytes)"
    assert entries["reason"][5].startswith("not an image")
    assert len(store) == 3
    chunks, rows = store.locate(entries["content_hash"][:3])
    first = store.image(int(chunks[0]), int(rows[0]))
    assert first.shape == (3, 8, 8)
    assert (store.locate(entries["content_hash"][3:])[0] == -1).all()


def test_check_without_keeping_pixels_stores_nothing(mixed_files):
    good, _ = mixed_files
    entries, store = check_images(good, ImageStore((3, 8, 8)), keep_pixels=False)
    assert entries["reason"].isna().all()
    assert entries["pixel_sum"].notna().all()
    assert len(store) == 0


def test_check_in_worker_processes_gives_the_same_rows_in_order(mixed_files):
    good, bad = mixed_files
    paths = [*bad, *good]
    alone, _ = check_images(paths, ImageStore((3, 8, 8)), keep_pixels=False)
    shared, _ = check_images(paths, ImageStore((3, 8, 8)), keep_pixels=False, num_workers=2)
    pd.testing.assert_series_equal(alone["content_hash"], shared["content_hash"])
    pd.testing.assert_series_equal(alone["reason"], shared["reason"])


def test_fingerprints_skip_unchanged_files_and_redo_changed_and_added_ones(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", i)) for i in range(4)]
    first, store = check_images(paths, ImageStore((3, 8, 8), str(tmp_path / "cache")),
                                keep_pixels=True, use_fingerprints=True)
    store.save()
    write_image(tmp_path / "2.png", 100)  # changed content
    os.utime(paths[2], ns=(0, 0))  # and a different modification time, as any edit makes
    paths.append(str(write_image(tmp_path / "new.png", 200)))
    second, store = check_images(paths, ImageStore.open(str(tmp_path / "cache")),
                                 keep_pixels=True, use_fingerprints=True)
    old_chunk = first["chunk"][0]
    assert second["chunk"].tolist()[:2] + second["chunk"].tolist()[3:4] == [old_chunk] * 3
    assert second["chunk"][2] == second["chunk"][4] != old_chunk
    assert second["content_hash"][2] != first["content_hash"][2]
    assert (store.locate(second["content_hash"])[0] >= 0).all()


def test_missing_files_stop_the_run_naming_them(tmp_path):
    paths = [str(write_image(tmp_path / "a.png", 0)), str(tmp_path / "gone.png")]
    entries, _ = check_images(paths, ImageStore((3, 8, 8)), keep_pixels=False)
    manifest = pd.DataFrame({"path": paths, "relative_path": ["a.png", "gone.png"]})
    with pytest.raises(ValueError, match=r"1 listed images have no file behind them: '.*gone"):
        set_aside_bad_files(pd.concat([manifest, entries], axis=1), 0.5)


def checked_manifest(reasons: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {"path": [f"/d/{i}.png" for i in range(len(reasons))],
         "relative_path": [f"{i}.png" for i in range(len(reasons))],
         "reason": reasons, "missing": False}
    )


def test_bad_files_under_the_limit_are_set_aside(caplog):
    manifest = checked_manifest([None] * 98 + ["empty file (0 bytes)", "not an image"])
    with caplog.at_level("WARNING"):
        usable, bad = set_aside_bad_files(manifest, 0.02)
    assert len(usable) == 98
    assert bad["relative_path"].tolist() == ["98.png", "99.png"]
    assert "Set aside 2 unreadable files" in caplog.text


def test_bad_files_over_the_limit_stop_the_run_naming_them():
    manifest = checked_manifest([None] * 97 + ["empty file (0 bytes)"] * 3)
    with pytest.raises(ValueError) as error:
        set_aside_bad_files(manifest, 0.02)
    assert "3 of 100 images (3.0%) cannot be read" in str(error.value)
    assert "data.max_bad_fraction = 0.02" in str(error.value)
    assert "'97.png (empty file (0 bytes))'" in str(error.value)


# --- labels and splits -----------------------------------------------------------------


def test_encode_labels_in_sorted_order():
    assert encode_labels(["zebra", "ant", "moose", "ant"]) == {"ant": 0, "moose": 1, "zebra": 2}
    assert encode_labels(["3", "10", "2"]) == {"10": 0, "2": 1, "3": 2}  # string order


def keys_and_labels(n_per_class: int, classes: str = "abc") -> tuple[list[str], list[str]]:
    keys = [f"file:{c}{i:04d}" for c in classes for i in range(n_per_class)]
    return keys, [key[5] for key in keys]


def test_split_is_deterministic_for_a_seed_and_depends_on_it():
    keys, _ = keys_and_labels(20)
    first = assign_splits(keys, FRACTIONS, seed=1)
    assert first.tolist() == assign_splits(keys, FRACTIONS, seed=1).tolist()
    assert first.tolist() != assign_splits(keys, FRACTIONS, seed=2).tolist()


def test_split_does_not_depend_on_input_order():
    keys, _ = keys_and_labels(20)
    by_key = dict(zip(keys, assign_splits(keys, FRACTIONS, seed=5), strict=True))
    shuffled = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    assert dict(zip(shuffled, assign_splits(shuffled, FRACTIONS, 5), strict=True)) == by_key


def test_split_gives_every_class_its_proportions():
    keys, labels = keys_and_labels(400)
    counts = Counter(zip(labels, assign_splits(keys, FRACTIONS, seed=0), strict=True))
    for label in "abc":
        for split, fraction in FRACTIONS.items():
            assert abs(counts[label, split] / 400 - fraction) < 0.06, (label, split)


def test_split_is_stable_when_files_are_added():
    keys, _ = keys_and_labels(100)
    before = dict(zip(keys, assign_splits(keys, FRACTIONS, seed=3), strict=True))
    grown = keys + [f"file:new{i}" for i in range(len(keys) // 10)]
    after = dict(zip(grown, assign_splits(grown, FRACTIONS, seed=3), strict=True))
    assert {key: after[key] for key in keys} == before


def test_split_without_val_fraction_has_no_val_rows():
    keys, _ = keys_and_labels(50)
    assignment = assign_splits(keys, {"train": 0.8, "val": 0.0, "test": 0.2}, 0)
    assert set(assignment) == {"train", "test"}


def test_duplicate_files_share_a_key_and_so_a_split():
    keys = split_keys(["h1", "h2", "h1", "h3"])
    assert keys[0] == keys[2] != keys[1]


def test_groups_share_a_key_and_files_shared_between_groups_join_them():
    hashes = ["h1", "h2", "h3", "h4", "h5", "h3"]
    groups = ["p1", "p1", "p2", "p3", None, "p4"]
    keys = split_keys(hashes, groups)
    assert keys[0] == keys[1] == "group:p1"
    assert keys[2] == keys[5] == "group:p2"  # p4 holds a copy of a p2 file: joined
    assert keys[3] == "group:p3"
    assert keys[4] == "file:h5"  # no group: a group of its own


def test_a_class_too_small_for_the_split_stops_the_run_naming_it():
    labels = ["a"] * 20 + ["tiny"] * 2 + ["single"]
    splits = ["train"] * len(labels)
    with pytest.raises(ValueError) as error:
        check_split(labels, splits, FRACTIONS)
    assert "at least 7 each" in str(error.value)
    assert "'single' (1), 'tiny' (2)" in str(error.value)


def test_a_class_without_training_images_stops_the_run():
    labels = ["a"] * 10 + ["b"] * 10
    splits = ["train"] * 10 + ["val"] * 5 + ["test"] * 5
    with pytest.raises(ValueError, match=r"classes without any training image.*'b'"):
        check_split(labels, splits, FRACTIONS)


def test_a_class_that_missed_val_by_chance_is_reported(caplog):
    labels = ["a"] * 10 + ["b"] * 10
    splits = ["train"] * 8 + ["val", "test"] + ["train"] * 9 + ["test"]
    with caplog.at_level("WARNING"):
        assert check_split(labels, splits, FRACTIONS) == {"val": ["b"]}
    assert "No val images for classes b" in caplog.text


# --- statistics and the report -----------------------------------------------------------


def test_normalization_from_sums_matches_numpy():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(5, 3, 4, 4)).astype(np.int64)
    flat = batch.reshape(5, 3, -1)
    stats = normalization_from_sums(list(flat.sum(-1)), list((flat**2).sum(-1)), 16)
    scaled = batch / 255
    np.testing.assert_allclose(stats["mean"], scaled.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(stats["std"], scaled.std(axis=(0, 2, 3)), atol=1e-6)


def test_report_lists_bad_files_and_counts_duplicates():
    checked = pd.DataFrame({"mode": ["RGB", "RGB", "L", None, "P"]})
    bad = pd.DataFrame({"path": ["/d/x.jpg"], "relative_path": ["x.jpg"], "label": ["a"],
                        "reason": ["empty file (0 bytes)"]})
    model_input = pd.DataFrame(
        {"relative_path": ["a/1.png", "b/1.png", "a/2.png", "a/3.png"],
         "label": ["a", "b", "a", "a"], "content_hash": ["h1", "h1", "h2", "h2"],
         "split": ["train", "train", "test", "test"]}
    )
    report = quality_report(checked, bad, model_input, {"val": ["b"]}, 0.01,
                            source={"type": "folder"}, split_rule=HASH_RULE)
    assert report["bad_files"] == [{"path": "/d/x.jpg", "relative_path": "x.jpg",
                                    "label": "a", "reason": "empty file (0 bytes)"}]
    assert report["bad_fraction"] == 0.2
    assert report["duplicates"]["files"] == 4
    assert report["duplicates"]["extra_copies"] == 2
    assert report["duplicates"]["sets_with_conflicting_labels"] == 1
    assert report["duplicates"]["sets"][0] == {"paths": ["a/1.png", "b/1.png"],
                                               "labels": ["a", "b"]}
    assert report["image_modes"] == {"L": 1, "P": 1, "RGB": 2}
    assert report["images_per_split"] == {"train": 2, "val": 0, "test": 2}
    assert report["classes_missing_from_split"] == {"val": ["b"]}
