"""TorchScript and torch.export versions of a model agree with it at any batch size."""

from __future__ import annotations

import io

import pytest
import torch

from kedro_torch.pytorch.export import compare_with_eager, to_exported_program, to_torchscript
from kedro_torch.pytorch.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small_cnn", 5, 1, width=4).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_saved_and_reloaded_exports_match_eager_at_batch_1_and_7(model, images):
    script_file, program_file = io.BytesIO(), io.BytesIO()
    torch.jit.save(to_torchscript(model), script_file)
    torch.export.save(to_exported_program(model, images[:2]), program_file)
    script_file.seek(0)
    program_file.seek(0)
    exported = {"torchscript": torch.jit.load(script_file),
                "exported_program": torch.export.load(program_file).module()}
    report = compare_with_eager(model, exported, images, [1, 7], tolerance=1e-5)
    assert report["within_tolerance"]
    assert report["samples"] == 10
    for per_size in report["max_abs_difference"].values():
        assert set(per_size) == {"batch_size_1", "batch_size_7"}
        assert max(per_size.values()) <= 1e-5


def test_a_model_that_differs_is_reported(model, images):
    def shifted(batch):
        return model(batch) + 1e-3

    report = compare_with_eager(model, {"shifted": shifted}, images, [3], tolerance=1e-5)
    assert not report["within_tolerance"]
    assert report["max_abs_difference"]["shifted"]["batch_size_3"] == pytest.approx(1e-3,
                                                                                   rel=1e-2)
