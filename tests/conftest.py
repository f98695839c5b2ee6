"""Shared fixtures. Telemetry is switched off before Kedro is imported: it would
try the network."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from kedro_torch.pytorch import interrupts

os.environ["KEDRO_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DIGITS = PROJECT_ROOT / "data" / "01_raw" / "digits"


def copy_digits(destination: Path, per_class: int) -> Path:
    """A subset of the bundled digits: the first ``per_class`` files of each class."""
    for class_dir in sorted(BUNDLED_DIGITS.iterdir()):
        target = destination / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:per_class]:
            shutil.copy(image, target / image.name)
    return destination


@pytest.fixture(scope="session")
def small_digits(tmp_path_factory) -> Path:
    """20 real digit PNGs per class (200 images)."""
    return copy_digits(tmp_path_factory.mktemp("digits"), per_class=20)


@pytest.fixture
def one_thread():
    """These tensors are tiny: one thread is quicker than a pool whose threads wait on
    each other, which on a busy 2-core machine made such tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_signal_carried_over():
    """Each test starts as a new process would: a signal an earlier test sent this
    process is not taken as the cause of its errors (interrupts.interruption)."""
    interrupts.forget_signals()
