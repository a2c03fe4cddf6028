"""Feature frame -> the boosted trees' input matrix in one vectorised step.

The logged pipeline gets there with the `encode` ColumnTransformer (ordinal codes for the categorical columns,
numeric columns passed through). It validates and indexes pandas frames column by column, which costs about a
millisecond per call: most of the time of scoring one customer. `TreeInput` replays the same mapping with one
dictionary per categorical column and one numpy conversion for the numeric block.

It is exact by construction and checked: the per-category codes are read from the sklearn steps themselves
(every known category, a missing value and an unknown one are pushed through them at construction), and the
result for that probe must equal the sklearn path bit for bit, or `TreeInput` refuses to build (the caller then
uses the sklearn path). The tests compare both paths on real data too.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from features.engine import FeatureSchema

_UNKNOWN = "\x00churnsense-unknown-category\x00"
_DICT_LOOKUP_ROWS = 256  # below this, a Python dict lookup beats building a pandas index
_FEW_ROWS = 64  # a request's customers: below this, `numeric_block` goes through Python objects


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def categorical_values(values: pd.Series) -> np.ndarray:
    """Text values as an object array with None for missing (what `prepare_features` gives the encoder)."""
    if not pd.api.types.is_string_dtype(values.dtype):
        values = values.astype("string")
    out = values.to_numpy(dtype=object, na_value=None)
    missing = pd.isna(out)
    if missing.any():  # NaN in an object column: the encoder's None
        out = out.copy()
        out[missing] = None
    return out


@functools.lru_cache(maxsize=64)
def _positions(names: tuple[str, ...], wanted: tuple[str, ...]) -> np.ndarray:
    """Where each of `wanted` is among `names` (-1: absent); the same two lists come with every request."""
    positions = pd.Index(names).get_indexer(wanted)
    positions.flags.writeable = False
    return positions


def numeric_block(features: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Numeric columns as one float64 matrix, non-numbers as NaN (what `prepare_features` gives the encoder)."""
    if not columns:
        return np.empty((len(features), 0))
    # By position: a label lookup of ~70 columns costs more than scoring one customer online. (`tolist` first:
    # iterating a `str` Index is 6x slower.)
    positions = _positions(tuple(features.columns.tolist()), tuple(columns))
    if (positions < 0).any():
        raise KeyError(
            f"features lack column(s): {[c for c, p in zip(columns, positions, strict=True) if p < 0]}"
        )
    if len(features) <= _FEW_ROWS:
        block = _plain_numbers(features.to_numpy(dtype=object)[:, positions])
        if block is not None:
            return block
    frame = features.iloc[:, positions]
    if all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):
        return frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.column_stack(
        [
            pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            for c in columns
        ]
    )


def _plain_numbers(values: np.ndarray) -> np.ndarray | None:
    """Python numbers (what a frame's numeric columns become as objects) as float64, the same doubles pandas'
    conversion gives; None when any value is something else (a text, a bool, pd.NA: the general path)."""
    if all(type(v) is float or type(v) is int for v in values.flat):
        return values.astype(np.float64)
    return None


def _texts_as_they_are(values: np.ndarray) -> np.ndarray | None:
    """Texts and missing values as `categorical_values` gives them (None for missing); None when any value is
    something else (a number in a text column: the general path turns it into its text)."""
    out = values.copy()
    for i, value in enumerate(values):
        if type(value) is str:
            continue
        if value is None or value is pd.NA or (type(value) is float and value != value):
            out[i] = None
        else:
            return None
    return out


def few_rows(
    features: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """A request's few rows: (`numeric_block(features, numeric)`, `categorical_values` of each of
    `categorical`) from one conversion of the whole frame to Python objects, ~4x cheaper than pandas selecting
    the columns one by one; None for more rows, a missing column or a value of another kind (the caller then
    takes the general path, which gives the same values or names the problem)."""
    if len(features) > _FEW_ROWS:
        return None
    names = tuple(features.columns.tolist())
    numbers, texts = _positions(names, tuple(numeric)), _positions(names, tuple(categorical))
    if (numbers < 0).any() or (texts < 0).any():
        return None
    values = features.to_numpy(dtype=object)
    block = _plain_numbers(values[:, numbers])
    if block is None:
        return None
    columns = []
    for position in texts.tolist():
        column = _texts_as_they_are(values[:, position])
        if column is None:
            return None
        columns.append(column)
    return block, columns


class TreeInput:
    """Maps a feature frame to the trees' input columns, identically to the fitted `encode` step.

    Attributes:
        categorical: categorical feature names (in the trees' column order among themselves).
        numeric: numeric feature names the trees use.
    """

    def __init__(self, schema: FeatureSchema, encode: Any, slow: Any) -> None:
        """
        Args:
            schema: the model's feature schema.
            encode: the fitted pipeline steps before the classifier.
            slow: prepared frame -> trees' input via sklearn (the reference this class must equal).
        Raises:
            ValueError: the fast mapping does not reproduce the sklearn path on the probe.
        """
        self.trees_columns = [str(n) for n in encode.get_feature_names_out()]
        categorical_set = set(schema.profile_categorical)
        self.categorical = [c for c in self.trees_columns if c in categorical_set]
        self.numeric = [c for c in self.trees_columns if c not in categorical_set]
        self._positions = {name: i for i, name in enumerate(self.trees_columns)}
        self._schema = schema
        self._codes: dict[str, dict[str, float]] = {}
        self._missing_code: dict[str, float] = {}
        self._unknown_code: dict[str, float] = {}
        probe, raw = self._probe(encode)
        reference = slow(probe)
        for name in self.categorical:
            column = reference[:, self._positions[name]]
            self._codes[name] = {
                v: float(column[i]) for i, v in enumerate(raw[name]) if v not in (None, _UNKNOWN)
            }
            # The probe's last two rows hold a missing and an unknown value (see `_probe`).
            self._missing_code[name] = float(column[-2])
            self._unknown_code[name] = float(column[-1])
        if not np.array_equal(self.transform(probe)[0], reference, equal_nan=True):
            raise ValueError("fast tree input does not reproduce the sklearn encoding on the probe")

    def _probe(self, encode: Any) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """Every known category of each categorical column, then None and an unknown value (the last two rows);
        numbers with NaN. Returns the frame and the categorical columns as built (before pandas sees them)."""
        known: dict[str, set[str]] = {}
        column_transformer = encode[-1] if hasattr(encode, "steps") else encode
        for name, transformer, columns in column_transformer.transformers_:
            if name == "categorical":
                for column, categories in zip(columns, transformer.categories_, strict=True):
                    known[column] = {c for c in categories if isinstance(c, str)}
        rows = max([len(v) for v in known.values()] + [1]) + 2
        data: dict[str, Any] = {}
        for name in self._schema.feature_names():
            if name in set(self._schema.profile_categorical):
                values = sorted(known.get(name, set()))
                cycle = [*values, None, _UNKNOWN] if values else [None, _UNKNOWN]
                data[name] = np.asarray([cycle[i % len(cycle)] for i in range(rows)], dtype=object)
                # Ensure None and the unknown value are present even when the column has the most categories.
                data[name][-2:] = [None, _UNKNOWN]
            else:
                numbers = np.linspace(-3.0, 1000.0, rows)
                numbers[::3] = np.nan
                data[name] = numbers
        frame = pd.DataFrame(data, columns=self._schema.feature_names())
        for name in self._schema.profile_categorical:
            frame[name] = frame[name].astype(object)
        return frame, {name: data[name] for name in self._schema.profile_categorical}

    def transform(self, features: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(trees' input matrix, the feature values as the model saw them: float64 or text/None per column)."""
        n = len(features)
        out = np.empty((n, len(self.trees_columns)))
        few = few_rows(features, self.numeric, self.categorical)
        numeric = few[0] if few is not None else numeric_block(features, self.numeric)
        values: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.numeric):
            out[:, self._positions[name]] = numeric[:, j]
            values[name] = numeric[:, j]
        for k, name in enumerate(self.categorical):
            text = few[1][k] if few is not None else categorical_values(features[name])
            values[name] = text
            codes, missing, unknown = self._codes[name], self._missing_code[name], self._unknown_code[name]
            if n <= _DICT_LOOKUP_ROWS:
                out[:, self._positions[name]] = [
                    missing if v is None else codes.get(v, unknown) for v in text
                ]
            else:
                index = pd.Index(list(codes), dtype=object)
                table = np.asarray(list(codes.values()), dtype=np.float64)
                found = index.get_indexer(text)
                mapped = np.where(found >= 0, table[np.maximum(found, 0)], unknown)
                out[:, self._positions[name]] = np.where(pd.isna(text), missing, mapped)
        return out, values
