"""Churn training: spec -> labelled snapshots -> leak-free split -> calibrated boosted trees (+ logistic
baseline) -> validation metrics and plots -> MLflow run -> registered `churnsense-churn` version.

    load_training_data -> label_training_data -> split_train_validation
        -> fit_churn_model, fit_baseline -> evaluate_models -> log_churn_run (register)

`train_churn(spec, config)` runs the chain and returns a `ChurnRunResult`; `churnsense train churn` and the
demo call it. `promote_churn(force)` re-scores the newest version and the champion on the newest run's logged
validation frame (`validation/validation.parquet`) and moves the `champion` alias when the newest one wins.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from churnsense.errors import UserError
from churnsense.files import atomic_write_text
from features.columns import AS_OF, CHURNED, CUSTOMER_ID, TIMESTAMP
from features.engine import FEATURE_VERSION, FeatureSchema
from features.pipeline import SentimentScorer, SpecData, load_data, schema_for, training_frame
from features.spec import DatasetSpec, load_spec
from features.validate import MIN_POSITIVES
from models.churn import ChurnModel, RiskCutoffs, prepare_features, risk_band
from training import plots
from training.churn_config import BoosterConfig, ChurnConfig, load_config

logger = logging.getLogger(__name__)

VALIDATION_ARTIFACT = "validation/validation.parquet"
TOP_SHARE = 0.10  # "top 10% riskiest" for lift and recall
IMPORTANCE_ROWS = 20_000  # validation rows explained for the importance plot
METRIC_NAMES = ("roc_auc", "pr_auc", "brier", "log_loss", "lift_at_10", "recall_at_10")


class ChurnDataError(UserError):
    """The labelled data cannot train a churn model: one class, too few churners, censored labels, no rows."""


# --- load, validate, label -------------------------------------------------------------------------------


def load_training_data(spec: DatasetSpec, sentiment_scorer: SentimentScorer | None = None) -> SpecData:
    """Validate the files a spec names (refusing on errors) and load customers and events in canonical form.

    Raises:
        UserError: the validator found errors (all listed), or a loader could not read a file.
    """
    from features.validate import validate_spec

    report = validate_spec(spec)
    # The reviews table feeds the sentiment model only: its problems do not stop churn training.
    reviews = str(spec.resolve(spec.reviews.path)) if spec.reviews is not None else None
    relevant = [p for p in report.problems if reviews is None or not p.file.startswith(reviews)]
    for problem in relevant:
        if problem.severity != "error":
            logger.warning("%s", problem.render())
    errors = [p for p in relevant if p.severity == "error"]
    if errors:
        listed = "; ".join(problem.render() for problem in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise UserError(f"{spec.source or 'spec'} does not validate: {listed}{more}")
    return load_data(spec, sentiment_scorer=sentiment_scorer, with_text=sentiment_scorer is not None)


def check_label_windows(data: SpecData) -> None:
    """Refuse censored labels: every as_of + horizon must end inside the event data.

    A label window [as_of, as_of + horizon) whose last day is after the newest event would call customers
    churned (or not) only because the data stops. Same rule as `churnsense validate`.
    """
    spec = data.spec
    dates = spec.labels.as_of_dates()
    if not dates or data.events is None or len(data.events) == 0:
        return
    newest = pd.Timestamp(data.events[TIMESTAMP].max())
    last_day = newest.normalize()
    horizon = spec.labels.horizon_days
    censored = [d for d in dates if pd.Timestamp(d) + pd.Timedelta(days=horizon - 1) > last_day]
    if censored:
        latest_ok = (last_day - pd.Timedelta(days=horizon - 1)).date()
        raise ChurnDataError(
            f"labels.as_of: {len(censored)} as_of date(s) ({', '.join(map(str, censored[:3]))}"
            f"{', ...' if len(censored) > 3 else ''}) + horizon_days={horizon} reach past the newest event "
            f"({newest}), so their labels would be censored; use as_of dates on or before {latest_ok}"
        )


def label_training_data(
    data: SpecData, min_positives: int = MIN_POSITIVES
) -> tuple[pd.DataFrame, FeatureSchema]:
    """Labelled snapshots (`customer_id`, `as_of`, the schema's features, `churned`) and the feature schema.

    Raises:
        ChurnDataError: censored label windows, no rows, a single class or fewer than `min_positives` churners.
        UserError: the spec cannot make labels without leakage (e.g. events but no `labels.as_of`).
    """
    check_label_windows(data)
    schema = schema_for(data.spec, data)
    frame = training_frame(data, schema)
    n, positives = len(frame), int(frame[CHURNED].sum()) if len(frame) else 0
    if n == 0:
        raise ChurnDataError("no labelled rows: no customer is eligible at any as_of date")
    if positives in (0, n):
        raise ChurnDataError(
            f"labels are all one class ({n:,} rows, all {'churned' if positives else 'not churned'}): check "
            "customers.positive / the churn definition, or add as_of dates"
        )
    if positives < min_positives:
        raise ChurnDataError(
            f"only {positives} churned examples in {n:,} labelled rows (at least {min_positives} needed for a "
            "model and an honest validation): add as_of dates, a longer horizon or more customers"
        )
    return frame, schema


# --- split -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainValidationSplit:
    """Rows for fitting and for validation; no customer is in both."""

    train: pd.DataFrame
    valid: pd.DataFrame
    description: str


def _stratified_pick(keys: pd.Index, labels: np.ndarray, fraction: float, seed: int) -> pd.Index:
    """A `fraction` share of `keys`, stratified by `labels` when every class has at least two members."""
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    stratify = labels if counts.min() >= 2 else None
    _, picked = train_test_split(
        keys.to_numpy(dtype=object), test_size=fraction, stratify=stratify, random_state=seed
    )
    return pd.Index(picked)


def split_train_validation(
    frame: pd.DataFrame, horizon_days: int, validation_fraction: float, validation_snapshots: int, seed: int
) -> TrainValidationSplit:
    """Split labelled snapshots without leakage.

    Several as_of dates: a stratified `validation_fraction` of all customers is held out; their rows at the
    `validation_snapshots` latest dates are the validation set and none of their rows is in train. Train
    keeps the other customers' snapshots whose label window [as_of, as_of + horizon) ends on or before the
    first validation date (so no training label sees the validation period). One date or a static label:
    stratified split by customer.

    Raises:
        ChurnDataError: nothing left to train on, or the validation rows hold a single class.
    """
    dates = sorted(pd.Series(frame[AS_OF].dropna().unique()).tolist())
    ids = frame[CUSTOMER_ID].astype(str)
    if len(dates) <= 1:
        per_customer = frame.groupby(ids, sort=True)[CHURNED].max()
        valid_ids = _stratified_pick(per_customer.index, per_customer.to_numpy(), validation_fraction, seed)
        in_valid = ids.isin(valid_ids).to_numpy()
        train, valid = frame[~in_valid], frame[in_valid]
        description = (
            f"by customer, stratified: {len(train):,} train / {len(valid):,} validation rows "
            f"({validation_fraction:.0%} of customers, seed {seed})"
        )
    else:
        if validation_snapshots >= len(dates):
            raise ChurnDataError(
                f"split.validation_snapshots={validation_snapshots} leaves no earlier as_of date to train on "
                f"(the spec has {len(dates)})"
            )
        valid_dates = dates[-validation_snapshots:]
        first_valid = pd.Timestamp(valid_dates[0])
        # Validation customers are drawn from *all* customers (stratified by "ever churned"), not from those
        # still present at the validation dates: those are survivors, and removing only survivors from train
        # would inflate its churn rate (every earlier churner would stay in train).
        ever_churned = frame.groupby(ids, sort=True)[CHURNED].max()
        valid_ids = _stratified_pick(ever_churned.index, ever_churned.to_numpy(), validation_fraction, seed)
        in_valid = ids.isin(valid_ids).to_numpy()
        valid = frame[in_valid & frame[AS_OF].isin(valid_dates).to_numpy()]
        label_end = pd.to_datetime(frame[AS_OF]) + pd.Timedelta(days=horizon_days)
        train = frame[(label_end <= first_valid).to_numpy() & ~in_valid]
        train_dates = sorted(pd.Series(train[AS_OF].unique()).tolist())
        if len(train) == 0:
            raise ChurnDataError(
                f"no training snapshot ends its {horizon_days}-day label window by the first validation date "
                f"{first_valid.date()}: add earlier as_of dates or use fewer validation snapshots"
            )
        description = (
            f"out-of-time: validation = the rows at {', '.join(str(pd.Timestamp(d).date()) for d in valid_dates)} "
            f"of {validation_fraction:.0%} of all customers ({len(valid):,} rows); train = "
            f"{len(train_dates)} earlier snapshot(s) {pd.Timestamp(train_dates[0]).date()}.."
            f"{pd.Timestamp(train_dates[-1]).date()} without those customers ({len(train):,} rows)"
        )
    if valid[CHURNED].nunique() < 2:
        raise ChurnDataError(
            f"the validation rows hold a single class ({description}); add data or as_of dates"
        )
    if train[CHURNED].nunique() < 2:
        raise ChurnDataError(f"the training rows hold a single class ({description})")
    return TrainValidationSplit(train.reset_index(drop=True), valid.reset_index(drop=True), description)


# --- models ------------------------------------------------------------------------------------------------


def _column_groups(schema: FeatureSchema) -> tuple[list[str], list[str]]:
    categorical = list(schema.profile_categorical)
    numeric = [c for c in schema.feature_names() if c not in set(categorical)]
    return categorical, numeric


def usable_numeric_columns(X: pd.DataFrame, schema: FeatureSchema, min_observed: int) -> list[str]:
    """Numeric columns with at least `min_observed` non-missing training values.

    Rarer ones cannot be split on (a split needs `min_samples_leaf` rows each side), and an all-missing
    column (e.g. `days_since_other`: "other" event types only exist at scoring time) makes the booster's
    binning fail. The encoder drops them; their contribution is 0.
    """
    _, numeric = _column_groups(schema)
    observed = X[numeric].notna().sum()
    return [c for c in numeric if observed[c] >= min_observed]


def make_booster(
    schema: FeatureSchema, params: BoosterConfig, seed: int, numeric: list[str] | None = None
) -> Pipeline:
    """Unfitted `encode` (ordinal codes for categorical columns; numeric pass through, `numeric` only when
    given, others dropped) + boosted trees."""
    categorical, all_numeric = _column_groups(schema)
    numeric = all_numeric if numeric is None else numeric
    steps: list[tuple[str, Any, list[str]]] = []
    if categorical:
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=params.max_categories,
            dtype=np.float64,
        )
        steps.append(("categorical", encoder, categorical))
    steps.append(("numeric", "passthrough", numeric))
    encode = ColumnTransformer(steps, remainder="drop", verbose_feature_names_out=False)
    booster = HistGradientBoostingClassifier(
        learning_rate=params.learning_rate,
        max_iter=params.max_iter,
        max_leaf_nodes=params.max_leaf_nodes,
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        max_features=params.max_features,
        max_bins=params.max_bins,
        early_stopping=params.early_stopping,
        validation_fraction=params.validation_fraction if params.early_stopping else None,
        n_iter_no_change=params.n_iter_no_change,
        categorical_features=[True] * len(categorical) + [False] * len(numeric) if categorical else None,
        random_state=seed,
    )
    return Pipeline([("encode", encode), ("classifier", booster)])


def make_baseline(schema: FeatureSchema, config: ChurnConfig) -> Pipeline:
    """Unfitted logistic regression: median-impute (+ missing flags) and scale numerics, one-hot categoricals."""
    categorical, numeric = _column_groups(schema)
    steps: list[tuple[str, Any, list[str]]] = [
        (
            "numeric",
            make_pipeline(
                SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                StandardScaler(),
            ),
            numeric,
        ),
    ]
    if categorical:
        steps.append(
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="(missing)", missing_values=None),
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist",
                        min_frequency=config.baseline.min_category_frequency,
                    ),
                ),
                categorical,
            )
        )
    return Pipeline(
        [
            ("encode", ColumnTransformer(steps)),
            ("classifier", LogisticRegression(C=config.baseline.C, max_iter=config.baseline.max_iter)),
        ]
    )


def cv_folds(groups: pd.Series, y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each customer's snapshots together."""
    if groups.is_unique:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups=groups.to_numpy()))


def _clipped_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))


def choose_calibration(raw_oof: np.ndarray, y: np.ndarray, folds: list, margin: float) -> tuple[str, dict]:
    """Sigmoid or isotonic, by cross-validated log loss of calibrators fitted on out-of-fold raw scores.

    Isotonic wins only when it beats sigmoid by `margin` (sigmoid keeps the reasons exact Shapley values).
    Returns the method and the per-method losses.
    """
    losses = {"sigmoid": [], "isotonic": []}
    for fit_rows, test_rows in folds:
        sigmoid = LogisticRegression(C=1e6, max_iter=1000).fit(raw_oof[fit_rows, None], y[fit_rows])
        losses["sigmoid"].append(
            _clipped_log_loss(y[test_rows], sigmoid.predict_proba(raw_oof[test_rows, None])[:, 1])
        )
        isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(
            raw_oof[fit_rows], y[fit_rows]
        )
        losses["isotonic"].append(_clipped_log_loss(y[test_rows], isotonic.predict(raw_oof[test_rows])))
    mean = {method: float(np.mean(values)) for method, values in losses.items()}
    method = "isotonic" if mean["isotonic"] < mean["sigmoid"] - margin else "sigmoid"
    return method, mean


@dataclass
class FittedChurn:
    """The fitted model (encode + calibrated boosted trees), and how it was chosen."""

    pipeline: Pipeline
    calibration: str
    calibration_losses: dict[str, float]
    booster_params: dict[str, Any]
    cv_roc_auc: float
    search: list[dict[str, Any]] = field(default_factory=list)


def _out_of_fold(
    schema: FeatureSchema,
    params: BoosterConfig,
    seed: int,
    numeric: list[str],
    X: pd.DataFrame,
    y: np.ndarray,
    folds: list,
) -> np.ndarray:
    """Out-of-fold raw scores of the boosted trees, as `CalibratedClassifierCV(ensemble=False)` computes them:
    the (label-free) encoder fitted once on all training rows, the trees cross-validated on its output."""
    model = make_booster(schema, params, seed, numeric)
    encoded = model.named_steps["encode"].fit_transform(X)
    return cross_val_predict(
        model.named_steps["classifier"], encoded, y, cv=folds, method="decision_function"
    )


def calibrated_pipeline(
    schema: FeatureSchema,
    params: BoosterConfig,
    seed: int,
    numeric: list[str],
    X: pd.DataFrame,
    y: np.ndarray,
    oof: np.ndarray,
    method: str,
    n_folds: int,
) -> Pipeline:
    """The final model: encoder and trees refitted on all training rows, calibrator fitted on `oof`.

    Equal, bit for bit, to fitting `Pipeline([encode, CalibratedClassifierCV(trees, method, cv=folds,
    ensemble=False)])` on the same rows and folds (tested), without recomputing the out-of-fold scores that
    choosing the calibration (and the search) already needed: 4 tree fits instead of 7.
    """
    from sklearn.calibration import _fit_calibrator

    model = make_booster(schema, params, seed, numeric)
    encode, trees = model.named_steps["encode"], model.named_steps["classifier"]
    fitted_trees = clone(trees).fit(encode.fit_transform(X), y)
    calibrated = CalibratedClassifierCV(trees, method=method, cv=n_folds, ensemble=False)
    calibrated.classes_ = np.array([0, 1])
    calibrated.calibrated_classifiers_ = [
        _fit_calibrator(fitted_trees, oof.reshape(-1, 1), y, calibrated.classes_, method, xp=np)
    ]
    calibrated.n_features_in_ = fitted_trees.n_features_in_
    return Pipeline([("encode", encode), ("classifier", calibrated)])


def fit_churn_model(train: pd.DataFrame, schema: FeatureSchema, config: ChurnConfig) -> FittedChurn:
    """Fit the calibrated boosted-trees pipeline on the training rows.

    Out-of-fold raw scores (folds grouped by customer) rank the search candidates (when enabled), choose the
    calibration and train the calibrator; the trees are then refitted on all training rows.
    """
    X = prepare_features(train, schema)
    y = train[CHURNED].to_numpy(dtype=np.int64)
    groups = train[CUSTOMER_ID].astype(str)
    # 20+ values: a 2/3 cross-validation share of them is then (almost surely) never empty.
    numeric = usable_numeric_columns(X, schema, max(config.booster.min_samples_leaf, 20))
    folds = cv_folds(groups, y, config.calibration.folds, config.seed)
    candidates = [dict(c) for c in config.search.candidates] if config.search.enabled else [{}]
    search_folds = (
        cv_folds(groups, y, config.search.folds, config.seed)
        if config.search.enabled and config.search.folds != config.calibration.folds
        else folds
    )
    results: list[dict[str, Any]] = []
    params, cv_auc, best_oof = config.booster, float("nan"), None
    for candidate in candidates:
        merged = BoosterConfig(**config.booster.model_copy(update=candidate).model_dump())
        started = time.perf_counter()
        oof = _out_of_fold(schema, merged, config.seed, numeric, X, y, search_folds)
        auc = float(roc_auc_score(y, oof))
        results.append(
            {"params": candidate, "cv_roc_auc": auc, "seconds": round(time.perf_counter() - started, 2)}
        )
        logger.info("candidate %s: CV ROC AUC %.4f", candidate or "(config)", auc)
        if best_oof is None or auc > cv_auc:
            params, cv_auc, best_oof = merged, auc, oof
    if search_folds is not folds:
        best_oof = _out_of_fold(schema, params, config.seed, numeric, X, y, folds)
    if config.calibration.method == "auto":
        method, losses = choose_calibration(best_oof, y, folds, config.calibration.isotonic_margin)
    else:
        method, losses = config.calibration.method, {}
    logger.info("calibration: %s %s", method, {k: round(v, 5) for k, v in losses.items()})
    pipeline = calibrated_pipeline(schema, params, config.seed, numeric, X, y, best_oof, method, len(folds))
    return FittedChurn(
        pipeline, method, losses, params.model_dump(), cv_auc, results if config.search.enabled else []
    )


def fit_baseline(train: pd.DataFrame, schema: FeatureSchema, config: ChurnConfig) -> Pipeline:
    """The logistic-regression baseline, fitted on the same training rows."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the problem is small, and spinning BLAS threads stall a shared 2-core machine (a 6k-row
    # fit took 10 s with two threads under load, 0.3 s with one).
    with threadpool_limits(limits=1, user_api="blas"):
        return make_baseline(schema, config).fit(
            prepare_features(train, schema), train[CHURNED].to_numpy(np.int64)
        )


# --- evaluate ----------------------------------------------------------------------------------------------


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier, log loss, and lift / recall in the top 10% riskiest (ties broken by row order)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    top = np.argsort(-p, kind="stable")[: max(1, math.ceil(TOP_SHARE * len(y)))]
    rate = float(y.mean())
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": _clipped_log_loss(y, p),
        "lift_at_10": float(y[top].mean() / rate) if rate > 0 else float("nan"),
        "recall_at_10": float(y[top].sum() / max(1, y.sum())),
    }


@dataclass
class Evaluation:
    """Validation metrics of both models, the scored validation frame and the plot files."""

    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    valid_frame: pd.DataFrame
    plots: list[Path]
    importance: dict[str, float]


def evaluate_models(model: ChurnModel, baseline: Pipeline, valid: pd.DataFrame, plot_dir: Path) -> Evaluation:
    """Score the validation rows with both models; metrics, plots, mean |contribution| per feature."""
    y = valid[CHURNED].to_numpy(dtype=np.int64)
    proba = model.predict_proba(valid)
    baseline_proba = baseline.predict_proba(prepare_features(valid, model.schema))[:, 1]
    metrics = classification_metrics(y, proba)
    baseline_metrics = classification_metrics(y, baseline_proba)
    sample = valid if len(valid) <= IMPORTANCE_ROWS else valid.sample(IMPORTANCE_ROWS, random_state=0)
    contributions = model.contributions(sample)
    importance = contributions.abs().mean().sort_values(ascending=False)
    scores = {"boosted trees (calibrated)": proba, "logistic baseline": baseline_proba}
    files = [
        plots.roc_plot(y, scores, plot_dir / "roc.png"),
        plots.precision_recall_plot(y, scores, plot_dir / "precision_recall.png"),
        plots.calibration_plot(y, scores, plot_dir / "calibration.png"),
        plots.gains_plot(y, scores, plot_dir / "lift_gains.png"),
        plots.importance_plot(
            list(importance.index), importance.to_numpy(), plot_dir / "feature_importance.png"
        ),
    ]
    frame = valid.copy()
    frame["churn_risk"] = proba
    frame["baseline_risk"] = baseline_proba
    frame["risk_band"] = risk_band(proba, model.cutoffs)
    return Evaluation(metrics, baseline_metrics, frame, files, {k: float(v) for k, v in importance.items()})


# --- log and register --------------------------------------------------------------------------------------


def pip_requirements() -> list[str]:
    """Exact versions of what loading the model needs (no inference of the environment)."""
    import mlflow
    import scipy
    import sklearn
    import skops

    return [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"scipy=={scipy.__version__}",
        f"skops=={skops.__version__}",
    ]


def skops_trusted_types(estimator: Any) -> list[str]:
    """The non-default types skops must be told to trust to load `estimator` (all from scikit-learn/numpy)."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(estimator))
    # functools.partial: HistGradientBoosting's own input check (a partial of sklearn's check_array).
    foreign = [
        t
        for t in untrusted
        if not t.startswith(("sklearn.", "numpy.", "scipy.", "builtins.")) and t != "functools.partial"
    ]
    if foreign:
        raise RuntimeError(f"refusing to trust non-library types in the churn model: {foreign}")
    return sorted(untrusted)


def model_metadata(
    schema: FeatureSchema, cutoffs: RiskCutoffs, fitted: FittedChurn, sentiment: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What `ChurnModel.load` checks and needs: feature version, schema JSON, column order, cut-offs, and the
    sentiment model that scored the event texts (`models.text_scoring.SentimentLineage`), if any."""
    return {
        "sentiment_model": sentiment,
        "feature_version": FEATURE_VERSION,
        "feature_schema": schema.to_json(),
        "feature_columns": schema.feature_names(),
        "risk_cutoffs": asdict(cutoffs),
        "calibration": fitted.calibration,
        "unused_columns": [
            c for c in schema.feature_names() if c not in set(fitted.pipeline[0].get_feature_names_out())
        ],
        "label": CHURNED,
        "positive_class": 1,
    }


def _flat_params(config: ChurnConfig) -> dict[str, str]:
    def flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
        elif isinstance(value, list | tuple):
            out[prefix] = json.dumps(value)
        else:
            out[prefix] = str(value)

    out: dict[str, str] = {}
    flatten("", config.model_dump(mode="json"), out)
    return out


def _spec_yaml(spec: DatasetSpec) -> str:
    import yaml

    raw = spec.model_dump(mode="json", exclude={"base_dir", "source"}, exclude_none=True)
    header = f"# from {spec.source}; paths relative to {spec.base_dir}\n" if spec.source else ""
    return header + yaml.safe_dump(raw, sort_keys=False)


@dataclass
class ChurnRunResult:
    """What a training run produced: ids to find it in MLflow, and its numbers."""

    run_id: str
    experiment_id: str
    registered_name: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    calibration: str
    split: str
    n_train: int
    n_valid: int
    timings: dict[str, float]
    feature_version: str = FEATURE_VERSION
    validation_predictions: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (what `--summary` writes)."""
        out = asdict(self)
        out.pop("validation_predictions")
        return out

    def render(self) -> str:
        m, b = self.metrics, self.baseline_metrics
        lines = [
            f"{self.registered_name} v{self.version} (run {self.run_id}), {self.calibration} calibration",
            f"  split: {self.split}",
            f"  {'metric':<14}{'model':>10}{'baseline':>10}",
        ]
        lines += [f"  {name:<14}{m[name]:10.4f}{b[name]:10.4f}" for name in METRIC_NAMES]
        lines.append("  timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        return "\n".join(lines)


def log_churn_run(
    *,
    config: ChurnConfig,
    spec: DatasetSpec,
    data: SpecData,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    split: TrainValidationSplit,
    fitted: FittedChurn,
    baseline: Pipeline,
    evaluation: Evaluation,
    workdir: Path,
    sentiment: dict[str, Any] | None = None,
) -> tuple[str, str, str]:
    """Log params, metrics, plots, config, spec, fingerprints, the validation frame and both models to the
    active run; register the calibrated model. Returns (run id, registered version, model URI)."""
    import mlflow
    from mlflow.models import infer_signature

    from training.tracking import code_version, data_fingerprint

    run = mlflow.active_run()
    assert run is not None
    mlflow.log_params(_flat_params(config))
    booster = fitted.pipeline[-1].calibrated_classifiers_[0].estimator
    # The trained booster's parameters (the search may have overridden the config's `booster.*`).
    mlflow.log_params(
        {f"chosen.{k}": str(v) for k, v in fitted.booster_params.items()}
        | {"chosen.calibration": fitted.calibration}
    )
    metrics = dict(evaluation.metrics)
    metrics |= {f"baseline_{k}": v for k, v in evaluation.baseline_metrics.items()}
    metrics |= {f"calibration_cv_log_loss_{k}": v for k, v in fitted.calibration_losses.items()}
    metrics |= {
        "n_train": len(split.train),
        "n_valid": len(split.valid),
        "train_churn_rate": float(split.train[CHURNED].mean()),
        "valid_churn_rate": float(split.valid[CHURNED].mean()),
        "n_trees": float(booster.n_iter_),
    }
    if not math.isnan(fitted.cv_roc_auc):
        metrics["cv_roc_auc"] = fitted.cv_roc_auc
    mlflow.log_metrics(metrics)
    fingerprints = {
        "training_frame": data_fingerprint(frame, AS_OF),
        "train": data_fingerprint(split.train, AS_OF),
        "validation": data_fingerprint(split.valid, AS_OF),
    }
    if data.customers is not None:
        fingerprints["customers"] = data_fingerprint(data.customers)
    if data.events is not None:
        fingerprints["events"] = data_fingerprint(data.events, TIMESTAMP)
    fingerprints["rejected_rows"] = int(len(data.rejects))
    mlflow.set_tags(
        {
            "code_version": code_version(),
            "feature_version": FEATURE_VERSION,
            "calibration": fitted.calibration,
            "split": split.description,
            "spec": str(spec.source or ""),
            "data_sha256": str(fingerprints["training_frame"]["sha256"]),
        }
        | _lineage_tags(sentiment)
    )
    mlflow.log_text(config.to_yaml(), "config/churn.yaml")
    mlflow.log_text(_spec_yaml(spec), "spec/spec.yaml")
    mlflow.log_dict(fingerprints, "data/fingerprints.json")
    mlflow.log_dict(
        {"schema": json.loads(schema.to_json()), "columns": schema.feature_names()},
        "model_contract/feature_schema.json",
    )
    mlflow.log_dict(
        {
            "importance": evaluation.importance,
            "search": fitted.search,
            "calibration_cv_log_loss": fitted.calibration_losses,
        },
        "evaluation/details.json",
    )
    for file in evaluation.plots:
        mlflow.log_artifact(str(file), "plots")
    valid_path = workdir / Path(VALIDATION_ARTIFACT).name
    evaluation.valid_frame.to_parquet(valid_path, index=False)
    mlflow.log_artifact(str(valid_path), str(Path(VALIDATION_ARTIFACT).parent))

    example = prepare_features(split.valid.head(5), schema)
    signature = infer_signature(example, fitted.pipeline.predict_proba(example))
    info = mlflow.sklearn.log_model(
        fitted.pipeline,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        pyfunc_predict_fn="predict_proba",
        metadata=model_metadata(schema, config.risk_bands.cutoffs(), fitted, sentiment),
        skops_trusted_types=skops_trusted_types(fitted.pipeline),
        registered_model_name=config.registered_model_name,
    )
    mlflow.sklearn.log_model(
        baseline,
        name="baseline_model",
        signature=infer_signature(example, baseline.predict_proba(example)),
        pip_requirements=pip_requirements(),
        pyfunc_predict_fn="predict_proba",
        metadata={"feature_version": FEATURE_VERSION, "feature_columns": schema.feature_names()},
        skops_trusted_types=skops_trusted_types(baseline),
    )
    version = str(info.registered_model_version)
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in {
        "feature_version": FEATURE_VERSION,
        "calibration": fitted.calibration,
        "validation_roc_auc": f"{evaluation.metrics['roc_auc']:.4f}",
        "code_version": code_version(),
    }.items() | _lineage_tags(sentiment).items():
        client.set_model_version_tag(config.registered_model_name, version, key, value)
    return run.info.run_id, version, f"models:/{config.registered_model_name}/{version}"


def _lineage_tags(sentiment: dict[str, Any] | None) -> dict[str, str]:
    if not sentiment:
        return {}
    return {
        "sentiment_model": f"{sentiment.get('name') or sentiment['model_uri']}",
        "sentiment_model_version": str(sentiment.get("version") or ""),
        "sentiment_scoring_id": str(sentiment["scoring_id"]),
    }


def text_sentiment_lineage(
    spec: DatasetSpec, sentiment_scorer: SentimentScorer | None
) -> dict[str, Any] | None:
    """The lineage a churn model records for its text features: that of the scorer when event texts are scored
    (None when there are none, or the spec brings its own sentiment column). An anonymous scorer is refused:
    nobody could reproduce its scores at serving time."""
    from models.text_scoring import lineage_of_scorer

    if sentiment_scorer is None or spec.events is None or spec.events.sentiment or not spec.events.text:
        return None
    lineage = lineage_of_scorer(sentiment_scorer)
    if lineage is None:
        raise UserError(
            "sentiment scorer: it does not say which model it is, so the service and batch jobs could not "
            "reproduce the churn model's text features; pass a models.text_scoring.CachedTextScorer or a "
            "SentimentClassifier loaded from a registered model or folder"
        )
    return lineage.to_dict()


# --- the whole chain ---------------------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - started, 3)


def train_churn(
    spec: DatasetSpec | str | Path,
    config: ChurnConfig | str | Path | None = None,
    sentiment_scorer: SentimentScorer | None = None,
    run_name: str | None = None,
) -> ChurnRunResult:
    """Train, evaluate, log and register a churn model from a dataset spec.

    Args:
        spec: a `DatasetSpec` or the path of a spec YAML file.
        config: a `ChurnConfig`, the path of a config YAML file, or None for the defaults.
        sentiment_scorer: scores event texts in [-1, 1] (adds sentiment features) when the spec has text.
        run_name: MLflow run name (default: "churn <spec file name>").
    Raises:
        UserError: bad spec or config, data that does not validate, labels that cannot train a model.
    """
    import mlflow

    from training.tracking import configure_mlflow

    timings: dict[str, float] = {}
    started = time.perf_counter()
    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    sentiment = text_sentiment_lineage(spec, sentiment_scorer)
    with _timed(timings, "load"):
        data = load_training_data(spec, sentiment_scorer)
    with _timed(timings, "label_and_features"):
        frame, schema = label_training_data(data, config.min_positives)
    with _timed(timings, "split"):
        split = split_train_validation(
            frame,
            spec.labels.horizon_days,
            config.split.validation_fraction,
            config.split.validation_snapshots,
            config.seed,
        )
    logger.info("split %s", split.description)
    with _timed(timings, "fit_model"):
        fitted = fit_churn_model(split.train, schema, config)
    with _timed(timings, "fit_baseline"):
        baseline = fit_baseline(split.train, schema, config)
    model = ChurnModel(fitted.pipeline, schema, config.risk_bands.cutoffs(), version="unregistered")
    experiment_id = configure_mlflow(config.experiment_name)
    name = run_name or f"churn {Path(str(spec.source)).name if spec.source else 'spec'}"
    with tempfile.TemporaryDirectory(prefix="churn-run-") as tmp, mlflow.start_run(run_name=name):
        workdir = Path(tmp)
        with _timed(timings, "evaluate"):
            evaluation = evaluate_models(model, baseline, split.valid, workdir / "plots")
        with _timed(timings, "log_and_register"):
            run_id, version, model_uri = log_churn_run(
                config=config,
                spec=spec,
                data=data,
                frame=frame,
                schema=schema,
                split=split,
                fitted=fitted,
                baseline=baseline,
                evaluation=evaluation,
                workdir=workdir,
                sentiment=sentiment,
            )
        timings["total"] = round(time.perf_counter() - started, 3)
        mlflow.log_metrics({f"time_{k}_s": v for k, v in timings.items()})
    result = ChurnRunResult(
        run_id=run_id,
        experiment_id=experiment_id,
        registered_name=config.registered_model_name,
        version=version,
        model_uri=model_uri,
        metrics=evaluation.metrics,
        baseline_metrics=evaluation.baseline_metrics,
        calibration=fitted.calibration,
        split=split.description,
        n_train=len(split.train),
        n_valid=len(split.valid),
        timings=timings,
        validation_predictions=evaluation.valid_frame["churn_risk"].to_numpy(),
    )
    logger.info("churn run %s registered as %s", run_id, model_uri)
    return result


def write_summary(result: ChurnRunResult, path: Path) -> None:
    """The run summary as JSON (metrics, run id, version, timings)."""
    atomic_write_text(json.dumps(result.summary(), indent=2, default=str) + "\n", path)


# --- promotion ---------------------------------------------------------------------------------------------


def load_validation_frame(run_id: str) -> pd.DataFrame:
    """The validation frame a churn run logged (features, `churned`, the run's own predictions)."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_ARTIFACT)
    return pd.read_parquet(local)


def validation_evaluator() -> Any:
    """evaluate(model_uri, challenger_version) -> metrics of that model on the challenger run's validation frame."""
    frames: dict[str, pd.DataFrame] = {}

    def evaluate(model_uri: str, challenger_version: Any) -> dict[str, float]:
        run_id = challenger_version.run_id
        if run_id not in frames:
            frames[run_id] = load_validation_frame(run_id)
        frame = frames[run_id]
        model = ChurnModel.load(model_uri)
        missing = [c for c in model.columns if c not in frame.columns]
        if missing:
            raise UserError(
                f"{model_uri} cannot score the challenger's validation data: it lacks {len(missing)} of the "
                f"model's feature columns ({', '.join(missing[:5])}); the two were trained on different features"
            )
        return classification_metrics(frame[CHURNED].to_numpy(), model.predict_proba(frame))

    return evaluate


def promote_churn(force: bool = False, config: ChurnConfig | str | Path | None = None) -> Any:
    """Champion / challenger for the churn model; returns the `PromotionDecision` (caller picks the exit code)."""
    from training.registry import promote_newest
    from training.tracking import configure_mlflow

    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    configure_mlflow(config.experiment_name)
    return promote_newest(
        config.registered_model_name, validation_evaluator(), promote_policy(config), force=force
    )


def promote_policy(config: ChurnConfig) -> Any:
    """The churn `PromotionPolicy` a config asks for (primary metric, calibration metric and tolerance)."""
    from training.registry import PromotionPolicy

    return PromotionPolicy(
        primary_metric=config.promotion.primary_metric,
        greater_is_better=True,
        calibration_metric=config.promotion.calibration_metric,
        calibration_tolerance=config.promotion.calibration_tolerance,
    )
