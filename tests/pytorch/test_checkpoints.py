"""Safe loading (weights only) and atomic saving of tensors."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from kedro_torch.pytorch import checkpoints
from kedro_torch.pytorch.checkpoints import (
    CheckpointStore,
    UnsafeCheckpointError,
    load_weights,
    save_atomically,
    state_dict_from,
)
from kedro_torch.pytorch.locks import Busy


def small_state_dict(value: float = 1.0) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.full((2, 3), value), "layer.bias": torch.arange(2.0)}


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


class CreatesMarkerWhenUnpickled:
    """Stands for a malicious object: full unpickling would run Path.touch(marker)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_load_weights_of_a_plain_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(small_state_dict(), path)
    with path.open("rb") as file:
        assert_same_tensors(load_weights(file, str(path)), small_state_dict())


def malicious_checkpoint(marker: pathlib.Path) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(1), "payload": CreatesMarkerWhenUnpickled(marker)}, buffer)
    buffer.seek(0)
    return buffer


def test_the_malicious_file_really_runs_code_when_fully_unpickled(tmp_path):
    """Control for the next test: the payload works when loading is unrestricted."""
    marker = tmp_path / "marker"
    torch.load(malicious_checkpoint(marker), weights_only=False)
    assert marker.exists()


def test_file_with_python_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(UnsafeCheckpointError) as error:
        load_weights(malicious_checkpoint(marker), "evil.pt")
    assert not marker.exists()
    assert str(error.value).startswith("evil.pt: refused to load")
    assert "torch.save(model.state_dict(), path)" in str(error.value)
    # It is a ValueError, so callers catching bad input catch it too.
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3},
])
def test_state_dict_from_accepts_plain_and_wrapped_state_dicts(wrap):
    assert_same_tensors(state_dict_from(wrap(small_state_dict()), "f.pt"), small_state_dict())


def test_state_dict_from_keeps_only_tensors():
    loaded = state_dict_from({**small_state_dict(), "note": "trained on digits"}, "f.pt")
    assert_same_tensors(loaded, small_state_dict())


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ([torch.ones(1)], "list"),
        (torch.ones(1), "Tensor"),
        ({"epoch": 3, "lr": 0.1}, "dict"),
        ({}, "dict"),
        ({"state_dict": {"epoch": 3}}, "dict"),
    ],
)
def test_state_dict_from_rejects_other_things(obj, kind):
    with pytest.raises(ValueError, match=rf"^f\.pt: expected a state_dict .* got {kind}$"):
        state_dict_from(obj, "f.pt")


def test_save_atomically_writes_and_replaces_the_file(tmp_path):
    path = tmp_path / "model.pt"
    save_atomically(small_state_dict(1.0), str(path))
    assert_same_tensors(torch.load(path, weights_only=True), small_state_dict(1.0))
    save_atomically(small_state_dict(2.0), str(path))
    assert_same_tensors(torch.load(path, weights_only=True), small_state_dict(2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_interrupted_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_atomically(small_state_dict(1.0), str(path))
    good_bytes = path.read_bytes()

    def crash_halfway(obj, file):
        file.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", crash_halfway)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomically(small_state_dict(2.0), str(path))
    monkeypatch.undo()

    assert path.read_bytes() == good_bytes
    assert_same_tensors(torch.load(path, weights_only=True), small_state_dict(1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_the_newest_checkpoint_is_the_last_written_not_the_highest_epoch(tmp_path):
    """A run started afresh beside an earlier run's epoch 9 resumes from its own epoch 1,
    and keeping one checkpoint drops the earlier run's."""
    store = CheckpointStore(str(tmp_path), keep=1)
    store.save({"epoch": 9})
    time.sleep(0.01)
    store.save({"epoch": 1})
    assert store.steps() == ["step-00001-0000000.pt"]
    assert store.load() == {"epoch": 1}


def test_tags_are_those_of_the_newest_checkpoint_and_refuse_an_unsafe_file(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    assert store.tags() == {}
    store.save({"epoch": 1, "model": small_state_dict(), "tags": {"mlflow_run_id": "a"}})
    time.sleep(0.01)
    store.save({"epoch": 2, "model": small_state_dict(), "tags": {"mlflow_run_id": "b"}})
    assert store.tags() == {"mlflow_run_id": "b"}
    torch.save({"epoch": 3, "tags": CreatesMarkerWhenUnpickled(tmp_path / "marker")},
               store.path("step-00003-0000000.pt"))
    with pytest.raises(UnsafeCheckpointError, match="step-00003"):
        store.tags()
    assert not (tmp_path / "marker").exists()


def test_a_folder_another_process_trains_into_is_refused_until_it_ends(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom kedro_torch.pytorch.checkpoints import "
         f"CheckpointStore\nCheckpointStore({str(tmp_path)!r}).claim()\nprint('held', "
         "flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    store = CheckpointStore(str(tmp_path))
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(Busy, match=f"training this configuration now, with its "
                                       f"checkpoints in {tmp_path}.*training.seed"):
            store.claim()
    finally:
        holder.communicate("", timeout=30)
    store.claim()  # the holder ended: the operating system let its lock go
    store.claim()  # and this process may claim its own folder again
    store.release()
