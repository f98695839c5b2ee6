"""Model registry, building by name, and loading pretrained state_dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kedro_torch.pytorch.models import (
    SmallCNN,
    available_models,
    build_model,
    load_pretrained,
    strip_wrapper_prefixes,
)


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_cnn_output_shape_for_any_input_size(size, in_channels):
    model = SmallCNN(in_channels=in_channels, num_classes=5, width=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 5)


def test_build_small_cnn_passes_kwargs():
    model = build_model("small_cnn", num_classes=3, in_channels=1, width=8)
    assert isinstance(model, SmallCNN)
    assert model.classifier[-1].in_features == 16  # 2 * width
    assert model.classifier[-1].out_features == 3


@pytest.mark.parametrize("in_channels", [1, 3])
def test_build_torchvision_model_adapts_input_channels(in_channels):
    model = build_model("resnet18", num_classes=4, in_channels=in_channels).eval()
    assert model.conv1.in_channels == in_channels
    assert model.fc.out_features == 4
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, 32, 32))
    assert logits.shape == (2, 4)


def test_grayscale_first_conv_averages_the_rgb_filters():
    """A 1-channel conv built from the RGB one keeps its response to grey images."""
    torch.manual_seed(0)
    rgb = build_model("resnet18", num_classes=2, in_channels=3)
    torch.manual_seed(0)
    gray = build_model("resnet18", num_classes=2, in_channels=1)
    expected = rgb.conv1.weight.mean(dim=1, keepdim=True)
    assert torch.allclose(gray.conv1.weight, expected)
    assert gray.conv1.stride == rgb.conv1.stride
    assert gray.conv1.padding == rgb.conv1.padding


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        build_model("resnet19", num_classes=2, in_channels=1)
    message = str(error.value)
    assert message.startswith("model.name")
    assert "'resnet19'" in message
    for valid in ("small_cnn", "resnet18", "mobilenet_v3_small"):
        assert valid in message


def test_available_models_includes_project_and_torchvision_models():
    names = available_models()
    assert names[0] == "small_cnn"
    assert "resnet18" in names


# --- state_dict key prefixes ---------------------------------------------------------


def test_strip_wrapper_prefixes():
    tensor = torch.zeros(1)
    stripped = strip_wrapper_prefixes(
        {
            "module.a.weight": tensor,
            "_orig_mod.b.weight": tensor,
            "module._orig_mod.c.weight": tensor,
            "_orig_mod.module.d.weight": tensor,
            "e.module.weight": tensor,  # only a leading prefix is a wrapper's
        }
    )
    assert list(stripped) == ["a.weight", "b.weight", "c.weight", "d.weight", "e.module.weight"]
    assert stripped["a.weight"] is tensor


def test_stripping_a_data_parallel_state_dict_gives_the_plain_one():
    model = nn.Sequential(nn.Linear(2, 2))
    wrapped = nn.DataParallel(model)
    assert strip_wrapper_prefixes(wrapped.state_dict()).keys() == model.state_dict().keys()


# --- load_pretrained ---------------------------------------------------------------


def test_load_pretrained_skips_a_head_of_another_size():
    torch.manual_seed(0)
    source = build_model("resnet18", num_classes=1000, in_channels=3).state_dict()
    # Make every tensor distinguishable from a fresh initialisation.
    source = {key: value + 1 if value.is_floating_point() else value + 7
              for key, value in source.items()}
    torch.manual_seed(1)
    model = build_model("resnet18", num_classes=10, in_channels=3)
    head_before = model.fc.weight.detach().clone()

    report = load_pretrained(model, source)

    assert set(report.loaded) == set(source) - {"fc.weight", "fc.bias"}
    assert sorted(report.skipped) == [
        "fc.bias (file (1000,), model (10,))",
        "fc.weight (file (1000, 512), model (10, 512))",
    ]
    assert report.missing == []
    assert report.unexpected == []
    loaded = model.state_dict()
    for key in report.loaded:
        assert torch.equal(loaded[key], source[key]), key
    assert torch.equal(model.fc.weight, head_before)


def test_load_pretrained_accepts_wrapped_keys_and_reports_extra_and_missing():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    source = {
        "module.0.weight": torch.full((2, 3), 2.0),
        "module.0.bias": torch.full((2,), 3.0),
        "module.head.weight": torch.ones(1),
    }
    report = load_pretrained(model, source)
    assert report.loaded == ["0.weight", "0.bias"]
    assert report.unexpected == ["head.weight"]
    assert report.missing == ["1.weight", "1.bias"]
    assert torch.equal(model[0].weight, torch.full((2, 3), 2.0))
    assert torch.equal(model[0].bias, torch.full((2,), 3.0))


def test_load_pretrained_with_no_matching_tensor_raises():
    model = nn.Sequential(nn.Linear(3, 2))
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="no tensor of the pretrained state_dict matches"):
        load_pretrained(model, {"0.weight": torch.zeros(5, 5), "other.bias": torch.zeros(2)})
    assert torch.equal(model[0].weight, before)
