"""A time-to-churn model: each customer's survival curve from the same features as the churn model.

    model = SurvivalModel.load("models:/churnsense-survival@champion")
    model.check_fits(churn_model)   # the churn model's features are enough to answer (and mean the same)
    model.summary(features)         # survival_30d, survival_60d, survival_90d, expected_days_to_churn, ...
    model.curves(features, [7, 30, 365])

The model is a scikit-learn pipeline (`survival_design`: median-imputed, standardised numbers with missing
flags, one-hot categories; then a scikit-survival estimator: ridge Cox, gradient-boosted Cox trees or a random
survival forest) over the columns of its own `FeatureSchema` (the churn schema less the columns it must not
read, such as a tenure that is its target). Every path that answers churn risk answers time to churn from the
same feature rows, so the two agree customer by customer.

`summary` answers, per customer, from `as_of` on:
- `survival_30d`, `survival_60d`, `survival_90d`: the probability of not having churned that many days later;
- `expected_days_to_churn`: the median, the first day the curve reaches 0.5, or missing when it stays above
  0.5 for as long as training followed customers; then `expected_days_more_than` says for how many days.

A model trained on one-table data (durations are tenures: `customers.duration`) answers for a customer who has
already stayed their current tenure t: S(t + d) / S(t), the curve given they are still here (`start_days`).
A day past the longest follow-up of training is unknown: missing, never the flat end of the curve.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from features.engine import FeatureSchema
from features.survival import UNIT_DAYS
from models.churn import ModelContractError, prepare_features
from models.survival_input import FastDesign

logger = logging.getLogger(__name__)

REPORT_DAYS = (30, 60, 90)  # every answer's survival probabilities: `survival_30d`, ...
SURVIVAL_COLUMNS = tuple(f"survival_{d}d" for d in REPORT_DAYS)
EXPECTED_DAYS, MORE_THAN = "expected_days_to_churn", "expected_days_more_than"
ANSWER_COLUMNS = (*SURVIVAL_COLUMNS, EXPECTED_DAYS, MORE_THAN)


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
    """A fitted survival pipeline with its feature schema and how long training followed customers.

    Attributes:
        followup_days: the longest time training followed a customer: the curve is unknown beyond it.
        tenure: (column, unit) of a one-table model's durations: answers are conditional on the customer's
            current tenure in that (churn feature) column. None for snapshot data: answers start at `as_of`.
        sentiment_lineage / aspect_lineage: the text models behind its text features (None without).
    """

    def __init__(
        self,
        pipeline: Any,
        schema: FeatureSchema,
        followup_days: float = float("nan"),
        version: str | None = None,
        uri: str | None = None,
        tenure: tuple[str, str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.schema = schema
        self.followup_days = float(followup_days)
        self.version, self.uri = version, uri
        self.tenure = tenure
        self.sentiment_lineage: Any = None
        self.aspect_lineage: Any = None
        # scikit-learn's design steps in NumPy for a few rows (the same numbers: models.survival_input).
        self.fast_design = FastDesign.of(pipeline[0], schema) if len(pipeline) > 1 else None

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
        """S(t) for each customer (rows) at each of `days` (columns) since the start of its duration (`as_of`, or
        signup for tenures): 1 before the first churn the model knows, its last value after the follow-up."""
        days = np.asarray(days, dtype=np.float64)
        if len(features) == 0:
            return np.zeros((0, len(days)))
        return np.stack([_at(function, days) for function in self._functions(features)])

    def summary(self, features: pd.DataFrame) -> pd.DataFrame:
        """Per customer (the index of `features`): `ANSWER_COLUMNS`. A customer the model cannot answer for (a
        missing or negative tenure, or one past the follow-up) gets missing values, not a guess."""
        return pd.DataFrame(self.answers(features), index=features.index, columns=list(ANSWER_COLUMNS))

    def answers(self, features: pd.DataFrame) -> np.ndarray:
        """`summary` as a float64 matrix (rows of `features`, columns `ANSWER_COLUMNS`): what the service reads."""
        n = len(features)
        out = np.full((n, len(ANSWER_COLUMNS)), np.nan)
        if n:
            start = self.start_days(features)
            functions = self._functions(features)
            for i, function in enumerate(functions):
                out[i] = self._answer(function, start[i])
        return out

    def _functions(self, features: pd.DataFrame) -> Any:
        """Each row's survival step function."""
        design = None
        if self.fast_design is not None:
            try:
                design = self.fast_design.transform(features)
            except KeyError:  # a column is missing: the slow path names it
                design = None
        if design is None:
            return self.pipeline.predict_survival_function(self._input(features))
        return self.pipeline[-1].predict_survival_function(design)

    def start_days(self, features: pd.DataFrame) -> np.ndarray:
        """Where each customer's answer starts on the curve: day 0 (`as_of`), or for a model of tenures the day
        just before the step its current tenure t was counted at in training (max(ceil(t * unit days), 1)): a
        customer at tenure t is still at risk of the churn recorded at t (it happens during that month), so
        monthly data gives one month's odds at 30 days, two at 60, three at 90, whatever t. NaN when the tenure
        is missing or negative."""
        if self.tenure is None:
            return np.zeros(len(features))
        column, unit = self.tenure
        if column not in features.columns:
            raise ModelContractError(
                f"survival model {self.uri or self.version}: answers given the current tenure, but the features "
                f"lack its column {column!r}"
            )
        raw = pd.to_numeric(features[column], errors="coerce").to_numpy(dtype="float64")
        with np.errstate(over="ignore", invalid="ignore"):
            days = np.maximum(np.ceil(raw * UNIT_DAYS[unit]), 1.0) - 1.0
        days[~np.isfinite(days) | ~(raw >= 0)] = np.nan
        return days

    def _answer(self, function: Any, start: float) -> np.ndarray:
        """One customer's row of `ANSWER_COLUMNS` from its step function, given `start` days survived."""
        answer = np.full(len(ANSWER_COLUMNS), np.nan)
        followup = self.followup_days
        if np.isnan(start) or not start < followup:  # NaN follow-up: nothing is known to be within it
            return answer  # beyond what training saw: no answer is better than the flat end of a curve
        base = float(_at(function, np.asarray([start]))[0])
        if base <= 0.0:
            return answer
        ends = start + np.asarray(REPORT_DAYS, dtype=np.float64)
        within = ends <= followup  # a day past the follow-up is unknown, not the curve's last value
        answer[: len(REPORT_DAYS)] = np.where(within, _at(function, ends) / base, np.nan)
        later = function.x > start
        below = np.flatnonzero(later & (function.y <= 0.5 * base))
        if below.size:
            answer[-2] = float(function.x[below[0]]) - start
        else:
            answer[-1] = followup - start
        return answer

    def medians(self, features: pd.DataFrame) -> np.ndarray:
        """The first day each curve reaches 0.5 (NaN when it stays above it for the whole follow-up)."""
        return self.summary(features)[EXPECTED_DAYS].to_numpy()

    def check_fits(self, churn: Any, what: str = "survival model") -> None:
        """Refuse to answer beside a churn model whose features mean something else or lack what this model
        reads: the same event features (types, windows, values, lifetime, aspects), its profile columns among
        the churn model's, the same sentiment and aspect models (by content), and a tenure column to condition on.

        Raises:
            ModelContractError: naming every difference.
        """
        problems = []
        mine, theirs = self.schema, churn.schema

        def events_only(schema: FeatureSchema) -> FeatureSchema:
            return dataclasses.replace(schema, profile_numeric=(), profile_categorical=())

        if events_only(mine) != events_only(theirs):
            problems.append(
                "its event and text features are not the churn model's (retrain it on the same spec)"
            )
        for kind in ("profile_numeric", "profile_categorical"):
            missing = [c for c in getattr(mine, kind) if c not in getattr(theirs, kind)]
            if missing:
                problems.append(f"it reads {', '.join(missing)}, which the churn model does not ({kind})")
        if self.tenure is not None and self.tenure[0] not in theirs.profile_numeric:
            problems.append(
                f"its answers start at the current tenure {self.tenure[0]!r}, which the churn model does not read"
            )
        for name, own, other in (
            ("sentiment", self.sentiment_lineage, churn.sentiment_lineage),
            ("aspect", self.aspect_lineage, churn.aspect_lineage),
        ):
            if (own is None) != (other is None) or (own is not None and own.scoring_id != other.scoring_id):
                problems.append(
                    f"its {name} model is {own.describe() if own else 'none'}, the churn model's "
                    f"{other.describe() if other else 'none'}"
                )
        if problems:
            raise ModelContractError(
                f"{what} {self.uri or self.version} cannot answer beside churn model v{churn.version}: "
                + "; ".join(problems)
            )

    @classmethod
    def load(cls, uri: str) -> SurvivalModel:
        """From a registry or run URI (or a local MLflow model folder) that `churnsense train survival` logged.

        Raises:
            ModelContractError: it was trained on another feature version.
            UserError: the URI does not resolve to a churnsense survival model.
        """
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException
        from mlflow.models import Model, get_model_info

        from features.engine import FEATURE_VERSION
        from models.catalog import resolve_model_uri
        from models.lineage import AspectLineage, SentimentLineage

        concrete, version = resolve_model_uri(uri)
        try:
            # A local folder (what a Bento carries) is read as it is: get_model_info would ask the tracking store
            # about the logged model, and a served Bento has no store.
            local = Path(concrete)
            metadata = (Model.load(str(local)) if local.exists() else get_model_info(concrete)).metadata or {}
            pipeline = mlflow.sklearn.load_model(concrete)
        except MlflowException as error:
            raise UserError(f"survival model {uri}: cannot load ({error.message})") from None
        if "feature_schema" not in metadata:
            raise UserError(
                f"survival model {uri}: no feature schema in its metadata (not a churnsense model)"
            )
        if str(metadata.get("feature_version")) != FEATURE_VERSION:
            raise ModelContractError(
                f"survival model {uri}: trained on features v{metadata.get('feature_version')}, this code builds "
                f"v{FEATURE_VERSION}; retrain it (churnsense train survival)"
            )
        schema = FeatureSchema.from_json(metadata["feature_schema"])
        if "tenure" not in metadata and not schema.use_events:
            raise ModelContractError(
                f"survival model {uri}: trained on one-table data before answers were given the tenure already "
                "stayed (it would answer every customer as a new one); retrain it (churnsense train survival)"
            )
        followup = float(metadata.get("followup_days", "nan"))
        tenure = json.loads(metadata["tenure"]) if metadata.get("tenure") else None
        model = cls(
            pipeline,
            schema,
            followup,
            version=version,
            uri=concrete,
            tenure=tuple(tenure) if tenure else None,
        )
        if metadata.get("sentiment_model"):
            model.sentiment_lineage = SentimentLineage.from_dict(metadata["sentiment_model"])
        if metadata.get("aspect_model"):
            model.aspect_lineage = AspectLineage.from_dict(metadata["aspect_model"])
        return model


def _at(function: Any, days: np.ndarray) -> np.ndarray:
    """A step function's values at `days`: the step at or before each day, 1 before its first time."""
    times, values = function.x, function.y
    index = np.searchsorted(times, days, side="right") - 1
    return np.where(index < 0, 1.0, values[np.clip(index, 0, len(values) - 1)])
