"""Fitting the churn model: histogram gradient boosting (optionally searched), calibrated by sigmoid or
isotonic on grouped out-of-fold scores, inside one scikit-learn `Pipeline` with its encoders; and the logistic
baseline fitted beside it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
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
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from features.columns import CHURNED, CUSTOMER_ID
from features.engine import FeatureSchema
from models.churn import prepare_features
from training.churn_config import BoosterConfig, ChurnConfig

logger = logging.getLogger(__name__)


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


def clipped_log_loss(y: np.ndarray, p: np.ndarray) -> float:
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
            clipped_log_loss(y[test_rows], sigmoid.predict_proba(raw_oof[test_rows, None])[:, 1])
        )
        isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(
            raw_oof[fit_rows], y[fit_rows]
        )
        losses["isotonic"].append(clipped_log_loss(y[test_rows], isotonic.predict(raw_oof[test_rows])))
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
