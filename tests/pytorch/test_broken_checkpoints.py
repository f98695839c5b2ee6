"""Checkpoints that cannot be read, a disk that fills up while one is written, and the
claim a run killed outright leaves on its folder."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kedro_torch.pytorch import locks
from kedro_torch.pytorch.api import refuse_unresumable
from kedro_torch.pytorch.checkpoints import (
    CheckpointStore,
    DiskFullError,
    UnreadableCheckpointError,
    save_atomically,
)
from kedro_torch.pytorch.config import DataConfig, ModelConfig, TrainingConfig
from kedro_torch.pytorch.engine import seed_everything
from tests.pytorch.test_resume import assert_identical, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

LOGGER = "kedro_torch.pytorch.checkpoints"


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def three_epochs(folder: Path, **settings) -> tuple[CheckpointStore, list[dict]]:
    """A run of 3 epochs that keeps its 3 step checkpoints; the store and its history."""
    store = CheckpointStore(str(folder), keep=3)
    seed_everything(0)
    trainer, train, val = make_trainer(store, 3, **settings)
    history = trainer.fit(train, val)
    return store, history


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_checkpoint_cut_in_half_is_set_aside_and_the_one_before_is_continued(
    tmp_path, caplog
):
    """keep_checkpoints=3 and the newest cut in half: resume: auto continues epoch 2's
    checkpoint and ends bit-identical to the run left alone; the broken file is named
    and kept beside the others as .corrupt."""
    folder = tmp_path / "checkpoints"
    store, history = three_epochs(folder)
    whole = store.load()
    newest = folder / "step-00003-0000000.pt"
    cut_in_half(newest)

    seed_everything(1234)
    resumed, train, val = make_trainer(store, 3)
    with caplog.at_level(logging.INFO):
        assert resumed.fit(train, val, resume="auto") == history
    assert_identical(resumed.model.state_dict(), whole["model"])
    assert f"{newest} cannot be read: it is cut short" in caplog.text
    assert f"Set aside as {newest}.corrupt" in caplog.text
    assert "after epoch 2" in caplog.text  # "Resumed from ... after epoch 2"
    assert names(folder) == ["step-00001-0000000.pt", "step-00002-0000000.pt",
                             "step-00003-0000000.pt", "step-00003-0000000.pt.corrupt"]


def test_resume_true_refuses_a_broken_checkpoint_naming_it_and_changing_nothing(tmp_path):
    folder = tmp_path / "checkpoints"
    store, _ = three_epochs(folder)
    cut_in_half(folder / "step-00003-0000000.pt")
    before = names(folder)

    resumed, train, val = make_trainer(store, 4)
    with pytest.raises(UnreadableCheckpointError) as error:
        resumed.fit(train, val, resume=True)
    message = str(error.value)
    assert message.startswith(f"{folder / 'step-00003-0000000.pt'} cannot be read: it is cut "
                              "short")
    assert "training.resume is true" in message
    assert "training.resume: auto" in message
    assert names(folder) == before


def test_a_damaged_byte_that_torch_would_load_is_found_by_the_checksum(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    store, _ = three_epochs(folder)
    newest = folder / "step-00003-0000000.pt"
    flip_a_byte_in_the_middle(newest)
    torch.load(newest, weights_only=True)  # torch alone loads it, damaged tensor and all

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.resume_point() == "step-00002-0000000.pt"
    assert "does not match its checksum" in caplog.text
    assert (folder / "step-00003-0000000.pt.corrupt").exists()


@pytest.mark.parametrize("damage", [
    pytest.param(lambda path: path.write_bytes(b""), id="empty"),
    pytest.param(lambda path: path.write_bytes(b"not a checkpoint"), id="garbage"),
    pytest.param(cut_in_half, id="cut"),
])
def test_when_no_checkpoint_can_be_read_auto_starts_afresh_saying_why(tmp_path, caplog, damage):
    folder = tmp_path / "checkpoints"
    store, _ = three_epochs(folder)
    for path in folder.glob("step-*.pt"):
        damage(path)

    resumed, train, val = make_trainer(store, 2)
    with caplog.at_level(logging.INFO):
        fresh = resumed.fit(train, val, resume="auto")
    assert [row["epoch"] for row in fresh] == [1, 2]
    assert caplog.text.count("Set aside as") == 3
    assert f"No checkpoint in {folder} can be read: training starts afresh" in caplog.text
    assert len(list(folder.glob("*.corrupt"))) == 3


def test_a_broken_best_checkpoint_starts_auto_afresh_and_stops_resume_true(tmp_path, caplog):
    """Without the best epoch's weights a keep_best run cannot end as it would have."""
    folder = tmp_path / "checkpoints"
    store, _ = three_epochs(folder, keep_best=True)
    best = folder / "best.pt"
    cut_in_half(best)

    refused, train, val = make_trainer(store, 4, keep_best=True)
    with pytest.raises(UnreadableCheckpointError, match=r"best\.pt cannot be read.*keep_best"):
        refused.fit(train, val, resume=True)
    assert not (folder / "best.pt.corrupt").exists()

    fresh, train, val = make_trainer(store, 1, keep_best=True)
    with caplog.at_level(logging.INFO):
        history = fresh.fit(train, val, resume="auto")
    assert [row["epoch"] for row in history] == [1]
    assert f"Set aside as {best}.corrupt" in caplog.text
    assert "training starts afresh" in caplog.text
    assert torch.load(best, weights_only=True).keys() == fresh.model.state_dict().keys()


def test_tags_come_from_the_checkpoint_a_resume_would_take_and_nothing_is_moved(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    store.save({"epoch": 1, "tags": {"mlflow_run_id": "a"}})
    time.sleep(0.01)
    store.save({"epoch": 2, "tags": {"mlflow_run_id": "b"}})
    cut_in_half(tmp_path / "step-00002-0000000.pt")
    assert store.tags() == {"mlflow_run_id": "a"}
    assert names(tmp_path) == ["step-00001-0000000.pt", "step-00002-0000000.pt"]


def test_a_broken_identity_file_is_set_aside_written_again_and_does_not_refuse_early(
    tmp_path, caplog
):
    root = CheckpointStore(str(tmp_path))
    identity = {"training.seed": 3, "model_input": "abc"}
    store = root.for_identity(identity)
    store.save({"epoch": 1})
    identity_file = Path(store.path("identity.json"))
    identity_file.write_text('{"training.seed": 3, "mod')

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert root.identities() == {store.directory: None}
    assert f"{identity_file} cannot be read: it is cut short or damaged" in caplog.text
    assert Path(f"{identity_file}.corrupt").exists()
    # Whether the folder is of these parameters is told once the data's digest is known.
    refuse_unresumable(root, DataConfig(), ModelConfig(), TrainingConfig(resume=True))

    store.save({"epoch": 2})
    assert json.loads(identity_file.read_text()) == identity
    assert root.identities() == {store.directory: identity}


# --- a full disk ----------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"),
                                    reason="needs /dev/full (Linux), where writes fail ENOSPC")


def full_disk_under(path: Path) -> None:
    """Make the temporary file the next save of ``path`` in this process writes to
    /dev/full, on which every write fails with ENOSPC from the kernel, as on a full
    disk: the real error through the real file, torch.save and the cleanup, without
    filling a disk (or mounting one, which needs root)."""
    Path(f"{path}.tmp-{os.getpid()}").symlink_to("/dev/full")


@needs_dev_full
@pytest.mark.parametrize("size", [10, 100_000])  # within torch's first write, and beyond
def test_a_full_disk_names_the_file_and_leaves_nothing_behind(tmp_path, size):
    path = tmp_path / "model.pt"
    save_atomically({"w": torch.zeros(3)}, str(path))
    before = path.read_bytes()
    full_disk_under(path)

    with pytest.raises(DiskFullError) as error:
        save_atomically({"w": torch.zeros(size)}, str(path))
    assert str(error.value).startswith(f"No space left on device: could not write {path}. ")
    assert "Free space on that disk, or write to another one" in str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(path)
    assert isinstance(error.value, OSError)
    assert names(tmp_path) == ["model.pt"]  # no temporary left
    assert path.read_bytes() == before


@needs_dev_full
def test_training_that_fills_the_disk_with_a_checkpoint_stops_naming_it(tmp_path):
    folder = tmp_path / "checkpoints"
    store, _ = three_epochs(folder)
    full_disk_under(folder / "step-00004-0000000.pt")

    more, train, val = make_trainer(store, 4)
    with pytest.raises(DiskFullError, match=f"could not write {folder}/step-00004-0000000.pt"):
        more.fit(train, val, resume=True)
    assert names(folder) == ["step-00001-0000000.pt", "step-00002-0000000.pt",
                             "step-00003-0000000.pt"]


def test_other_write_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_atomically({"w": torch.zeros(1)}, str(tmp_path / "absent" / "model.pt"))


# --- the claim a killed run leaves --------------------------------------------------

CLAIMANT = """
import sys
from kedro_torch.pytorch.checkpoints import CheckpointStore
store = CheckpointStore(sys.argv[1])
store.claim({"mlflow_run_id": "r1"})
print("held", flush=True)
if sys.stdin.readline() == "release\\n":
    store.release()
    print("released", flush=True)
sys.stdin.readline()
"""


def claimant(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(folder)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_a_claim_is_abandoned_only_once_its_process_is_killed(tmp_path):
    store = CheckpointStore(str(tmp_path))
    assert store.abandoned_claim() is None  # never claimed
    holder = claimant(tmp_path)
    assert store.abandoned_claim() is None  # it still trains
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)

    claim = store.abandoned_claim()
    assert claim == {"pid": holder.pid, "host": claim["host"], "tags": {"mlflow_run_id": "r1"}}
    store.claim({"mlflow_run_id": "r2"})  # the folder is free: the next run takes it
    try:
        assert store.abandoned_claim() is None  # held by this process: not abandoned
    finally:
        store.release()
    assert store.abandoned_claim() is None  # released: nothing is left


def test_a_claim_let_go_is_not_abandoned(tmp_path):
    holder = claimant(tmp_path)
    try:
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert not (tmp_path / "claim.json").exists()
        assert CheckpointStore(str(tmp_path)).abandoned_claim() is None
    finally:
        holder.communicate("\n", timeout=30)


def test_a_lock_this_process_holds_is_not_free(tmp_path):
    path = tmp_path / ".lock"
    with locks.if_free(path) as free:
        assert free
    locks.hold(path, "busy")
    try:
        with locks.if_free(path) as free:
            assert not free
    finally:
        locks.release(path)
