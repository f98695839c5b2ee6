"""Predicting with a table model rebuilt from its spec: raw rows in, labels or values out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kedro_torch.pytorch import models
from kedro_torch.pytorch.table_inference import TableModelSpec, TablePredictor
from kedro_torch.pytorch.tables import TablePreprocessing

TABLE = pd.DataFrame({
    "length": [1.0, 2.5, np.nan, 4.0, 5.5, 3.0],
    "colour": ["red", "blue", "red", None, "blue", "red"],
    "kind": ["a", "b", "a", "c", "b", "a"],
    "mass": [10.0, 20.0, 15.0, 30.0, 25.0, 12.0],
})


def spec_for(kind: str, target: str, **kwargs) -> TableModelSpec:
    preprocessing = TablePreprocessing.fit(TABLE, target, ["length"], ["colour"], kind)
    task = f"tabular_{kind}"
    return TableModelSpec("tabular_mlp", preprocessing.to_dict(), {"hidden": [8], **kwargs}, task)


def predictor(spec: TableModelSpec) -> TablePredictor:
    torch.manual_seed(0)
    model = models.build(spec.model_name, spec.model_arguments(), spec.model_kwargs)
    return TablePredictor.from_state_dict(model.state_dict(), spec)


@pytest.fixture(scope="module")
def classifier() -> TablePredictor:
    return predictor(spec_for("classification", "kind"))


def test_the_spec_gives_the_model_its_shapes_and_travels_as_json():
    spec = spec_for("classification", "kind")
    assert spec.model_arguments() == {"numeric_features": 2, "cardinalities": [3],
                                      "num_outputs": 3}  # length + its missing indicator
    assert TableModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec_for("regression", "mass").model_arguments()["num_outputs"] == 1


def test_each_row_gets_its_label_and_every_class_probability_on_its_index(classifier):
    rows = TABLE.drop(columns="kind").set_index(pd.Index([50, 40, 30, 20, 10, 0]))
    predictions = classifier.predict(rows.iloc[::-1], batch_size=4)
    assert list(predictions.columns) == ["label", "probability", "probability_a",
                                         "probability_b", "probability_c"]
    assert predictions.index.tolist() == [0, 10, 20, 30, 40, 50]
    per_class = predictions[["probability_a", "probability_b", "probability_c"]]
    assert per_class.sum(axis=1).to_numpy() == pytest.approx(np.ones(6), abs=1e-6)
    assert predictions["probability"].tolist() == per_class.max(axis=1).tolist()
    assert predictions["label"].tolist() == [
        name.removeprefix("probability_") for name in per_class.idxmax(axis=1)]
    # One batch or many, in any order: the same figures for the same row.
    whole = classifier.predict(rows)
    pd.testing.assert_frame_equal(whole.loc[predictions.index], predictions)


def test_missing_values_and_unseen_categories_get_predictions(classifier):
    rows = pd.DataFrame({"length": [np.nan, 2.0, 2.0, 2.0],
                         "colour": ["red", "green", None, "blue"]})
    predictions = classifier.predict(rows)
    assert predictions["probability"].notna().all()
    # An unseen colour is what training called unknown, as a missing one is.
    assert predictions.iloc[1].equals(predictions.iloc[2])
    assert not predictions.iloc[1].equals(predictions.iloc[3])


def test_a_missing_feature_column_is_refused_naming_it(classifier):
    with pytest.raises(ValueError, match="no feature column 'colour'"):
        classifier.predict(pd.DataFrame({"length": [1.0], "color": ["red"]}))


def test_regression_values_are_in_the_targets_units():
    spec = spec_for("regression", "mass", hidden=[])
    model = models.build(spec.model_name, spec.model_arguments(), spec.model_kwargs)
    state_dict = model.state_dict()
    state_dict["head.weight"].zero_()
    state_dict["head.bias"].fill_(1.0)  # one standard deviation above the mean, for any row
    predictions = TablePredictor.from_state_dict(state_dict, spec).predict(TABLE)
    mass = TABLE["mass"]
    assert list(predictions.columns) == ["value"]
    assert predictions["value"].to_numpy() == pytest.approx(
        np.full(len(TABLE), mass.mean() + mass.std(ddof=0)))


def test_weights_of_another_shape_are_refused_and_wrapper_prefixes_are_not():
    spec = spec_for("classification", "kind")
    model = models.build(spec.model_name, spec.model_arguments(), spec.model_kwargs)
    wrapped = {f"module.{name}": tensor for name, tensor in model.state_dict().items()}
    assert isinstance(spec.build_model(wrapped), models.TabularMLP)
    wider = TableModelSpec(spec.model_name, spec.preprocessing, {"hidden": [16]}, spec.task)
    with pytest.raises(RuntimeError, match="size mismatch"):
        wider.build_model(model.state_dict())
