"""What the project's hooks add to a run (its name, git state and device) and the
parameters they check at the door."""

from __future__ import annotations

import subprocess

import pytest

from kedro_torch.config import ParameterError
from kedro_torch.hooks import device_tags, git_state, run_name, validate_parameters


def test_run_name_from_model_optimizer_and_learning_rate():
    parameters = {"model": {"name": "resnet18"},
                  "training": {"optimizer": {"name": "SGD", "kwargs": {"lr": 0.1}}}}
    assert run_name(parameters) == "resnet18-SGD-lr0.1"
    assert run_name({}) == "small_cnn-AdamW-lr0.003"  # the defaults
    no_lr = {"training": {"optimizer": {"name": "Adam", "kwargs": {}}}}
    assert run_name(no_lr) == "small_cnn-Adam"


def test_git_state_outside_a_repository_is_unknown(tmp_path):
    assert git_state(tmp_path) == ("unknown", "unknown")


def test_git_state_gives_the_commit_and_whether_the_tree_is_dirty(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    commit = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == (commit, "false")
    (tmp_path / "a.txt").write_text("changed")
    assert git_state(tmp_path) == (commit, "true")


def test_device_tag_is_the_resolved_device():
    assert device_tags({"device": "cpu"}) == {"device": "cpu"}


def test_new_sections_are_validated_at_the_door():
    with pytest.raises(ParameterError, match=r"export\.tolerance"):
        validate_parameters({"export": {"tolerance": -1}}, {"export"})
    validate_parameters({}, {"evaluation", "mlflow", "inference", "export"})


def test_an_unknown_transform_name_stops_the_run_at_the_door():
    parameters = {"data": {"transforms": {"eval": [{"name": "CenterCrop", "kwargs": {"size": 8}},
                                                   {"name": "CentreCrop"}]}}}
    with pytest.raises(ValueError, match=r"data\.transforms\.eval\[1\]\.name: unknown name"):
        validate_parameters(parameters, {"data"})


def test_transform_arguments_are_tried_at_the_door():
    parameters = {"data": {"transforms": {"train_batch": [{"name": "MixUp",
                                                           "kwargs": {"alpha": -1}}]}}}
    with pytest.raises(ValueError, match=r"data\.transforms\.train_batch\[0\] \(MixUp\)"):
        validate_parameters(parameters, {"data"})
