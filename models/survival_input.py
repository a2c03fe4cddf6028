"""The survival model's input for a few rows, without scikit-learn's per-call overhead.

`survival_design` (median imputation with missing flags and standardisation for numbers, a constant for missing
categories and one-hot) costs ~11 ms for one customer through pandas and the fitted `ColumnTransformer`, three
times the churn model's whole answer. `FastDesign` reads the fitted steps' statistics once and applies the same
elementwise arithmetic in NumPy: the same numbers, bit for bit (`tests/unit/test_survival_model.py` compares them
on missing values, unknown categories and every kind of model). Any pipeline of another shape gets None, and the
model uses scikit-learn's steps (the same numbers, slower).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.engine import FeatureSchema
from models.tree_input import categorical_values, few_rows, numeric_block

MISSING_CATEGORY = "(missing)"


class FastDesign:
    def __init__(self, design: Any, schema: FeatureSchema) -> None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        self.categorical = list(schema.profile_categorical)
        self.numeric = [c for c in schema.feature_names() if c not in set(self.categorical)]
        fitted = {name: steps for name, steps, _ in design.transformers_ if name in ("numbers", "categories")}
        numbers = fitted["numbers"]
        imputer, scaler = numbers.steps[0][1], numbers.steps[1][1]
        if not (isinstance(imputer, SimpleImputer) and isinstance(scaler, StandardScaler)):
            raise ValueError("unexpected numeric steps")
        self.medians = np.asarray(imputer.statistics_, dtype=np.float64)
        self.flagged = np.asarray(
            imputer.indicator_.features_ if imputer.add_indicator else [], dtype=np.int64
        )
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        self.categories: list[np.ndarray] = []
        if self.categorical:
            encoder = fitted["categories"].steps[-1][1]
            if not isinstance(encoder, OneHotEncoder) or encoder.drop_idx_ is not None:
                raise ValueError("unexpected categorical steps")
            self.categories = [np.asarray(c, dtype=object) for c in encoder.categories_]
        if len(self.mean) != len(self.numeric) + len(self.flagged):
            raise ValueError("the scaler does not see the imputed numbers and their flags")

    @classmethod
    def of(cls, design: Any, schema: FeatureSchema) -> FastDesign | None:
        try:
            return cls(design, schema)
        except (ValueError, KeyError, AttributeError, IndexError, TypeError):
            return None

    def transform(self, features: pd.DataFrame) -> np.ndarray | None:
        """The design matrix of `features` (engine output), or None when a column is not plain numbers."""
        few = few_rows(features, self.numeric, self.categorical)
        try:
            raw = few[0] if few is not None else numeric_block(features, self.numeric)
        except (TypeError, ValueError):
            return None
        missing = np.isnan(raw)
        imputed = np.where(missing, self.medians, raw)
        numbers = np.hstack([imputed, missing[:, self.flagged].astype(np.float64)])
        numbers -= self.mean
        numbers /= self.scale
        blocks = [numbers]
        for k, (name, categories) in enumerate(zip(self.categorical, self.categories, strict=True)):
            text = few[1][k] if few is not None else categorical_values(features[name])
            text[pd.isna(text)] = MISSING_CATEGORY
            blocks.append((text[:, None] == categories[None, :]).astype(np.float64))
        return np.hstack(blocks)
