"""Tables: column choice, preprocessing fitted on the train split, split, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kedro_torch.pytorch.config import DataConfig, parse
from kedro_torch.pytorch.data import DataError
from kedro_torch.pytorch.tables import TablePreprocessing, infer_columns, prepare_table

TASKS = {"classification": "tabular_classification", "regression": "tabular_regression"}


def config(kind: str = "classification", split: dict | None = None, **table) -> DataConfig:
    return parse(DataConfig, {"task": TASKS[kind], "source": "table",
                              "table": {"target": "y", **table}, "split": split or {}}, "data")


def people(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """A table as a CSV reads it: an id, numbers with gaps, strings, bools, a class."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({
        "id": np.arange(rows),
        "age": rng.integers(18, 90, rows).astype(float),
        "income": rng.normal(50_000, 10_000, rows),
        "city": rng.choice(["paris", "lyon", "nice"], rows).astype(object),
        "member": rng.choice([True, False], rows),
        "y": rng.choice(["no", "yes"], rows).astype(object),
    })
    table.loc[[2, 5], "age"] = np.nan
    table.loc[7, "city"] = None
    return table


# --- preprocessing -------------------------------------------------------------------


def test_features_standardize_impute_flag_and_code():
    train = pd.DataFrame({"x": [1.0, 3.0, None, 5.0], "c": ["b", "a", None, "b"],
                          "y": ["p", "q", "p", "q"]})
    prep = TablePreprocessing.fit(train, "y", ["x"], ["c"], "classification")
    assert (prep.fill["x"], prep.mean["x"]) == (3.0, 3.0)
    assert prep.std["x"] == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert prep.indicators == ["x"]
    assert prep.categories == {"c": ["a", "b"]}
    assert (prep.numeric_width, prep.cardinalities) == (2, [3])
    assert prep.feature_columns == {"x": [0, 1], "c": [2]}

    new = pd.DataFrame({"x": [5.0, None, "n/a"], "c": ["a", "zebra", None]}, dtype=object)
    features = prep.features(new)
    assert features.dtype == torch.float32
    std = prep.std["x"]
    # a missing or unparseable number: the train mean (0 once standardized), flagged;
    # an unseen or missing category: code 0.
    expected = [[2 / std, 0, 1], [0, 1, 0], [0, 1, 0]]
    torch.testing.assert_close(features, torch.tensor(expected, dtype=torch.float32))


def test_a_column_without_missing_values_in_train_gets_no_indicator():
    train = pd.DataFrame({"x": [1.0, 2.0], "z": [0.0, 0.0], "y": ["a", "b"]})
    prep = TablePreprocessing.fit(train, "y", ["x", "z"], [], "classification")
    assert prep.indicators == []
    assert prep.std["z"] == 1.0  # constant: not divided by 0
    features = prep.features(pd.DataFrame({"x": [None], "z": [4.0]}))
    assert features.tolist() == [[0.0, 4.0]]


def test_features_name_every_missing_column():
    prep = TablePreprocessing.fit(people(), "y", ["age", "income"], ["city"], "classification")
    with pytest.raises(ValueError, match="'age', 'city'") as error:
        prep.features(people().drop(columns=["age", "city"]))
    assert "'income'" not in str(error.value).split(";")[0]


def test_preprocessing_round_trips_through_json():
    table = people()
    prep = TablePreprocessing.fit(table, "y", ["age", "income"], ["city", "member"],
                                  "classification")
    again = TablePreprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep
    assert torch.equal(again.features(table), prep.features(table))


def test_input_types_follow_what_a_served_model_is_sent():
    table = people().assign(rooms=[1, 2, 3] * 40)
    prep = TablePreprocessing.fit(table, "y", ["age", "id"], ["city", "member", "rooms"],
                                  "classification")
    assert prep.input_types == {"age": "double", "id": "double", "city": "string",
                                "member": "boolean", "rooms": "long"}


def test_class_labels_are_the_strings_of_their_values():
    train = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [1.0, 2.0, None]})  # ints read as floats
    prep = TablePreprocessing.fit(train, "y", ["x"], [], "classification")
    assert prep.classes == ["1", "2"]
    asked = pd.DataFrame({"x": [0.0, 0.0, 0.0], "y": pd.Series([2, "1", 1], dtype=object)})
    assert prep.targets(asked).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match=r"no known class: '3'"):
        prep.targets(pd.DataFrame({"x": [0.0], "y": [3]}))


def test_regression_targets_are_standardized_and_outputs_come_back_in_units():
    train = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": [10.0, 20.0, 30.0, 40.0]})
    prep = TablePreprocessing.fit(train, "y", ["x"], [], "regression")
    assert prep.target_mean == 25.0
    targets = prep.targets(train)
    assert targets.dtype == torch.float32
    assert targets.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert prep.output_to_values(targets.unsqueeze(1)).tolist() == pytest.approx(
        [10.0, 20.0, 30.0, 40.0])
    with pytest.raises(ValueError, match="target column 'y'"):
        prep.targets(pd.DataFrame({"x": [1.0], "y": ["lots"]}))


# --- columns -------------------------------------------------------------------------


def test_columns_are_inferred_from_dtypes():
    table = people().assign(when=pd.Timestamp("2024-01-01"),
                            grade=pd.Categorical(["a", "b", "c"] * 40))
    numeric, categorical = infer_columns(table, "y", drop=["id"])
    assert numeric == ["age", "income"]
    assert categorical == ["city", "member", "grade"]  # the date is left out
    numeric, categorical = infer_columns(table, "y", drop=["id"], categorical=["city"])
    assert (numeric, categorical) == (["age", "income"], ["city"])
    numeric, categorical = infer_columns(table, "y", drop=[], numeric=["age"])
    assert (numeric, categorical) == (["age"], ["city", "member", "grade"])


@pytest.mark.parametrize(("arguments", "message"), [
    ({"target": "price"}, r"data\.table\.target: the table has no column 'price'; its "
                          r"columns are 'id', 'age'"),
    ({"numeric": ["age", "height"]}, r"data\.table\.numeric: .*no column 'height'.*'income'"),
    ({"categorical": ["town"]}, r"data\.table\.categorical: .*no column 'town'"),
    ({"drop": ["ID"]}, r"data\.table\.drop: .*no column 'ID'"),
    ({"numeric": ["age", "y"]}, r"data\.table\.numeric lists the target column 'y'"),
    ({"numeric": ["age"], "categorical": ["age"]}, r"numeric and data\.table\.categorical both"),
    ({"drop": ["id", "age", "income", "city", "member"]}, "no feature column is left"),
])
def test_column_errors_name_the_key_and_the_columns(arguments, message):
    arguments = {"target": "y", "drop": [], **arguments}
    with pytest.raises(DataError, match=message):
        infer_columns(people(), **arguments)


# --- prepare_table -------------------------------------------------------------------


def test_prepare_table_sets_aside_rows_without_a_target_and_splits_the_rest():
    table = people()
    table.loc[[3, 50], "y"] = [None, "  "]
    prepared = prepare_table(table, config(drop=["id"]), "classification")
    assert prepared.report["set_aside"] == [
        {"row": 3, "reason": "no target in column 'y' (data.table.target)"},
        {"row": 50, "reason": "no target in column 'y' (data.table.target)"},
    ]
    rows = prepared.model_input
    assert len(rows) == prepared.report["usable_rows"] == 118
    assert 3 not in set(rows["row"]) and 4 in set(rows["row"])
    assert list(rows.columns) == [*table.columns, "row", "content_hash", "target", "split"]
    assert prepared.label_map == {"no": 0, "yes": 1}
    assert (rows["target"] == rows["y"].map(prepared.label_map)).all()
    assert set(rows["split"]) == {"train", "val", "test"}
    prep = TablePreprocessing.from_dict(prepared.preprocessing)
    assert (prep.numeric, prep.categorical) == (["age", "income"], ["city", "member"])
    assert prep.classes == ["no", "yes"]
    assert torch.equal(prep.targets(rows), torch.tensor(rows["target"].to_numpy()))


def test_preprocessing_is_fitted_on_the_train_rows_alone():
    table = people().assign(code=[f"c{i}" for i in range(120)])
    prepared = prepare_table(table, config(drop=["id"]), "classification")
    rows = prepared.model_input
    prep = TablePreprocessing.from_dict(prepared.preprocessing)
    train = rows[rows["split"] == "train"]
    assert prep.categories["code"] == sorted(train["code"])
    assert prep.mean["income"] == pytest.approx(train["income"].mean())
    test = rows[rows["split"] == "test"]
    assert not set(test["code"]) & set(prep.categories["code"])
    code = prep.feature_columns["code"][0]
    assert (prep.features(test)[:, code] == 0).all()  # unknown to the model


def test_regression_sets_aside_targets_that_are_not_numbers():
    table = people().assign(y=np.linspace(100, 200, 120).astype(object))
    table.loc[4, "y"] = "n/a"
    table.loc[9, "y"] = None
    table.loc[11, "y"] = "150.5"  # a number written as text is a number
    prepared = prepare_table(table, config("regression", drop=["id"]), "regression")
    assert prepared.report["set_aside"] == [
        {"row": 4, "reason": "target 'n/a' in column 'y' (data.table.target) is not a finite "
                             "number"},
        {"row": 9, "reason": "no target in column 'y' (data.table.target)"},
    ]
    assert prepared.label_map == {}
    rows = prepared.model_input
    assert rows["target"].dtype == np.float64
    assert rows.loc[rows["row"] == 11, "target"].item() == 150.5
    prep = TablePreprocessing.from_dict(prepared.preprocessing)
    train = rows[rows["split"] == "train"]
    assert prep.target_mean == pytest.approx(train["target"].mean())
    summary = prepared.report["target"]
    assert summary["min"] == 100.0 and summary["max"] == 200.0
    assert set(summary["quantiles"]) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
    assert prepared.report["split_rule"].startswith("content hash")


def test_a_table_without_any_usable_target_is_refused():
    table = people().assign(y="unknown")
    with pytest.raises(DataError, match=r"no row .* usable target in column 'y' .*all 120 rows"
                                        r".*row 0: target 'unknown'"):
        prepare_table(table, config("regression"), "regression")


def test_a_class_too_small_to_split_is_refused_naming_it():
    table = people()
    table.loc[0, "y"] = "maybe"
    with pytest.raises(DataError, match=r"too few rows for data\.split .*'maybe' \(1\)"):
        prepare_table(table, config(), "classification")


def test_missing_group_column_and_clashing_columns_are_refused():
    with pytest.raises(DataError, match=r"data\.split\.group_column: .*no column 'family'"):
        prepare_table(people(), config(split={"group_column": "family"}), "classification")
    with pytest.raises(DataError, match=r"'split' clash"):
        prepare_table(people().assign(split="a"), config(), "classification")


def test_groups_share_a_split():
    table = people(240).assign(family=np.arange(240) // 6)
    prepared = prepare_table(table, config(drop=["id", "family"],
                                           split={"group_column": "family"}),
                             "classification")
    splits_per_family = prepared.model_input.groupby("family")["split"].nunique()
    assert (splits_per_family == 1).all()
    assert prepared.model_input["split"].nunique() == 3


def test_the_split_depends_on_each_row_alone():
    table = people(300).assign(rooms=np.arange(300) % 5)
    first = prepare_table(table, config(drop=["id"]), "classification").model_input
    again = prepare_table(table, config(drop=["id"]), "classification").model_input
    pd.testing.assert_frame_equal(first, again)
    # shuffled, with more rows, one without rooms, which turns the integers to floats
    added = people(50, seed=1).assign(id=np.arange(300, 350), rooms=2)
    added.loc[0, "rooms"] = None
    grown = pd.concat([table.iloc[::-1], added], ignore_index=True)
    assert grown["rooms"].dtype == np.float64
    later = prepare_table(grown, config(drop=["id"]), "classification").model_input
    before = first.set_index("id")["split"]
    after = later.iloc[: len(table)].set_index("id")["split"]
    pd.testing.assert_series_equal(before.sort_index(), after.sort_index())
    moved = prepare_table(table, config(drop=["id"], split={"seed": 7}), "classification")
    assert (moved.model_input["split"] != first["split"]).any()


def test_identical_rows_share_a_split_and_are_reported():
    table = people(200)
    copies = table.iloc[[10, 10, 20]].assign(id=[500, 501, 502])  # ids are dropped
    clash = table.iloc[[30]].assign(id=503, y="no" if table.at[30, "y"] == "yes" else "yes")
    table = pd.concat([table, copies, clash], ignore_index=True)
    prepared = prepare_table(table, config(drop=["id"]), "classification")
    rows = prepared.model_input
    for original in (10, 20):
        same = rows[rows["content_hash"] == rows.at[original, "content_hash"]]
        assert same["split"].nunique() == 1
    assert rows.at[10, "content_hash"] != rows.at[30, "content_hash"]
    assert prepared.report["duplicate_rows"] == {
        "rows": 5, "extra_copies": 3, "same_features_different_target": 1}


def test_report_describes_every_column_and_is_json():
    table = people().assign(country="fr", code=[f"c{i % 60}" for i in range(120)])
    prepared = prepare_table(table, config(drop=["id"], max_categories=10), "classification")
    report = json.loads(json.dumps(prepared.report))
    assert report["rows"] == 120
    assert report["columns"]["age"] == {"dtype": "float64", "missing": 2,
                                        "distinct": table["age"].nunique(), "role": "numeric",
                                        "not_numbers": {"count": 0, "rows": []}}
    roles = {name: column["role"] for name, column in report["columns"].items()}
    assert roles == {"id": "dropped", "age": "numeric", "income": "numeric",
                     "city": "categorical", "member": "categorical", "y": "target",
                     "country": "categorical", "code": "categorical"}
    assert report["constant_columns"] == ["country"]
    assert report["high_cardinality_columns"] == ["code"]
    assert report["target"]["counts"] == table["y"].value_counts().sort_index().to_dict()
    assert sum(report["split_sizes"].values()) == 120
    assert report["duplicate_rows"]["rows"] == 0


def test_the_report_lists_the_rows_whose_number_does_not_parse():
    table = pd.DataFrame({"size": ["1.5", "12 g", None, "3", "n/a", "2"] * 4,
                          "label": ["a", "b"] * 12})
    config = parse(DataConfig, {"task": "tabular_classification", "source": "table",
                                "table": {"target": "label", "numeric": ["size"]}}, "data")
    report = prepare_table(table, config, "classification").report
    assert report["columns"]["size"]["not_numbers"] == {
        "count": 8, "rows": [1, 4, 7, 10, 13, 16, 19, 22]}
    assert report["columns"]["size"]["missing"] == 4
