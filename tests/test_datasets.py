"""The project's custom Kedro datasets, used directly as the catalog would."""

from __future__ import annotations

import time
import uuid

import fsspec
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError, Version

from kedro_torch.datasets import (
    ExportedProgramDataset,
    ImageFolderDataset,
    ImageStoreDataset,
    ImageTableDataset,
    TorchScriptDataset,
    TorchStateDictDataset,
)
from kedro_torch.pytorch.cache import ENTRY_COLUMNS, ImageStore


def state_dict(value: float) -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.full((2, 2), value), "fc.bias": torch.zeros(2)}


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


# --- ImageFolderDataset -----------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    for relative in ("cat/1.png", "cat/.hidden", "dog/sub/2.jpg", "readme.txt"):
        file = root / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(relative.encode())
    return root


def test_image_folder_lists_every_file_and_folder_with_path_and_relative_path(image_folder):
    (image_folder / "empty").mkdir()
    listing = ImageFolderDataset(path=str(image_folder)).load()
    assert list(listing.columns) == ["path", "relative_path", "is_dir"]
    # Every file, hidden ones included: choosing images is the pipeline's job.
    assert listing["relative_path"].tolist() == [
        "cat", "cat/.hidden", "cat/1.png", "dog", "dog/sub", "dog/sub/2.jpg", "empty",
        "readme.txt",
    ]
    assert listing["is_dir"].tolist() == [True, False, False, True, True, False, True, False]
    files = listing[~listing["is_dir"]]
    for path, relative in zip(files["path"], files["relative_path"], strict=True):
        with fsspec.open(path, "rb") as file:
            assert file.read() == relative.encode()


def test_image_folder_accepts_a_relative_path(image_folder, monkeypatch):
    monkeypatch.chdir(image_folder.parent)
    listing = ImageFolderDataset(path=image_folder.name).load()
    assert "cat/1.png" in listing["relative_path"].tolist()
    assert listing["path"][0] == str(image_folder / "cat")


def test_image_folder_accepts_a_trailing_slash(image_folder):
    listing = ImageFolderDataset(path=f"{image_folder}/").load()
    assert "cat/1.png" in listing["relative_path"].tolist()


def test_image_folder_paths_keep_their_protocol():
    """On another filesystem the listed paths are URLs fsspec can open."""
    root = f"/kedro-torch-test-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    memory.pipe(f"{root}/a/x.png", b"x")
    try:
        listing = ImageFolderDataset(path=f"memory://{root}").load()
        assert listing["relative_path"].tolist() == ["a", "a/x.png"]
        assert listing["path"].tolist() == [f"memory://{root}/a", f"memory://{root}/a/x.png"]
        with fsspec.open(listing["path"][1], "rb") as file:
            assert file.read() == b"x"
    finally:
        memory.rm(root, recursive=True)


def test_image_folder_missing_folder_raises(tmp_path):
    dataset = ImageFolderDataset(path=str(tmp_path / "nowhere"))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        dataset.load()


def test_image_folder_that_is_a_file_raises(tmp_path):
    file = tmp_path / "file.png"
    file.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a folder"):
        ImageFolderDataset(path=str(file)).load()


def test_image_folder_is_read_only(image_folder):
    dataset = ImageFolderDataset(path=str(image_folder))
    assert dataset.exists()
    listing = dataset.load()
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(listing)


# --- ImageTableDataset -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_image_table_loads_as_text_with_its_folder(tmp_path, suffix):
    frame = pd.DataFrame({"path": ["a/1.png", "b/2.png"], "label": ["007", "8"],
                          "group": ["g1", "g2"]})
    file = tmp_path / "sets" / f"images{suffix}"
    file.parent.mkdir()
    if suffix == ".csv":
        frame.to_csv(file, index=False)
    else:
        frame.to_parquet(file)
    table = ImageTableDataset(filepath=str(file)).load()
    assert table.folder == str(tmp_path / "sets")
    assert table.frame["label"].tolist() == ["007", "8"]  # not read as numbers
    assert table.frame["group"].tolist() == ["g1", "g2"]


def test_image_table_without_a_filepath_loads_none(tmp_path):
    assert ImageTableDataset(filepath=None).load() is None
    with pytest.raises(DatasetError, match="does not exist"):
        ImageTableDataset(filepath=str(tmp_path / "absent.csv")).load()


# --- ImageStoreDataset ---------------------------------------------------------------


def test_image_store_dataset_loads_what_it_saved(tmp_path):
    dataset = ImageStoreDataset(path=str(tmp_path / "cache"))
    empty = dataset.load()
    assert not dataset.exists()
    assert empty.image_shape is None
    store = empty.empty_like((1, 2, 2))
    name, array = store.new_chunk(1)
    array[0] = 9
    entries = pd.DataFrame({c: [None] for c in ENTRY_COLUMNS} | {"content_hash": ["h"],
                           "chunk": [name], "row": [0]})
    dataset.save(store.with_entries(entries))
    assert dataset.exists()
    loaded = dataset.load()
    chunks, rows = loaded.locate(["h"])
    assert loaded.image(int(chunks[0]), int(rows[0])).tolist() == [[[9, 9], [9, 9]]]


def test_image_store_dataset_refuses_other_places(tmp_path):
    with pytest.raises(DatasetError, match="must be a local folder"):
        ImageStoreDataset(path="s3://bucket/cache")
    with pytest.raises(DatasetError, match="belongs to"):
        ImageStoreDataset(path=str(tmp_path / "a")).save(ImageStore((1, 2, 2), str(tmp_path)))


# --- TorchStateDictDataset ----------------------------------------------------------


def test_state_dict_round_trip_creates_folders(tmp_path):
    path = tmp_path / "models" / "deep" / "weights.pt"
    dataset = TorchStateDictDataset(filepath=str(path))
    assert not dataset.exists()
    dataset.save(state_dict(1.5))
    assert dataset.exists()
    assert_same_tensors(dataset.load(), state_dict(1.5))
    assert [p.name for p in path.parent.iterdir()] == ["weights.pt"]


def test_state_dict_loads_from_a_checkpoint_dict(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": state_dict(2.0), "epoch": 4}, path)
    assert_same_tensors(TorchStateDictDataset(filepath=str(path)).load(), state_dict(2.0))


def test_state_dict_missing_file_raises(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        TorchStateDictDataset(filepath=str(tmp_path / "absent.pt")).load()


def test_state_dict_refuses_a_file_needing_full_unpickling(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"weight": torch.ones(1), "object": DatasetError("not a tensor")}, path)
    with pytest.raises(DatasetError, match="refused to load"):
        TorchStateDictDataset(filepath=str(path)).load()


def test_versioned_state_dict_saves_timestamped_versions_and_loads_the_latest(tmp_path):
    path = tmp_path / "model.pt"
    dataset = TorchStateDictDataset(filepath=str(path), version=Version(None, None))
    dataset.save(state_dict(1.0))
    time.sleep(0.01)  # versions are millisecond timestamps
    dataset.save(state_dict(2.0))

    versions = sorted(p.name for p in path.iterdir())
    assert len(versions) == 2
    assert all((path / version / "model.pt").is_file() for version in versions)
    assert_same_tensors(dataset.load(), state_dict(2.0))
    # A fresh dataset, as in the next run, also finds the latest version.
    fresh = TorchStateDictDataset(filepath=str(path), version=Version(None, None))
    assert_same_tensors(fresh.load(), state_dict(2.0))
    # A pinned load version still reads the older one.
    pinned = TorchStateDictDataset(filepath=str(path), version=Version(versions[0], None))
    assert_same_tensors(pinned.load(), state_dict(1.0))


def test_versioned_state_dict_without_any_version_does_not_exist(tmp_path):
    dataset = TorchStateDictDataset(filepath=str(tmp_path / "m.pt"), version=Version(None, None))
    assert not dataset.exists()


@pytest.mark.parametrize("filepath", [None, ""])
def test_state_dict_without_filepath_loads_none_and_refuses_to_save(filepath):
    dataset = TorchStateDictDataset(filepath=filepath)
    assert dataset.load() is None
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="has no filepath"):
        dataset.save(state_dict(1.0))


# --- TorchScriptDataset, ExportedProgramDataset -------------------------------------


def test_exports_round_trip_as_versions_leaving_no_temporary_file(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
    example = torch.randn(4, 3)
    cases = [
        (TorchScriptDataset, "model.pt", torch.jit.script(model), lambda loaded: loaded),
        (ExportedProgramDataset, "model.pt2",
         torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("b")},)),
         lambda loaded: loaded.module()),
    ]
    for cls, name, exported, as_callable in cases:
        path = tmp_path / name
        dataset = cls(filepath=str(path), version=Version(None, None))
        assert not dataset.exists()
        dataset.save(exported)
        assert dataset.exists()
        (version,) = path.iterdir()
        assert [f.name for f in version.iterdir()] == [name]
        torch.testing.assert_close(as_callable(dataset.load())(example), model(example))
