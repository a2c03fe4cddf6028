"""A time-to-churn model: each customer's survival curve from the same features as the churn model.

    model = SurvivalModel.load("models:/churnsense-survival@champion")
    model.summary(features)      # survival_30d, survival_60d, survival_90d, expected_days_to_churn
    model.curves(features, [7, 30, 365])

The model is a scikit-learn pipeline (`survival_design`: median-imputed, standardised numbers with missing
flags, one-hot categories; then a scikit-survival estimator: ridge Cox, gradient-boosted Cox trees or a random
survival forest) over the columns of its own `FeatureSchema` (the churn schema less the columns it must not
read, such as a tenure that is its target). `expected_days_to_churn` is the median survival time: the first day
the curve reaches 0.5, or missing when it stays above 0.5 for as long as the training data followed customers
(`followup_days`: answer "more than that").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from features.engine import FeatureSchema
from models.churn import prepare_features

logger = logging.getLogger(__name__)


def missing_as_nan(values: Any) -> np.ndarray:
    """Categorical input with every missing value as NaN: `prepare_features` gives None for a column that is
    all missing (one customer online) and pandas NaN in a column with text, and the imputer must see both."""
    out = np.array(values, dtype=object)
    out[pd.isna(out)] = np.nan
    return out


def survival_design(schema: FeatureSchema) -> Any:
    """The pipeline's first step: the schema's prepared features -> a dense float matrix for survival models."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    categorical = list(schema.profile_categorical)
    numeric = [c for c in schema.feature_names() if c not in set(categorical)]
    numbers = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True), StandardScaler()
    )
    categories = make_pipeline(
        FunctionTransformer(missing_as_nan, feature_names_out="one-to-one"),
        SimpleImputer(strategy="constant", fill_value="(missing)", keep_empty_features=True),
        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
    )
    return ColumnTransformer([("numbers", numbers, numeric), ("categories", categories, categorical)])


def single_threaded(estimator: Any) -> Any:
    """A fitted forest predicts tree by tree in order (one job): with several, trees' curves are added in the
    order threads finish, and a customer's curve would differ from one call to the next in the last bits."""
    if hasattr(estimator, "n_jobs"):
        estimator.n_jobs = 1
    return estimator


class SurvivalModel:
    """A fitted survival pipeline with its feature schema and the days its answers report."""

    def __init__(
        self,
        pipeline: Any,
        schema: FeatureSchema,
        report_days: Sequence[int] = (30, 60, 90),
        followup_days: float = float("nan"),
        version: str | None = None,
        uri: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.schema = schema
        self.report_days = tuple(int(d) for d in report_days)
        self.followup_days = float(followup_days)  # the longest time training followed a customer
        self.version, self.uri = version, uri

    @property
    def kind(self) -> str:
        return type(self.pipeline[-1]).__name__

    def _input(self, features: pd.DataFrame) -> pd.DataFrame:
        return prepare_features(features, self.schema)

    def risk(self, features: pd.DataFrame) -> np.ndarray:
        """The estimator's risk score (higher: churns sooner), what concordance is computed from."""
        if len(features) == 0:
            return np.zeros(0)
        return np.asarray(self.pipeline.predict(self._input(features)), dtype=np.float64)

    def curves(self, features: pd.DataFrame, days: Sequence[float]) -> np.ndarray:
        """S(t) for each customer (rows) at each of `days` (columns): 1 before the first churn the model knows,
        its last value after the follow-up."""
        days = np.asarray(days, dtype=np.float64)
        if len(features) == 0:
            return np.zeros((0, len(days)))
        functions = self.pipeline.predict_survival_function(self._input(features))
        out = np.empty((len(functions), len(days)))
        for i, function in enumerate(functions):
            times, values = function.x, function.y
            index = np.searchsorted(times, days, side="right") - 1  # the step at or before each day
            out[i] = np.where(index < 0, 1.0, values[np.clip(index, 0, len(values) - 1)])
        return out

    def medians(self, features: pd.DataFrame) -> np.ndarray:
        """The first day each curve reaches 0.5 (NaN when it stays above it for the whole follow-up)."""
        if len(features) == 0:
            return np.zeros(0)
        functions = self.pipeline.predict_survival_function(self._input(features))
        out = np.full(len(functions), np.nan)
        for i, function in enumerate(functions):
            below = np.flatnonzero(function.y <= 0.5)
            if below.size:
                out[i] = float(function.x[below[0]])
        return out

    def summary(self, features: pd.DataFrame) -> pd.DataFrame:
        """Per customer: `survival_<d>d` for the report days and `expected_days_to_churn` (the median)."""
        curves = self.curves(features, self.report_days)
        columns = {f"survival_{d}d": curves[:, j] for j, d in enumerate(self.report_days)}
        columns["expected_days_to_churn"] = self.medians(features)
        return pd.DataFrame(columns, index=features.index)

    @classmethod
    def load(cls, uri: str) -> SurvivalModel:
        """From a registry or run URI (or a local MLflow model folder) that `churnsense train survival` logged."""
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException
        from mlflow.models import get_model_info

        from models.catalog import resolve_model_uri

        concrete, version = resolve_model_uri(uri)
        try:
            metadata = get_model_info(concrete).metadata or {}
            pipeline = mlflow.sklearn.load_model(concrete)
        except MlflowException as error:
            raise UserError(f"survival model {uri}: cannot load ({error.message})") from None
        if "feature_schema" not in metadata:
            raise UserError(
                f"survival model {uri}: no feature schema in its metadata (not a churnsense model)"
            )
        schema = FeatureSchema.from_json(metadata["feature_schema"])
        report = json.loads(metadata.get("report_days", "[30, 60, 90]"))
        followup = float(metadata.get("followup_days", "nan"))
        return cls(pipeline, schema, report, followup, version=version, uri=concrete)
