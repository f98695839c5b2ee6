"""The decoded-image store: in memory, and in a folder that later runs reopen."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from kedro_torch.pytorch.cache import ENTRY_COLUMNS, ImageStore, plan, to_save


def filled(store: ImageStore, hashes: list[str]) -> ImageStore:
    """``store`` plus one new chunk holding image i filled with the value i."""
    name, array = store.new_chunk(len(hashes))
    for row in range(len(hashes)):
        array[row] = row
    entries = pd.DataFrame(
        {column: [None] * len(hashes) for column in ENTRY_COLUMNS}
        | {"content_hash": hashes, "fingerprint": [f"f-{h}" for h in hashes],
           "chunk": name, "row": list(range(len(hashes)))}
    )
    return store.with_entries(pd.concat([store.entries, entries], ignore_index=True))


def test_memory_store_finds_images_by_content_hash():
    store = filled(ImageStore((1, 2, 2)), ["a", "b", "c"])
    assert len(store) == 3
    chunks, rows = store.locate(["c", "zz", "a"])
    assert chunks[1] == -1
    assert store.image(int(chunks[0]), int(rows[0])).tolist() == [[[2, 2], [2, 2]]]
    assert store.image(int(chunks[2]), int(rows[2])).dtype == torch.uint8
    with pytest.raises(ValueError, match="lives in memory"):
        store.save()


def test_folder_store_round_trips_and_deletes_unused_chunks(tmp_path):
    folder = str(tmp_path / "cache")
    assert ImageStore.open(folder).image_shape is None
    first = filled(ImageStore((3, 4, 4), folder), ["a", "b"])
    first.save()
    second = filled(ImageStore.open(folder), ["c"])
    assert second.image_shape == (3, 4, 4)
    # Keep b and c only: the first chunk still holds b, so it stays.
    second = second.with_entries(second.entries[second.entries["content_hash"] != "a"])
    second.save()
    assert len(list((tmp_path / "cache" / "chunks").glob("*.npy"))) == 2
    reopened = ImageStore.open(folder)
    chunks, rows = reopened.locate(["b", "c", "a"])
    assert reopened.image(int(chunks[0]), int(rows[0]))[0, 0, 0] == 1
    assert reopened.image(int(chunks[1]), int(rows[1]))[0, 0, 0] == 0
    assert chunks[2] == -1
    # Dropping b too leaves the first chunk unused: saving deletes its file.
    reopened.with_entries(reopened.entries[reopened.entries["content_hash"] == "c"]).save()
    assert len(list((tmp_path / "cache" / "chunks").glob("*.npy"))) == 1


def test_checked_returns_earlier_results_by_fingerprint(tmp_path):
    store = filled(ImageStore((1, 2, 2), str(tmp_path)), ["a", "b"])
    earlier = store.checked(["f-b", "f-new"])
    assert earlier["content_hash"].tolist()[0] == "b"
    assert pd.isna(earlier["content_hash"].tolist()[1])


def test_pickled_folder_store_carries_no_mapped_images(tmp_path):
    store = filled(ImageStore((3, 64, 64), str(tmp_path)), ["a", "b", "c"])
    store.save()
    reopened = ImageStore.open(str(tmp_path))
    chunks, rows = reopened.locate(["a", "b", "c"])
    reopened.image(int(chunks[0]), int(rows[0]))  # maps the chunk file
    copy = pickle.loads(pickle.dumps(reopened))
    assert len(pickle.dumps(reopened)) < 3 * 64 * 64  # less than one image: no pixels
    np.testing.assert_array_equal(copy.image(int(chunks[2]), int(rows[2])).numpy(),
                                  np.full((3, 64, 64), 2, np.uint8))


# --- what data.cache means -------------------------------------------------------------


def test_disk_reuses_the_folders_store_and_starts_afresh_at_another_image_shape(tmp_path):
    on_disk = filled(ImageStore((1, 2, 2), str(tmp_path)), ["a", "b"])
    same = plan("disk", (1, 2, 2), 2, on_disk)
    assert same.store is on_disk and same.keep_pixels and same.use_fingerprints
    other = plan("disk", (3, 4, 4), 2, on_disk)
    assert other.store.image_shape == (3, 4, 4) and len(other.store) == 0
    assert other.store.folder == str(tmp_path)
    assert to_save("disk", other.store, on_disk) is other.store


@pytest.mark.parametrize("mode", ["memory", "none"])
def test_memory_and_none_check_into_memory_and_leave_the_folder_as_it_was(tmp_path, mode):
    on_disk = ImageStore.open(str(tmp_path))
    chosen = plan(mode, (1, 2, 2), 10, on_disk)
    assert chosen.store.folder is None and chosen.store is not on_disk
    assert chosen.keep_pixels == (mode == "memory") and not chosen.use_fingerprints
    assert to_save(mode, chosen.store, on_disk) is on_disk


def test_memory_refuses_more_images_than_half_the_machines_memory():
    with pytest.raises(ValueError, match=r"^data\.cache: memory would hold 10000000000 images"):
        plan("memory", (3, 224, 224), 10**10, None)


def test_disk_without_a_folder_says_what_it_needs():
    with pytest.raises(ValueError, match=r"^data\.cache: disk needs a folder"):
        plan("disk", (1, 2, 2), 1, ImageStore((1, 2, 2)))


# --- runs at once -------------------------------------------------------------------------


def test_two_runs_saving_one_folder_keep_each_others_images(tmp_path):
    """B saves after A, from the index both opened: A's images stay in it."""
    folder = str(tmp_path / "cache")
    filled(ImageStore((1, 2, 2), folder), ["old"]).save()
    run_a, run_b = ImageStore.open(folder), ImageStore.open(folder)
    filled(run_a, ["a"]).save()
    filled(run_b, ["b"]).save()
    saved = ImageStore.open(folder)
    assert sorted(saved.entries["content_hash"]) == ["a", "b", "old"]
    chunks, rows = saved.locate(["a", "b", "old"])
    for chunk, row in zip(chunks, rows, strict=True):
        assert saved.image(int(chunk), int(row)).shape == (1, 2, 2)


def test_chunks_another_process_may_read_are_kept_until_it_ends(tmp_path):
    folder = tmp_path / "cache"
    filled(ImageStore((1, 2, 2), str(folder)), ["a"]).save()
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom kedro_torch.pytorch.cache import "
         f"ImageStore\nImageStore.open({str(folder)!r})\nprint('open', flush=True)\n"
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout.readline() == "open\n"
        store = ImageStore.open(str(folder))
        store.with_entries(store.entries.iloc[:0]).save()  # "a" no longer wanted here
        assert len(list((folder / "chunks").glob("*.npy"))) == 1  # the reader may need it
    finally:
        reader.communicate("", timeout=30)
    store.with_entries(store.entries.iloc[:0]).save()
    assert list((folder / "chunks").glob("*.npy")) == []
