"""TabularMLP, and models chosen by import path and built from the data's shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kedro_torch.pytorch import export
from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.models import (
    TabularMLP,
    build_from_class,
    build_model,
    check_model_name,
    model_class,
)


class SomeNet(nn.Module):
    """A user's own model, imported as ``tests.pytorch.test_tabular_model:SomeNet``: it
    takes one of the data's shapes and a width of its own, which has no default."""

    def __init__(self, num_outputs: int, width: int, depth: int = 1):
        super().__init__()
        self.num_outputs, self.width, self.depth = num_outputs, width, depth


NOT_A_MODULE = 3


def rows(batch: int, numeric: int, cardinalities: list[int]) -> torch.Tensor:
    """A batch as the table's preprocessing gives it: numerics, then category codes."""
    generator = torch.Generator().manual_seed(batch)
    codes = [torch.randint(0, c, (batch, 1), generator=generator) for c in cardinalities]
    return torch.cat([torch.randn(batch, numeric, generator=generator), *codes], dim=1)


@pytest.mark.parametrize(("numeric", "cardinalities"), [(3, [4, 40]), (0, [5]), (2, [])])
def test_tabular_mlp_scripts_and_exports_for_any_batch_size(numeric, cardinalities):
    model = TabularMLP(numeric, cardinalities, num_outputs=3, hidden=[16, 8]).eval()
    scripted = export.to_torchscript(model)
    program = export.to_exported_program(model, rows(2, numeric, cardinalities)).module()
    for batch in (1, 7):
        x = rows(batch, numeric, cardinalities)
        with torch.no_grad():
            expected = model(x)
            assert expected.shape == (batch, 3)
            torch.testing.assert_close(scripted(x), expected)
            torch.testing.assert_close(program(x), expected)


def test_each_category_gets_an_embedding_of_the_default_or_given_size():
    model = TabularMLP(2, [3, 100], num_outputs=1)
    assert [e.embedding_dim for e in model.embeddings] == [2, 16]  # min(16, (card + 1) // 2)
    assert model.body[0].in_features == 2 + 2 + 16
    sized = TabularMLP(2, [3, 100], num_outputs=1, embedding_dim=4, hidden=[])
    assert sized.head.in_features == 2 + 4 + 4


def test_a_category_code_changes_the_output_through_its_embedding():
    model = TabularMLP(1, [3], num_outputs=1, dropout=0.0).eval()
    x = torch.tensor([[0.5, 1.0], [0.5, 2.0]])
    with torch.no_grad():
        first, second = model(x)
    assert not torch.equal(first, second)


def test_a_table_without_features_is_refused():
    with pytest.raises(ValueError, match="at least one numeric or categorical feature"):
        TabularMLP(0, [], num_outputs=2)


def test_names_resolve_to_project_models_and_to_classes_by_import_path():
    assert model_class("tabular_mlp") is TabularMLP
    assert model_class("tests.pytorch.test_tabular_model:SomeNet") is SomeNet
    assert model_class("torch.nn:Linear") is nn.Linear


def test_image_models_are_built_by_name_as_before():
    check_model_name("resnet18")
    assert build_model("small_cnn", num_classes=3, in_channels=1).classifier[-1].out_features == 3


@pytest.mark.parametrize(("name", "message"), [
    ("no_such_model", "model.name: unknown model 'no_such_model'. Give one of .*tabular_mlp"),
    ("tests.no_such_module:SomeNet", "model.name: cannot import module 'tests.no_such_module'"),
    ("tests.pytorch.test_tabular_model:Missing",
     "model.name: module 'tests.pytorch.test_tabular_model' has no 'Missing'"),
    ("tests.pytorch.test_tabular_model:NOT_A_MODULE", "model.name: .* is 3, not a torch.nn.Module"),
])
def test_a_wrong_model_name_says_what_is_wrong(name, message):
    with pytest.raises(ParameterError, match=message):
        model_class(name)


def test_a_class_takes_the_shapes_it_names_and_the_users_kwargs():
    given = {"num_outputs": 4, "numeric_features": 2, "cardinalities": [3]}
    net = build_from_class(SomeNet, {"width": 8}, given)
    assert (net.num_outputs, net.width, net.depth) == (4, 8, 1)
    mlp = build_from_class(TabularMLP, {"hidden": [5]}, given)
    assert (mlp.numeric_features, mlp.head.out_features, mlp.body[0].out_features) == (2, 4, 5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"width": 8, "colour": "red"},
     "model.kwargs.colour: SomeNet takes no argument 'colour'. It takes: num_outputs, width"),
    ({}, r"model.kwargs.width: SomeNet needs argument 'width', which the data does not give "
         r"\(it gives num_outputs\); set it in model.kwargs"),
    ({"width": 8, "num_outputs": 2}, r"model.kwargs.num_outputs: set from the data \(4\)"),
])
def test_wrong_kwargs_name_the_key_and_argument(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        build_from_class(SomeNet, kwargs, {"num_outputs": 4})
