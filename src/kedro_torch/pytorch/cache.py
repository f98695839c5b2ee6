"""Decoded, resized uint8 images kept so that later epochs, and later runs, skip decoding.

An :class:`ImageStore` holds images of one shape ``(channels, size, size)`` in
*chunks*: tensors in memory, or ``.npy`` files in a local folder that are memory-
mapped on first use. Next to them, ``entries`` records what checking each file found
(its content hash, the reason it failed, pixel sums), keyed by a fingerprint of the
file's path, size and modification time, so an unchanged file is neither read nor
decoded again, and a changed or added file is.

Folder layout: ``index.parquet`` (the entries, with the image shape in its schema
metadata) and ``chunks/<name>.npy``. Each run that decodes new files adds one chunk;
saving the index deletes the chunks no entry refers to any more.

Runs at once may share a folder. Each process that reads or adds chunks holds a
shared lock on ``.in-use`` while it lives; saving merges the index under a lock of
its own, keeping what other runs added since this one opened it, and deletes
chunks only when no other process holds ``.in-use``, so no run loses an image it
reads.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kedro_torch.pytorch import locks

ENTRY_COLUMNS = (
    "fingerprint", "content_hash", "reason", "mode", "pixel_sum", "pixel_sumsq", "chunk", "row",
)
INDEX_FILE = "index.parquet"
IN_USE_FILE = ".in-use"
INDEX_LOCK_FILE = ".index.lock"
SHAPE_KEY = b"image_shape"


def fits_in_memory(count: int, image_shape: tuple[int, int, int]) -> bool:
    """Whether ``count`` uint8 images take at most half of this machine's memory
    (True where the machine does not say how much it has)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return True
    return count * math.prod(image_shape) <= total / 2


class CachePlan(NamedTuple):
    """Where checking the files puts what it decodes, and what it may skip."""

    store: ImageStore  # receives this run's decoded images and check results
    keep_pixels: bool  # keep the decoded images (else only the check results)
    use_fingerprints: bool  # skip files the store already checked, unchanged


def plan(mode: str, image_shape: tuple[int, int, int], count: int,
         on_disk: ImageStore | None, key: str = "data.cache") -> CachePlan:
    """What each ``data.cache`` mode means; the only place that branches on it.

    ``none`` keeps nothing decoded; ``memory`` keeps this run's images in memory,
    if they take at most half of it; ``disk`` adds them to the store ``on_disk``
    (started afresh when its image shape differs) and reuses what it already holds.
    """
    if mode == "disk":
        if on_disk is None or on_disk.folder is None:
            raise ValueError(f"{key}: disk needs a folder to keep the images in; pass the "
                             "store ImageStore.open(folder) returns")
        store = on_disk if on_disk.image_shape == image_shape else on_disk.empty_like(image_shape)
        return CachePlan(store, keep_pixels=True, use_fingerprints=True)
    if mode == "memory" and not fits_in_memory(count, image_shape):
        raise ValueError(
            f"{key}: memory would hold {count} images of shape {image_shape}, more than half "
            "of this machine's memory; use data.cache: disk or none"
        )
    return CachePlan(ImageStore(image_shape), keep_pixels=mode == "memory",
                     use_fingerprints=False)


def to_save(mode: str, checked: ImageStore, on_disk: ImageStore | None) -> ImageStore | None:
    """The on-disk store after a run: with this run's images under ``disk``, else as it was."""
    return checked if mode == "disk" else on_disk


class ImageStore:
    """Images found by content hash; check results found by file fingerprint.

    Pickling keeps chunk tensors (torch shares them with DataLoader workers) and
    chunk file names, never mapped arrays: every process maps the files itself, so
    workers started by spawn or forkserver receive no copy of the images.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None,
        folder: str | None = None,
        entries: pd.DataFrame | None = None,
        memory_chunks: dict[str, torch.Tensor] | None = None,
        opened: frozenset[str] = frozenset(),
    ):
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.folder = folder
        self.entries = (
            entries.reset_index(drop=True) if entries is not None
            else pd.DataFrame({column: [] for column in ENTRY_COLUMNS})
        )
        self._memory = dict(memory_chunks or {})
        self._mapped: dict[str, np.ndarray] = {}
        self._names = sorted(set(self.entries["chunk"].dropna()))
        self._opened = opened  # the fingerprints the folder's index held when opened

    # --- reading and writing a folder --------------------------------------------

    @classmethod
    def open(cls, folder: str) -> ImageStore:
        """The store saved in ``folder``, or an empty one bound to it."""
        index = Path(folder) / INDEX_FILE
        if not index.is_file():
            return cls(None, folder)
        locks.share(Path(folder) / IN_USE_FILE)
        table = pq.read_table(index)
        shape = tuple(int(v) for v in table.schema.metadata[SHAPE_KEY].decode().split(","))
        entries = table.to_pandas()
        return cls(shape, folder, entries, opened=frozenset(entries["fingerprint"].dropna()))

    def save(self) -> None:
        """Write the index atomically, then delete the chunk files nothing refers to.

        A store that never held anything (no image shape yet) leaves the folder alone.
        """
        if self.folder is None:
            raise ValueError("this ImageStore lives in memory; it has no folder to save to")
        if self.image_shape is None:
            return
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        with locks.exclusive(folder / INDEX_LOCK_FILE):
            entries = pd.concat([self.entries, self._added_by_others()], ignore_index=True)
            table = pa.Table.from_pandas(entries, preserve_index=False)
            shape = ",".join(str(v) for v in self.image_shape)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   SHAPE_KEY: shape})
            temporary = folder / f".{INDEX_FILE}.{uuid.uuid4().hex}"
            pq.write_table(table, temporary)
            os.replace(temporary, folder / INDEX_FILE)
            if locks.alone(folder / IN_USE_FILE):
                referenced = set(entries["chunk"].dropna())
                for chunk in (folder / "chunks").glob("*.npy"):
                    if chunk.stem not in referenced:
                        chunk.unlink(missing_ok=True)

    def _added_by_others(self) -> pd.DataFrame:
        """Entries another run saved to the folder since this store was opened."""
        saved = ImageStore.open(self.folder)
        if saved.image_shape != self.image_shape:
            return saved.entries.iloc[:0]
        fingerprints = saved.entries["fingerprint"]
        return saved.entries[~fingerprints.isin(self._opened)
                             & ~fingerprints.isin(self.entries["fingerprint"])]

    # --- building -----------------------------------------------------------------

    def empty_like(self, image_shape: tuple[int, int, int]) -> ImageStore:
        """A store for another image shape, in the same place (memory or folder)."""
        return ImageStore(image_shape, self.folder)

    def new_chunk(self, rows: int) -> tuple[str, np.ndarray]:
        """A writable ``(rows, *image_shape)`` uint8 array, to fill before it is read."""
        name = uuid.uuid4().hex
        shape = (rows, *self.image_shape)
        if self.folder is None:
            tensor = torch.zeros(shape, dtype=torch.uint8)
            self._memory[name] = tensor
            return name, tensor.numpy()
        path = self._chunk_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        locks.share(Path(self.folder) / IN_USE_FILE)
        return name, np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)

    def with_entries(self, entries: pd.DataFrame) -> ImageStore:
        """The same chunks described by new entries (those of this run's files)."""
        return ImageStore(self.image_shape, self.folder, entries, self._memory, self._opened)

    # --- lookups --------------------------------------------------------------------

    def checked(self, fingerprints: Sequence[str]) -> pd.DataFrame:
        """Earlier check results for these fingerprints (NaN rows where none)."""
        known = self.entries.dropna(subset=["fingerprint"]).drop_duplicates("fingerprint")
        return known.set_index("fingerprint").reindex(list(fingerprints))

    def locate(self, content_hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Chunk number and row of each image; chunk -1 where the store lacks it."""
        stored = self.entries.dropna(subset=["chunk"]).drop_duplicates("content_hash")
        position = pd.Index(stored["content_hash"]).get_indexer(list(content_hashes))
        found = position >= 0
        chunk_ids = np.full(len(position), -1, dtype=np.int64)
        rows = np.zeros(len(position), dtype=np.int64)
        chunk_ids[found] = pd.Index(self._names).get_indexer(
            stored["chunk"].to_numpy()[position[found]]
        )
        rows[found] = stored["row"].to_numpy(dtype=np.int64)[position[found]]
        return chunk_ids, rows

    def image(self, chunk_id: int, row: int) -> torch.Tensor:
        """One ``image_shape`` uint8 image, as located by :meth:`locate`."""
        name = self._names[chunk_id]
        if name in self._memory:
            return self._memory[name][row]
        if name not in self._mapped:
            # Copy-on-write mapping: writable views without copying, never written back.
            self._mapped[name] = np.load(self._chunk_path(name), mmap_mode="c")
        return torch.from_numpy(self._mapped[name][row])

    def __len__(self) -> int:
        return int(self.entries["chunk"].notna().sum())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapped": {}}

    def _chunk_path(self, name: str) -> Path:
        return Path(self.folder) / "chunks" / f"{name}.npy"
