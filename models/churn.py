"""The churn model at inference time: load a registered version, check its contract, score with reasons.

    model = ChurnModel.load()                         # models:/churnsense-churn@champion
    features = build_customer_features(events, as_of, model.schema, customers=customers)
    model.score(features, top_k=5)                    # churn_risk, risk_band, reasons; index customer_id

The MLflow model is a plain scikit-learn `Pipeline`: `encode` (ordinal codes for the schema's categorical
columns) then `classifier`, a `CalibratedClassifierCV` (one fitted `models.blend.LinearTreesBlend`, a logistic
regression and LightGBM trees blended in log-odds, or, in models trained before the blend, a
`lightgbm.LGBMClassifier` alone; and a sigmoid or isotonic calibrator trained on out-of-fold scores). The
MLmodel `metadata` carries the feature version, the `FeatureSchema` JSON, the column order and the risk-band
cut-offs; `load` refuses a model whose feature version or columns do not match what this code builds.

Reasons are each feature's exact share of the raw log-odds: the blend's weighted linear term plus LightGBM's own
TreeSHAP value of the trees (`pred_contrib`; for small trees looked up in per-tree tables LightGBM fills at load,
`models.tree_contributions`, the same values to rounding at a fraction of the cost), expressed in calibrated
log-odds (the calibrator reads the raw log-odds, the blend's `decision_function`):

- sigmoid calibration: calibrated logit = slope * raw score + intercept, so each raw SHAP value times the slope
  is exact, and a row's contributions add up to logit(churn_risk) - `base_logit`, where `base_logit` is the
  calibrated logit of the expected raw score (the model's reference point; close to, not equal to, the training
  churn rate's log-odds).
- isotonic calibration (only chosen when clearly better calibrated; centred, so it rises strictly between its
  first and last step, `training.churn_calibration.centred`): the map is not linear, so a row's raw SHAP
  values are scaled by one per-row factor (logit(churn_risk) - base_logit) / (raw - expected raw). The
  additivity above still holds exactly; each feature keeps its TreeSHAP sign and its share of the row's total,
  but the values are no longer Shapley values of the calibrated model itself.

Every computation is per row (no batch statistics), so one row and a million rows give bit-identical outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.special import logit

from churnsense.errors import UserError
from features.engine import FEATURE_VERSION, FeatureSchema
from models.blend import LinearTreesBlend
from models.catalog import CHURN_MODEL, champion_uri
from models.reasons import ReasonColumns, reason_dicts, shown_values, top_reasons
from models.tree_contributions import ContributionTables
from models.tree_input import TreeInput

logger = logging.getLogger(__name__)

MODEL_NAME = CHURN_MODEL
CHAMPION_URI = champion_uri(CHURN_MODEL)
RISK_BANDS = ("low", "medium", "high", "critical")
# Probabilities are clipped this far from 0 and 1 before taking log-odds (isotonic can return exact 0 or 1).
_LOGIT_EPS = 1e-9
# Up to this many rows, LightGBM predicts on one thread (starting threads costs more than one row's trees).
_ONE_THREAD_ROWS = 2_000


class ModelContractError(UserError):
    """The model was trained on features this code does not build (version or column order differ)."""


@dataclass(frozen=True)
class RiskCutoffs:
    """Lower bounds of the medium, high and critical bands; below `medium` is low. Strictly ascending in (0, 1)."""

    medium: float = 0.2
    high: float = 0.4
    critical: float = 0.6

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if not all(0.0 < v < 1.0 for v in values) or not (values[0] < values[1] < values[2]):
            raise ValueError(
                f"risk cut-offs must satisfy 0 < medium < high < critical < 1, got {asdict(self)}"
            )

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.medium, self.high, self.critical)

    @classmethod
    def coerce(cls, value: RiskCutoffs | Mapping[str, float] | Sequence[float]) -> RiskCutoffs:
        """From a `RiskCutoffs`, a mapping {medium, high, critical} or three ascending numbers."""
        if isinstance(value, RiskCutoffs):
            return value
        if isinstance(value, Mapping):
            return cls(**{k: float(v) for k, v in value.items()})
        medium, high, critical = (float(v) for v in value)
        return cls(medium, high, critical)


def risk_band(
    probabilities: np.ndarray | Sequence[float], cutoffs: RiskCutoffs | Mapping[str, float] | Sequence[float]
) -> np.ndarray:
    """Band names (`low`, `medium`, `high`, `critical`) for churn probabilities.

    A probability equal to a cut-off falls in the higher band. Shared by the trainer's reports, the service and
    the batch job. Raises `ValueError` on NaN or values outside [0, 1].
    """
    bounds = np.asarray(RiskCutoffs.coerce(cutoffs).as_tuple())
    p = np.asarray(probabilities, dtype=np.float64)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("churn probabilities must be numbers in [0, 1]")
    return np.asarray(RISK_BANDS, dtype=object)[np.searchsorted(bounds, p, side="right")]


def prepare_features(features: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The model's input: the schema's columns in order, numeric as float64, categorical as object with None.

    Training and every scoring path go through this, so the pipeline always sees the same dtypes whatever
    the source (engine output, Parquet, a JSON request). Raises `ModelContractError` naming missing columns.
    """
    columns = schema.feature_names()
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise ModelContractError(
            f"features lack {len(missing)} column(s) the churn model needs: {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else "")
            + " (build them with features.engine.build_customer_features and the model's schema)"
        )
    categorical = set(schema.profile_categorical)
    out: dict[str, np.ndarray] = {}
    for name in columns:
        values = features[name]
        if name in categorical:
            text = values.astype("string")
            out[name] = text.to_numpy(dtype=object, na_value=None)
        else:
            out[name] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    frame = pd.DataFrame(out, index=features.index, columns=columns)
    for name in categorical:
        frame[name] = frame[name].astype(object)  # keep object dtype: pandas 3 would infer `str`
    return frame


class ScoredRows(NamedTuple):
    """`ChurnModel.score`'s columns, one entry per row."""

    churn_risk: np.ndarray
    risk_band: np.ndarray  # band names (object)
    base_value: np.ndarray
    other_contribution: np.ndarray
    reasons: list[list[dict]]


class ChurnModel:
    """A loaded churn model: calibrated probabilities, risk bands and exact per-customer reasons.

    Attributes:
        schema: the `FeatureSchema` the model was trained on (build features with it).
        version: the registry version for `models:/` URIs, else the MLflow run id.
        cutoffs: the risk-band cut-offs stored with the model.
        calibration: "sigmoid" or "isotonic".
        base_logit: the calibrated log-odds every row's contributions start from.
    """

    def __init__(
        self,
        pipeline: Any,
        schema: FeatureSchema,
        cutoffs: RiskCutoffs,
        version: str = "local",
        uri: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.schema = schema
        self.cutoffs = cutoffs
        self.version = version
        self.uri = uri
        self.columns = schema.feature_names()
        # The sentiment model that built the text features it was trained on (None: no text features, or a
        # model trained before lineage was recorded). Set by `load` from the model's metadata.
        self.sentiment_lineage: Any = None
        # The aspect model that labelled the texts its `n_negative_about_*` features count (`AspectLineage`).
        self.aspect_lineage: Any = None
        self._encode = pipeline[:-1]
        calibrated = pipeline[-1]
        pair = calibrated.calibrated_classifiers_[0]
        self._classifier = calibrated
        estimator = pair.estimator
        # A `LinearTreesBlend` (logistic regression + trees), or LightGBM trees alone (models trained before the
        # blend; the same as a blend with linear_weight 0).
        self.blend: LinearTreesBlend | None = estimator if isinstance(estimator, LinearTreesBlend) else None
        trees = estimator.trees_ if self.blend is not None else estimator
        if trees is not None and not hasattr(trees, "booster_"):  # e.g. HistGradientBoosting, before LightGBM
            raise ModelContractError(
                f"churn model {uri or version}: its trees are a {type(trees).__name__}, from an earlier "
                "churnsense; reasons now come from LightGBM trees: retrain it (churnsense train churn)"
            )
        self._trees = trees.booster_ if trees is not None else None
        # TreeSHAP by table lookup for small trees (None: `pred_contrib` itself).
        self._contribution_tables = ContributionTables.build(self._trees) if self._trees is not None else None
        self._calibrator = pair.calibrators[0]
        self.calibration = str(pair.method)
        if self.calibration not in ("sigmoid", "isotonic"):
            raise ModelContractError(f"unsupported calibration method {self.calibration!r}")
        try:
            self._tree_input: TreeInput | None = TreeInput(schema, self._encode, self._slow_trees_input)
        except (ValueError, KeyError, AttributeError) as error:
            # An unexpected pipeline shape: score through the logged sklearn steps instead (same numbers, slower).
            logger.warning("churn model: fast input path unavailable (%s); using the sklearn encoders", error)
            self._tree_input = None
        # Columns the encoder drops (never observed in training, e.g. `days_since_other`) contribute 0.
        position = {str(name): i for i, name in enumerate(self._encode.get_feature_names_out())}
        self._used_columns = np.asarray(
            [i for i, c in enumerate(self.columns) if c in position], dtype=np.int64
        )
        self._encoded_position = np.asarray(
            [position[self.columns[i]] for i in self._used_columns], dtype=np.int64
        )
        # The expected raw score: the trees' is the last column of every `pred_contrib` row; the linear part's is
        # its score at the training means.
        probe = np.full((1, len(position)), np.nan)
        trees_expected = (
            float(self._predict(probe, pred_contrib=True)[0, -1]) if self._trees is not None else 0.0
        )
        if self.blend is not None:
            expected = self.blend.blend(
                np.asarray([self.blend.linear_expected_]), np.asarray([trees_expected])
            )
            self.expected_raw = float(expected[0])
        else:
            self.expected_raw = trees_expected
        if self.calibration == "sigmoid":
            # sklearn's sigmoid calibration: p = expit(-(a * raw + b)).
            self._slope = -float(self._calibrator.a_)
            self._intercept = -float(self._calibrator.b_)
            self.base_logit = self._slope * self.expected_raw + self._intercept
        else:
            self._slope = self._intercept = float("nan")
            base = np.clip(self._calibrate(np.asarray([self.expected_raw])), _LOGIT_EPS, 1 - _LOGIT_EPS)
            self.base_logit = float(logit(base)[0])

    # --- loading -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, uri: str = CHAMPION_URI) -> ChurnModel:
        """Load a logged churn model (`models:/name@alias`, `models:/name/3`, `runs:/id/model` or a local MLflow
        model folder) and check that its feature version and column order match this code.

        Raises:
            ModelContractError: the model was trained on other features; retrain it.
            UserError: the URI does not resolve to a model.
        """
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.models import Model

        from models.catalog import tracking_uri

        if not Path(uri).exists():
            mlflow.set_tracking_uri(tracking_uri())
        try:
            version = _resolve_version(uri)
            # Pin an alias to the version it names now, so a promotion mid-load cannot mix two versions.
            pinned = (
                f"models:/{uri[len('models:/') :].split('@')[0].strip('/')}/{version}" if "@" in uri else uri
            )
            local = uri if Path(uri).exists() else mlflow.artifacts.download_artifacts(artifact_uri=pinned)
            info = Model.load(local)
            pipeline = mlflow.sklearn.load_model(local)
        except MlflowException as error:
            raise UserError(f"churn model {uri}: cannot load ({error.message})") from None
        metadata = info.metadata or {}
        schema = check_contract(metadata, uri)
        if version is None:
            version = info.run_id or Path(local).name
        cutoffs = RiskCutoffs.coerce(metadata.get("risk_cutoffs") or RiskCutoffs())
        model = cls(pipeline, schema, cutoffs, version=str(version), uri=uri)
        if metadata.get("sentiment_model"):
            from models.lineage import SentimentLineage

            model.sentiment_lineage = SentimentLineage.from_dict(metadata["sentiment_model"])
        if metadata.get("aspect_model"):
            from models.lineage import AspectLineage

            model.aspect_lineage = AspectLineage.from_dict(metadata["aspect_model"])
        logger.info(
            "loaded churn model %s (version %s, %s calibration)", uri, model.version, model.calibration
        )
        return model

    # --- scoring -------------------------------------------------------------------------------------------

    def _slow_trees_input(self, features: pd.DataFrame) -> np.ndarray:
        """The trees' input through the logged sklearn steps (the reference `TreeInput` reproduces)."""
        return self._encode.transform(prepare_features(features, self.schema))

    def _trees_input(self, features: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._tree_input is None or not set(self.columns).issubset(features.columns.tolist()):
            prepared = prepare_features(
                features, self.schema
            )  # raises ModelContractError naming what is missing
            values = {c: prepared[c].to_numpy() for c in self.columns}
            return self._encode.transform(prepared), values
        return self._tree_input.transform(features)

    def _predict(self, trees_input: np.ndarray, **kwargs: Any) -> np.ndarray:
        """LightGBM's raw log-odds (`raw_score=True`) or contributions (`pred_contrib=True`); each row on its own
        whatever the thread count, so a customer gives the same bits alone or in a batch."""
        if len(trees_input) == 0:  # LightGBM divides by the row count
            return np.zeros((0, trees_input.shape[1] + 1) if kwargs.get("pred_contrib") else 0)
        threads = 1 if len(trees_input) <= _ONE_THREAD_ROWS else 0  # 0: OpenMP's default
        return self._trees.predict(trees_input, num_threads=threads, **kwargs)

    def _linear_terms(self, trees_input: np.ndarray) -> np.ndarray | None:
        """The blend's linear part per input column (None without a blend): computed once per call, read by
        both the score and its contributions."""
        return self.blend.linear_contributions(trees_input) if self.blend is not None else None

    def _tree_outputs(self, trees_input: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The trees' raw log-odds (LightGBM's `raw_score`, bit for bit) and, when `explain`, each input column's
        TreeSHAP share of them: from the contribution tables in one pass, else from LightGBM."""
        n, width = trees_input.shape
        if self._contribution_tables is not None:
            return self._contribution_tables.evaluate(trees_input, explain)
        if self._trees is None:
            return np.zeros(n), np.zeros((n, width)) if explain else None
        raw = self._predict(trees_input, raw_score=True)
        return raw, self._predict(trees_input, pred_contrib=True)[:, :-1] if explain else None

    def _raw(self, trees_input: np.ndarray, linear: np.ndarray | None, trees: np.ndarray) -> np.ndarray:
        """The classifier's raw log-odds (what the calibrator reads): `LinearTreesBlend.decision_function`'s
        arithmetic on the trees' raw score (what its `tree_score` returns), or the trees' alone. `linear`:
        `_linear_terms`."""
        if self.blend is None:
            return trees
        return self.blend.blend(self.blend.linear_score(trees_input, linear), trees)

    def _raw_contributions(self, linear: np.ndarray | None, trees: np.ndarray) -> np.ndarray:
        """Each input column's share of raw - `expected_raw` (exact: linear terms plus TreeSHAP)."""
        if self.blend is None:
            return trees
        return self.blend.blend(linear, trees)

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The fitted calibrator on raw scores, as `CalibratedClassifierCV.predict_proba` applies it."""
        proba = np.asarray(self._calibrator.predict(raw), dtype=np.float64)
        proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0  # sklearn's own clean-up of rounding above 1
        return proba

    def _scored(
        self, features: pd.DataFrame, explain: bool
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
        """(feature values as the model saw them, churn probabilities, contributions or None).

        Probabilities equal `self.pipeline.predict_proba` bit for bit (tested): the same LightGBM raw scores
        (what `LGBMClassifier.decision_function` returns) through the same calibrator, without sklearn's
        per-call input checks.
        """
        trees_input, values = self._trees_input(features)
        linear = self._linear_terms(trees_input)
        trees, tree_shap = self._tree_outputs(trees_input, explain)
        proba = self._calibrate(self._raw(trees_input, linear, trees))
        if not explain:
            return values, proba, None
        shap = self._raw_contributions(linear, tree_shap)
        raw = np.zeros((trees_input.shape[0], len(self.columns)))
        raw[:, self._used_columns] = shap[:, self._encoded_position]
        if self.calibration == "sigmoid":
            return values, proba, raw * self._slope
        total = shap.sum(axis=1)
        target = logit(np.clip(proba, _LOGIT_EPS, 1 - _LOGIT_EPS)) - self.base_logit
        scale = np.divide(target, total, out=np.zeros_like(total), where=np.abs(total) > 1e-12)
        return values, proba, raw * scale[:, None]

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated churn probability per row of `features` (as built by `build_customer_features`)."""
        return self._scored(features, explain=False)[1]

    def contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Every feature's contribution to every row's calibrated log-odds (columns = `self.columns`).

        Each row sums to logit(churn_risk) - `self.base_logit` (see the module docstring for what else holds).
        """
        _, _, contributions = self._scored(features, explain=True)
        return pd.DataFrame(contributions, index=features.index, columns=self.columns)

    def _reasons(
        self, features: pd.DataFrame, values: dict[str, np.ndarray], top: np.ndarray, picked: np.ndarray
    ) -> list[list[dict]]:
        """`{"feature", "value", "contribution"}` per (row, rank) of `top_reasons`' output."""
        shown = self._shown_values(features, values, top) if top.size else []
        return reason_dicts(self.columns, shown, top, picked)

    def _shown_values(
        self, features: pd.DataFrame, values: dict[str, np.ndarray], top: np.ndarray
    ) -> list[list[float | str | None]]:
        return shown_values(self.columns, set(self.schema.profile_categorical), features, values, top)

    def explain(self, features: pd.DataFrame, top_k: int = 5) -> list[list[dict]]:
        """Per row, the `top_k` features with the largest |contribution| (calibrated log-odds), largest first:
        `{"feature", "value", "contribution"}`; positive pushes towards churn."""
        values, _, contributions = self._scored(features, explain=True)
        return self._reasons(features, values, *top_reasons(contributions, top_k))

    def score(self, features: pd.DataFrame, top_k: int = 5) -> pd.DataFrame:
        """`churn_risk` (calibrated probability), `risk_band`, `reasons` (list of dicts), `base_value` and
        `other_contribution`, index customer_id.

        Reasons reconcile with the risk: `base_value` (the calibrated log-odds every customer starts from) plus
        the listed contributions plus `other_contribution` (the features not listed) equals
        logit(churn_risk), to float rounding.
        """
        rows = self.score_rows(features, top_k)
        column = np.empty(len(features), dtype=object)  # one list per row (a list of lists would become 2-D)
        for i, row in enumerate(rows.reasons):
            column[i] = row
        # In one call: adding a column afterwards costs a quarter of a millisecond.
        columns = {**rows._asdict(), "risk_band": pd.array(rows.risk_band, dtype="str")}
        return pd.DataFrame({**columns, "reasons": column}, index=features.index)

    def score_rows(self, features: pd.DataFrame, top_k: int = 5) -> ScoredRows:
        """`score`'s columns as arrays, rows in the order of `features`: what the service answers from (building
        the frame cost a fifth of scoring one customer)."""
        columns, reasons = self._score(features, top_k, as_columns=False)
        return ScoredRows(**columns, reasons=reasons)

    def score_columns(self, features: pd.DataFrame, top_k: int = 5) -> tuple[pd.DataFrame, ReasonColumns]:
        """`score` with the reasons as columns (`ReasonColumns`: every row has min(top_k, features) of them)
        instead of a list of dicts per row: the same numbers, for the batch job's Arrow output (a million
        customers' dicts cost more than building their features)."""
        columns, reasons = self._score(features, top_k, as_columns=True)
        columns["risk_band"] = pd.array(columns["risk_band"], dtype="str")
        return pd.DataFrame(columns, index=features.index), reasons

    def _score(self, features: pd.DataFrame, top_k: int, as_columns: bool) -> tuple[dict[str, Any], Any]:
        """(`score`'s columns but the reasons, the reasons: dicts per row or `ReasonColumns`)."""
        values, proba, contributions = self._scored(features, explain=top_k > 0)
        n = len(proba)
        if contributions is None:
            top, picked = np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0))
        else:
            top, picked = top_reasons(contributions, top_k)
        if as_columns:
            shown = self._shown_values(features, values, top) if top.size else []
            flat = [value for row in shown for value in row]
            reasons: Any = ReasonColumns(tuple(self.columns), top, flat, picked)
        else:
            reasons = self._reasons(features, values, top, picked)
        # The listed contributions added left to right from 0.0, as `sum()` of the row's reasons would.
        running = np.zeros((n, picked.shape[1] + 1))
        running[:, 1:] = picked
        listed = np.cumsum(running, axis=1)[:, -1]
        total = logit(np.clip(proba, _LOGIT_EPS, 1 - _LOGIT_EPS)) - self.base_logit
        columns = {
            "churn_risk": proba,
            "risk_band": risk_band(proba, self.cutoffs),
            "base_value": np.full(n, float(self.base_logit)),
            "other_contribution": total - listed,
        }
        return columns, reasons


def check_contract(metadata: Mapping[str, Any], uri: str = "model") -> FeatureSchema:
    """The model's `FeatureSchema`, after checking its feature version and column order against this code."""
    stored_version = str(metadata.get("feature_version", ""))
    if stored_version != FEATURE_VERSION:
        raise ModelContractError(
            f"churn model {uri} was trained on feature version {stored_version or '(none)'} but this code builds "
            f"version {FEATURE_VERSION}; retrain it (churnsense train churn) or use a matching code version"
        )
    raw_schema = metadata.get("feature_schema")
    if not raw_schema:
        raise ModelContractError(f"churn model {uri} carries no feature_schema in its metadata")
    schema = FeatureSchema.from_json(raw_schema if isinstance(raw_schema, str) else json.dumps(raw_schema))
    stored_columns = list(metadata.get("feature_columns") or [])
    built = schema.feature_names()
    if stored_columns != built:
        differ = next(
            (i for i, (a, b) in enumerate(zip(stored_columns, built, strict=False)) if a != b), None
        )
        where = f"first difference at position {differ}" if differ is not None else "lengths differ"
        raise ModelContractError(
            f"churn model {uri}: its {len(stored_columns)} feature columns do not match the {len(built)} this code "
            f"builds from its schema ({where}); retrain it"
        )
    return schema


def _resolve_version(uri: str) -> str | None:
    """Registry version for `models:/name/N` or `models:/name@alias`; None for other URIs."""
    if not uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    parts = rest.split("/")
    return parts[1] if len(parts) > 1 else None
