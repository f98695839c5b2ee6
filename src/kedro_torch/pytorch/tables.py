"""From a pandas table to model-ready tensors: columns, split, preprocessing, report.

Plain pandas, numpy and PyTorch, usable from a script or a notebook without Kedro. A
table is split as images are (:func:`kedro_torch.pytorch.data.split_keys` and
:func:`~kedro_torch.pytorch.data.assign_splits`), by a hash of each row's values, so
that identical rows share a split and a row keeps its split whatever rows are added.
Preprocessing is fitted on the training split alone: a value only seen in validation
or test is unknown to the model, as it would be in production.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.data import (
    HASH_RULE,
    SPLITS,
    DataError,
    assign_splits,
    check_split,
    classes_too_small,
    encode_labels,
    images_needed,
    split_keys,
)

logger = logging.getLogger(__name__)

Kind = Literal["classification", "regression"]
# Columns prepare_table adds to the rows it keeps; a table may not bring its own.
ADDED_COLUMNS = ("row", "content_hash", "target", "split")
REGRESSION_RULE = "content hash: rows split by data.split.train / val / test"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MAX_LISTED_ROWS = 100  # row numbers the report lists per column; the count is exact


@dataclass(frozen=True)
class TablePreprocessing:
    """How a table's columns become a model's input, fitted on the training split only.

    Everything is plain lists, dicts, strings and floats, so that it travels as JSON
    with the model (:meth:`to_dict`) and the served model transforms raw rows exactly
    as training did. Categorical values are known by their strings (``str(v)``, an
    integral number without its ``.0``), so 1, 1.0 and "1" are one category.

    ``input_types`` are the MLflow column types a served model accepts: "double" for
    every numeric column (MLflow takes integers for doubles), and for a categorical
    column the type of its values: "boolean" for a bool column and "long" for an
    integer one, since MLflow refuses to read those as strings, else "string".
    """

    target: str
    kind: Kind
    numeric: list[str]
    categorical: list[str]
    fill: dict[str, float]
    mean: dict[str, float]
    std: dict[str, float]
    indicators: list[str]
    categories: dict[str, list[str]]
    input_types: dict[str, str]
    classes: list[str] | None
    target_mean: float | None
    target_std: float | None

    @classmethod
    def fit(cls, train: pd.DataFrame, target: str, numeric: Sequence[str],
            categorical: Sequence[str], kind: Kind) -> TablePreprocessing:
        """Learn imputation, standardisation, categories and classes from ``train``."""
        values = {column: _numbers(train[column]) for column in numeric}
        observed = {column: v[np.isfinite(v)] for column, v in values.items()}
        mean = {column: float(v.mean()) if len(v) else 0.0 for column, v in observed.items()}
        classes, target_mean, target_std = None, None, None
        if kind == "classification":
            classes = sorted(_as_strings(train[target]).dropna().unique().tolist())
        else:
            known = _numbers(train[target])
            known = known[np.isfinite(known)]
            target_mean, target_std = float(known.mean()), _spread(known)
        return cls(
            target=target,
            kind=kind,
            numeric=list(numeric),
            categorical=list(categorical),
            fill=dict(mean),
            mean=mean,
            std={column: _spread(v) for column, v in observed.items()},
            indicators=[c for c in numeric if not np.isfinite(values[c]).all()],
            categories={c: sorted(_as_strings(train[c]).dropna().unique().tolist())
                        for c in categorical},
            input_types={**{c: "double" for c in numeric},
                         **{c: _categorical_type(train[c]) for c in categorical}},
            classes=classes,
            target_mean=target_mean,
            target_std=target_std,
        )

    def features(self, table: pd.DataFrame) -> torch.Tensor:
        """float32 ``(rows, numeric_width + len(categorical))``: standardized numerics,
        their "was missing" indicators, then category codes.

        Missing values, values that are not numbers in a numeric column, and unseen
        categories are accepted, as they will occur in production: imputed, or code 0.
        """
        absent = [c for c in self.feature_names if c not in table.columns]
        if absent:
            raise ValueError(f"the table has no feature column {', '.join(map(repr, absent))}; "
                             f"the model reads {', '.join(map(repr, self.feature_names))}")
        numbers = np.empty((len(table), len(self.numeric)), dtype=np.float64)
        for i, column in enumerate(self.numeric):
            numbers[:, i] = _numbers(table[column])
        missing = ~np.isfinite(numbers)
        fill = np.array([self.fill[c] for c in self.numeric], dtype=np.float64)
        numbers = np.where(missing, fill, numbers)
        mean = np.array([self.mean[c] for c in self.numeric], dtype=np.float64)
        std = np.array([self.std[c] for c in self.numeric], dtype=np.float64)
        flags = missing[:, [self.numeric.index(c) for c in self.indicators]]
        codes = np.empty((len(table), len(self.categorical)), dtype=np.float64)
        for i, column in enumerate(self.categorical):
            strings = _as_strings(table[column])
            codes[:, i] = _positions(self.categories[column], strings) + 1  # -1 -> 0
        matrix = np.concatenate([(numbers - mean) / std, flags, codes], axis=1)
        return torch.from_numpy(matrix.astype(np.float32))

    def targets(self, table: pd.DataFrame) -> torch.Tensor:
        """Class indices (int64), or the target standardized (float32, ``(rows,)``).

        A row without a usable target, or of a class the model does not know, has no
        target to compare with: it is an error here (prepare_table sets such rows aside).
        """
        if self.target not in table.columns:
            raise ValueError(f"the table has no target column {self.target!r}")
        if self.kind == "classification":
            labels = _as_strings(table[self.target])
            indices = _positions(self.classes, labels)
            unknown = labels[indices < 0]
            if len(unknown):
                shown = ", ".join(map(repr, unknown.fillna("<missing>").unique()[:10]))
                raise ValueError(f"{len(unknown)} rows of target column {self.target!r} hold "
                                 f"no known class: {shown}; the classes are {self.classes}")
            return torch.from_numpy(indices.astype(np.int64))
        values = _numbers(table[self.target])
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise ValueError(f"{bad} rows of target column {self.target!r} hold no number")
        return torch.from_numpy(((values - self.target_mean) / self.target_std)
                                .astype(np.float32))

    def output_to_values(self, outputs: torch.Tensor) -> torch.Tensor:
        """A regression model's outputs, ``(rows,)`` or ``(rows, 1)``, in the target's
        own units: the model learns the standardized target."""
        if self.kind != "regression":
            raise ValueError("output_to_values is for regression; a classifier's outputs "
                             "are class scores")
        return outputs.reshape(-1).float() * self.target_std + self.target_mean

    @property
    def numeric_width(self) -> int:
        return len(self.numeric) + len(self.indicators)

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, code 0 (unknown or missing) included."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    @property
    def model_arguments(self) -> dict[str, Any]:
        """The shapes a model of this table takes (:class:`~kedro_torch.pytorch.models.
        TabularMLP`'s, and what a model of the user's own may name)."""
        return {"numeric_features": self.numeric_width, "cardinalities": self.cardinalities,
                "num_outputs": len(self.classes or []) or 1}

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def feature_columns(self) -> dict[str, list[int]]:
        """Each of the user's columns and the columns of :meth:`features` made from it,
        so that permuting a column permutes its missing-value indicator with it."""
        columns = {c: [i] for i, c in enumerate(self.numeric)}
        for i, column in enumerate(self.indicators):
            columns[column].append(len(self.numeric) + i)
        for i, column in enumerate(self.categorical):
            columns[column] = [self.numeric_width + i]
        return columns

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TablePreprocessing:
        return cls(**values)


def infer_columns(table: pd.DataFrame, target: str, drop: Sequence[str],
                  numeric: Sequence[str] | None = None,
                  categorical: Sequence[str] | None = None,
                  key: str = "data.table") -> tuple[list[str], list[str]]:
    """The numeric and categorical feature columns, in the table's order where inferred.

    A list not given is inferred from the dtypes of the columns nobody named: numbers
    (bool excluded) are numeric; strings, objects, categories and bools categorical.
    Columns of other dtypes (dates, durations) are left out unless listed.
    """
    columns = list(table.columns)
    if target not in columns:
        raise DataError(f"{key}.target: the table has no column {target!r}; "
                        f"its columns are {_names(columns)}")
    lists = {"numeric": list(numeric or []), "categorical": list(categorical or []),
             "drop": list(drop)}
    for name, listed in lists.items():
        unknown = [c for c in listed if c not in columns]
        if unknown:
            raise DataError(f"{key}.{name}: the table has no column {_names(unknown)}; "
                            f"its columns are {_names(columns)}")
        if target in listed:
            raise DataError(f"{key}.{name} lists the target column {target!r} ({key}.target)")
    for first, second in (("numeric", "categorical"), ("numeric", "drop"),
                          ("categorical", "drop")):
        both = [c for c in lists[first] if c in lists[second]]
        if both:
            raise DataError(f"{key}.{first} and {key}.{second} both list {_names(both)}")
    named = {target, *lists["numeric"], *lists["categorical"], *lists["drop"]}
    free = [c for c in columns if c not in named]
    if numeric is None:
        lists["numeric"] = [c for c in free if _is_number(table[c].dtype)]
    if categorical is None:
        lists["categorical"] = [c for c in free if _is_category(table[c].dtype)]
    if not lists["numeric"] and not lists["categorical"]:
        raise DataError(f"no feature column is left besides the target {target!r} "
                        f"({key}.target) and {key}.drop; the table's columns are "
                        f"{_names(columns)}")
    return lists["numeric"], lists["categorical"]


@dataclass(frozen=True)
class PreparedTable:
    """A table made ready for training.

    ``model_input``: the usable rows, their own columns plus ``row`` (0-based position
    in the raw table), ``content_hash``, ``target`` (class index, or the target as a
    float) and ``split``. ``label_map``: class name -> index ({} for regression).
    ``preprocessing``: :meth:`TablePreprocessing.to_dict`, fitted on the train rows.
    ``report``: the data-quality report, JSON-able.
    """

    model_input: pd.DataFrame
    label_map: dict[str, int]
    preprocessing: dict[str, Any]
    report: dict[str, Any]


def prepare_table(table: pd.DataFrame, config: DataConfig, kind: Kind,
                  key: str = "data") -> PreparedTable:
    """Choose the columns, set aside rows without a usable target, split, fit the
    preprocessing on the train rows and report on the data.

    A row without a target, or (regression) whose target is not a number, cannot be
    learnt from nor scored, but the rest of the table can: it is set aside and listed
    in the report, not an error. Everything else wrong stops the run naming the key.
    """
    columns, split = config.table, config.split
    clashing = [c for c in ADDED_COLUMNS if c in table.columns]
    if clashing:
        raise DataError(f"the table's columns {_names(clashing)} clash with columns the "
                        f"pipeline adds ({_names(ADDED_COLUMNS)}); rename them")
    if split.group_column is not None and split.group_column not in table.columns:
        raise DataError(f"{key}.split.group_column: the table has no column "
                        f"{split.group_column!r}; its columns are {_names(table.columns)}")
    numeric, categorical = infer_columns(table, columns.target, columns.drop, columns.numeric,
                                         columns.categorical, f"{key}.table")
    target = columns.target
    if table.empty:
        raise DataError("the table has no rows")
    set_aside, target_values = _usable_targets(table[target], kind, f"{key}.table.target")
    usable_mask = target_values.notna().to_numpy()
    if not usable_mask.any():
        raise DataError(f"no row of the table has a usable target in column {target!r} "
                        f"({key}.table.target): all {len(table)} rows are set aside, e.g. "
                        f"row {set_aside[0]['row']}: {set_aside[0]['reason']}")
    usable = table[usable_mask].reset_index(drop=True)
    target_values = target_values[usable_mask].reset_index(drop=True)
    features = [*numeric, *categorical]
    feature_hash = _row_hashes(usable, features)
    content_hash = _row_hashes(usable, [*features, target])
    groups = usable[split.group_column].tolist() if split.group_column else None
    assignment = assign_splits(split_keys(content_hash, groups), split.fractions, split.seed)
    if kind == "classification":
        missed = _check_classes(target_values, assignment, split.fractions, f"{key}.split")
        label_map = encode_labels(target_values.unique().tolist())
        encoded, rule = target_values.map(label_map).astype("int64"), HASH_RULE
        described_target = _class_counts(target_values, missed)
    else:
        if not (assignment == "train").any():
            raise DataError(f"no row fell in the train split under {key}.split.seed "
                            f"{split.seed}; change {key}.split.seed or add rows")
        label_map, encoded, rule = {}, target_values.astype("float64"), REGRESSION_RULE
        described_target = _target_summary(encoded.to_numpy())
    model_input = usable.assign(
        row=np.flatnonzero(usable_mask), content_hash=content_hash.to_numpy(),
        target=encoded.to_numpy(), split=assignment,
    )
    train = model_input[model_input["split"] == "train"]
    preprocessing = TablePreprocessing.fit(train, target, numeric, categorical, kind)
    described = _column_report(table, target, numeric, categorical, columns.drop)
    report = {
        "kind": kind,
        "rows": len(table),
        "usable_rows": len(model_input),
        "columns": described,
        "constant_columns": [c for c, d in described.items() if d["distinct"] <= 1],
        "high_cardinality_columns": [c for c in categorical
                                     if described[c]["distinct"] > columns.max_categories],
        "max_categories": columns.max_categories,
        "duplicate_rows": _duplicates(feature_hash, content_hash),
        "target": described_target,
        "set_aside": set_aside,
        "split_sizes": {s: int((assignment == s).sum()) for s in SPLITS},
        "split_rule": rule,
    }
    _log(report)
    return PreparedTable(model_input, label_map, preprocessing.to_dict(), report)


# --- values --------------------------------------------------------------------------


def _numbers(values: pd.Series) -> np.ndarray:
    """float64 values; what does not parse as a number is NaN."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _as_strings(values: pd.Series) -> pd.Series:
    """Each value as the string a category or class is known by; missing or blank: NaN.

    An integral number is written without ``.0``, since a column of integers becomes
    floats as soon as one value is missing.
    """
    if _is_number(values.dtype):
        numbers = _numbers(values)
        whole = np.isfinite(numbers) & (numbers % 1 == 0) & (np.abs(numbers) < 2**53)
        text = numbers.astype(str).astype(object)
        text[whole] = numbers[whole].astype(np.int64).astype(str)
        strings = pd.Series(text, index=values.index).astype(str)
    else:
        strings = values.astype(str)
    blank = values.isna() | (strings.str.strip() == "")
    return strings.where(~blank, np.nan)


def _positions(known: list[str], strings: pd.Series) -> np.ndarray:
    """Each string's position in ``known``; -1 for a missing or unknown one."""
    return pd.Index(known, dtype=strings.dtype).get_indexer(strings)


def _spread(values: np.ndarray) -> float:
    """The standard deviation to divide by: 1 where there is none (a constant column)."""
    std = float(values.std()) if len(values) else 0.0
    return std if np.isfinite(std) and std > 0 else 1.0


def _is_number(dtype: Any) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _is_category(dtype: Any) -> bool:
    return (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
            or isinstance(dtype, pd.StringDtype | pd.CategoricalDtype))


def _categorical_type(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(values.dtype):
        return "long"
    return "double" if _is_number(values.dtype) else "string"


def _usable_targets(values: pd.Series, kind: Kind, key: str
                    ) -> tuple[list[dict[str, Any]], pd.Series]:
    """The rows set aside, with why, and the target of each row (NaN where set aside):
    a class name, or a finite number."""
    column = values.name
    strings = _as_strings(values)
    absent = strings.isna()
    if kind == "classification":
        targets, unusable = strings, absent.to_numpy()
    else:
        numbers = _numbers(values)
        unusable = ~np.isfinite(numbers)
        targets = pd.Series(np.where(unusable, np.nan, numbers), index=values.index)
    set_aside = [
        {"row": int(row),
         "reason": f"no target in column {column!r} ({key})" if absent.iloc[row] else
                   f"target {values.iloc[row]!r} in column {column!r} ({key}) is not a "
                   "finite number"}
        for row in np.flatnonzero(unusable)
    ]
    return set_aside, targets


def _row_hashes(table: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """A hex hash of each row's values in ``columns``, the same whatever the table
    around the row: numbers are hashed as float64 and everything else as its string,
    so an integer column that gains a missing value (and becomes float) keeps its
    rows' hashes."""
    canonical = pd.DataFrame(
        {c: (_numbers(table[c]) if _is_number(table[c].dtype) else _as_strings(table[c]))
         for c in sorted(columns, key=str)},
        index=table.index,
    )
    hashes = pd.util.hash_pandas_object(canonical, index=False).to_numpy()
    digits = np.frombuffer(hashes.astype(">u8").tobytes().hex().encode(), dtype="S16")
    return pd.Series(digits.astype(str), index=table.index, dtype=object)


def _check_classes(labels: pd.Series, assignment: np.ndarray, fractions: dict[str, float],
                   key: str) -> dict[str, list[str]]:
    """Stop on a class with too few rows to split, else check the split as for images
    (a class without training rows stops the run); return the splits some class missed."""
    too_small = classes_too_small(labels.value_counts().sort_index(), fractions)
    if too_small:
        raise DataError(
            f"classes with too few rows for {key} (at least {images_needed(fractions)} "
            f"each for {', '.join(f'{s} {fractions[s]:g}' for s in SPLITS)}): "
            + ", ".join(f"{label!r} ({n})" for label, n in too_small.items())
        )
    return check_split(labels.tolist(), assignment, fractions, key)


# --- report --------------------------------------------------------------------------


def _column_report(table: pd.DataFrame, target: str, numeric: list[str],
                   categorical: list[str], drop: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each column's dtype, missing and distinct values, and role; "unused" for a
    column neither named nor inferred (a date, say). A numeric column also lists the
    rows whose value is there but is no number ("12 g", say): training and the served
    model take those as missing, and the user should know which they are."""
    roles = {target: "target", **{c: "numeric" for c in numeric},
             **{c: "categorical" for c in categorical}, **{c: "dropped" for c in drop}}
    described = {
        c: {"dtype": str(table[c].dtype), "missing": int(table[c].isna().sum()),
            "distinct": int(table[c].nunique()), "role": roles.get(c, "unused")}
        for c in table.columns
    }
    for column in numeric:
        unparsed = table[column].notna().to_numpy() & ~np.isfinite(_numbers(table[column]))
        rows = np.flatnonzero(unparsed)
        described[column]["not_numbers"] = {"count": len(rows),
                                            "rows": rows[:MAX_LISTED_ROWS].tolist()}
    return described


def _duplicates(feature_hash: pd.Series, content_hash: pd.Series) -> dict[str, int]:
    """Copies of usable rows (features and target), and sets of rows whose features
    agree but whose targets do not: these the model cannot all get right."""
    repeated = content_hash.duplicated(keep=False)
    targets_per_features = content_hash.groupby(feature_hash).nunique()
    return {
        "rows": int(repeated.sum()),
        "extra_copies": int(repeated.sum()) - int(content_hash[repeated].nunique()),
        "same_features_different_target": int((targets_per_features > 1).sum()),
    }


def _class_counts(labels: pd.Series, missed: dict[str, list[str]]) -> dict[str, Any]:
    return {"counts": {str(k): int(v) for k, v in labels.value_counts().sort_index().items()},
            "classes_missing_from_split": missed}


def _target_summary(values: np.ndarray) -> dict[str, Any]:
    return {
        "min": float(values.min()), "max": float(values.max()),
        "mean": float(values.mean()), "std": float(values.std()),
        "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in QUANTILES},
    }


def _log(report: dict[str, Any]) -> None:
    if report["set_aside"]:
        logger.warning("Set aside %d of %d rows without a usable target (see the data-quality "
                       "report)", len(report["set_aside"]), report["rows"])
    if report["constant_columns"]:
        logger.warning("Constant columns: %s", _names(report["constant_columns"]))
    if report["high_cardinality_columns"]:
        logger.warning("Categorical columns with more than %d distinct values: %s",
                       report["max_categories"], _names(report["high_cardinality_columns"]))
    logger.info("Split sizes: %s", report["split_sizes"])


def _names(columns: Sequence[Any]) -> str:
    return ", ".join(map(repr, columns))
