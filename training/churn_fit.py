"""Fitting the churn model: LightGBM trees chosen by a budgeted search scored with grouped cross-validation,
blended with a logistic regression (`models.blend`: the weight chosen on the same out-of-fold scores),
calibrated (sigmoid or isotonic) on out-of-fold scores, inside one scikit-learn `Pipeline` with its encoder;
and the logistic baseline fitted beside it.

    choice = choose_churn_model(train rows)        # every choice (trees, their number, blend, calibration) here
    fit_calibrated(train rows, choice)             # the held-out model: scored on the validation rows
    fit_calibrated(all labelled rows, choice)      # the final model, the one registered

The final model is refitted on every labelled row once the held-out data has judged the choices; its reported
metrics are the held-out model's on rows neither model chose anything with.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from features.columns import CHURNED, CUSTOMER_ID
from features.engine import FeatureSchema
from models.churn import prepare_features
from training.churn_blend import choose_linear_weight, make_blend
from training.churn_calibration import choose_calibration, keep_the_order
from training.churn_config import LIGHTGBM_DEFAULTS, BoosterConfig, ChurnConfig, SearchConfig
from training.folds import cv_folds

logger = logging.getLogger(__name__)

# A numeric column needs this many observed training values to be used (see `usable_numeric_columns`).
MIN_OBSERVED = 20


# --- models ------------------------------------------------------------------------------------------------


def _column_groups(schema: FeatureSchema) -> tuple[list[str], list[str]]:
    categorical = list(schema.profile_categorical)
    numeric = [c for c in schema.feature_names() if c not in set(categorical)]
    return categorical, numeric


def usable_numeric_columns(X: pd.DataFrame, schema: FeatureSchema, min_observed: int) -> list[str]:
    """Numeric columns with at least `min_observed` non-missing training values.

    Rarer ones can hardly be split on (a split needs `min_child_samples` rows each side), and an all-missing
    column (e.g. `days_since_other`: "other" event types only exist at scoring time) makes the trees'
    binning fail. The encoder drops them; their contribution is 0.
    """
    _, numeric = _column_groups(schema)
    observed = X[numeric].notna().sum()
    return [c for c in numeric if observed[c] >= min_observed]


def make_encoder(schema: FeatureSchema, max_categories: int, numeric: list[str]) -> ColumnTransformer:
    """Unfitted encoder: ordinal codes (0, 1, ...; unknown and missing as NaN) for the categorical columns, then
    the `numeric` columns as they are; other columns dropped. The trees split the codes as categories."""
    categorical, _ = _column_groups(schema)
    steps: list[tuple[str, Any, list[str]]] = []
    if categorical:
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=max_categories,
            dtype=np.float64,
        )
        steps.append(("categorical", encoder, categorical))
    steps.append(("numeric", "passthrough", numeric))
    return ColumnTransformer(steps, remainder="drop", verbose_feature_names_out=False)


def categorical_positions(schema: FeatureSchema) -> list[int]:
    """Positions of the categorical columns in the encoder's output (they come first)."""
    return list(range(len(schema.profile_categorical)))


def make_trees(params: BoosterConfig, seed: int, rounds: int) -> Any:
    """Unfitted `lightgbm.LGBMClassifier` with `rounds` trees."""
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=rounds, **params.lightgbm_params(seed))


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
                    SimpleImputer(strategy="constant", fill_value="(missing)", missing_values=np.nan),
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


# --- search ------------------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator) -> dict[str, Any]:
    """One candidate from the search space (see `SearchConfig`)."""

    def log_uniform(low: float, high: float) -> float:
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))

    return {
        "learning_rate": round(log_uniform(0.02, 0.2), 4),
        "num_leaves": int(round(log_uniform(2, 64))),
        "min_child_samples": int(round(log_uniform(5, 200))),
        "reg_lambda": round(log_uniform(1e-3, 30.0), 4),
        "colsample_bytree": round(float(rng.uniform(0.4, 1.0)), 3),
        "subsample": round(float(rng.uniform(0.5, 1.0)), 3),
    }


def candidates(config: ChurnConfig) -> Iterator[dict[str, Any]]:
    """The search's candidates in order: overrides of `config.booster` (`{}` is the booster as configured)."""
    yield {}
    if not config.search.enabled:
        return
    yield dict(LIGHTGBM_DEFAULTS)
    yield from (dict(c) for c in config.search.candidates)
    rng = np.random.default_rng(config.seed)
    while True:
        yield _draw(rng)


@dataclass
class CrossValidated:
    """A candidate's cross-validation: pooled out-of-fold ROC AUC and its standard error (Hanley & McNeil),
    the number of trees early stopping chose, the out-of-fold raw scores (log-odds, what the
    calibrator reads) at that number, and whether the search's deadline cut it short."""

    roc_auc: float
    standard_error: float
    rounds: int
    oof: np.ndarray
    cut_short: bool = False


def _deadline(at: float) -> Any:
    """A LightGBM callback that ends training at `at` (`time.perf_counter()`), keeping the trees grown so far.
    It runs after early stopping (order 40 > 30), so a trial that has converged ends the usual way."""
    import lightgbm as lgb

    def callback(env: Any) -> None:
        if time.perf_counter() > at:
            callback.cut_short = True  # type: ignore[attr-defined]
            raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

    callback.order = 40  # type: ignore[attr-defined]
    callback.cut_short = False  # type: ignore[attr-defined]
    return callback


def cross_validate(
    params: BoosterConfig,
    seed: int,
    encoded: np.ndarray,
    y: np.ndarray,
    categorical: list[int],
    folds: list,
    deadline: float = float("inf"),
) -> CrossValidated:
    """LightGBM's own cross-validation: all folds grown together, stopped when their mean log loss has not
    improved for `early_stopping_rounds`, or at `deadline` (`time.perf_counter()`)."""
    import lightgbm as lgb

    dataset = lgb.Dataset(
        encoded,
        y,
        categorical_feature=categorical or "auto",
        params={"max_bin": params.max_bin, "verbose": -1},
        free_raw_data=False,
    )
    native = params.lightgbm_params(seed) | {"metric": "binary_logloss"}
    result = lgb.cv(
        native,
        dataset,
        num_boost_round=params.max_rounds,
        folds=folds,
        callbacks=[
            lgb.early_stopping(params.early_stopping_rounds, verbose=False),
            stop := _deadline(deadline),
        ],
        return_cvbooster=True,
        seed=seed,
    )
    rounds = len(result["valid binary_logloss-mean"])
    oof = np.empty(len(y))
    for booster, (_, test_rows) in zip(result["cvbooster"].boosters, folds, strict=True):
        oof[test_rows] = booster.predict(encoded[test_rows], num_iteration=rounds, raw_score=True)
    auc = float(roc_auc_score(y, oof))
    return CrossValidated(
        auc, auc_standard_error(auc, int(y.sum()), int(len(y) - y.sum())), rounds, oof, stop.cut_short
    )


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Standard error of a ROC AUC estimated from `positives` and `negatives` (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / max(positives * negatives, 1)
    return float(np.sqrt(max(variance, 0.0)))


@dataclass
class ChurnChoice:
    """Everything chosen on the training part: trees' parameters and number, calibration, used columns."""

    params: BoosterConfig
    rounds: int
    calibration: str
    calibration_losses: dict[str, float]
    cv_roc_auc: float
    numeric: list[str]
    trials: list[dict[str, Any]] = field(default_factory=list)
    search_seconds: float = 0.0
    rule: str = "the only candidate"
    linear_weight: float = 0.0
    blend_roc_auc: dict[float, float] = field(default_factory=dict)  # out-of-fold ROC AUC per linear weight
    # Fresh-fold CV ROC AUC of the choice and of the configured booster (`_confirm`).
    confirmed: dict[str, float] = field(default_factory=dict)

    def logged_params(self) -> dict[str, str]:
        """What the run logs as `chosen.*`."""
        chosen = self.params.model_dump() | {
            "rounds": self.rounds,
            "calibration": self.calibration,
            "linear_weight": self.linear_weight,
        }
        return {f"chosen.{k}": str(v) for k, v in chosen.items()}


def choose_churn_model(train: pd.DataFrame, schema: FeatureSchema, config: ChurnConfig) -> ChurnChoice:
    """Search (within `search.budget_s` and `search.max_trials`), then choose the calibration, all by grouped
    cross-validation on `train`.

    The configured booster is tried first and kept unless another candidate beats its ROC AUC by more than one
    standard error (the one-standard-error rule): with few rows, the best of many noisy estimates is mostly
    luck, and the regularised default generalises better than the luckiest draw. The budget is a hard limit:
    a trial still running at the deadline stops there with the trees it has, and is the last one.
    """
    X = prepare_features(train, schema)
    y = train[CHURNED].to_numpy(dtype=np.int64)
    groups = train[CUSTOMER_ID].astype(str)
    numeric = usable_numeric_columns(X, schema, MIN_OBSERVED)
    encoded = make_encoder(schema, config.booster.max_categories, numeric).fit_transform(X)
    categorical = categorical_positions(schema)
    folds = cv_folds(groups, y, config.search.folds, config.seed)
    started = time.perf_counter()
    # Training stops a little before the budget ends: scoring the last trial's out-of-fold rows takes a moment.
    finish = min(0.5, 0.05 * config.search.budget_s)
    deadline = started + config.search.budget_s - finish if config.search.enabled else float("inf")
    trials: list[dict[str, Any]] = []
    tried: list[tuple[BoosterConfig, CrossValidated]] = []
    longest = 0.0  # the longest trial so far: the next one is expected to take as long
    for number, overrides in enumerate(candidates(config)):
        elapsed = time.perf_counter() - started
        # The next trial is expected to take as long as the longest so far; after it, `_confirm` runs the
        # configured booster and the best trial once more (each as long as it took in the search).
        confirming = _confirmation_seconds(trials, config.search) if number else 0.0
        if number >= config.search.max_trials or (
            number and elapsed + longest + confirming > config.search.budget_s
        ):
            break
        params = BoosterConfig(**config.booster.model_copy(update=overrides).model_dump())
        trial_started = time.perf_counter()
        result = cross_validate(params, config.seed, encoded, y, categorical, folds, deadline)
        last_seconds = time.perf_counter() - trial_started
        longest = max(longest, last_seconds)
        tried.append((params, result))
        trials.append(
            {
                "params": overrides,
                "cv_roc_auc": result.roc_auc,
                "standard_error": result.standard_error,
                "rounds": result.rounds,
                "seconds": round(last_seconds, 3),
                "cut_short": result.cut_short,
            }
        )
        logger.info(
            "trial %d %s: CV ROC AUC %.4f, %d trees (%.1f s)",
            number,
            overrides or "(config)",
            result.roc_auc,
            result.rounds,
            last_seconds,
        )
        if result.cut_short:
            break
    params, result, rule = _one_standard_error(tried)
    confirmed: dict[str, float] = {}
    if len(tried) > 1:
        # The winner of many trials is re-scored on folds it was not chosen on (`_confirm`); the blend weight and
        # the calibration are then chosen on those folds' scores.
        fresh = cv_folds(groups, y, config.search.confirm_folds, config.seed + 1)
        params, result, rule, confirmed = _confirm(
            tried[0][0],
            params,
            result,
            rule,
            lambda p: cross_validate(p, config.seed, encoded, y, categorical, fresh, deadline),
        )
        if confirmed:  # `result` holds the fresh folds' scores (else still the search's)
            folds = fresh
    search_seconds = time.perf_counter() - started
    weight, blend_auc, oof = choose_linear_weight(result.oof, encoded, y, categorical, folds, config)
    if config.calibration.method == "auto":
        calibration_folds = cv_folds(groups, y, config.calibration.folds, config.seed)
        method, losses = choose_calibration(oof, y, calibration_folds, config.calibration.isotonic_margin)
    else:
        method, losses = config.calibration.method, {}
    logger.info(
        "chose %d trees of %s after %d trial(s) in %.1f s; %s calibration",
        result.rounds,
        params.model_dump(),
        len(trials),
        search_seconds,
        method,
    )
    logger.info("rule: %s", rule)
    logger.info("linear weight %.2f (out-of-fold ROC AUC by weight: %s)", weight, blend_auc)
    return ChurnChoice(
        params,
        result.rounds,
        method,
        losses,
        result.roc_auc,
        numeric,
        trials,
        search_seconds,
        rule,
        weight,
        blend_auc,
        confirmed,
    )


def _one_standard_error(
    tried: list[tuple[BoosterConfig, CrossValidated]],
) -> tuple[BoosterConfig, CrossValidated, str]:
    """The configured booster (the first trial) unless the best trial beats it by more than one standard
    error of the best; then the best."""
    configured = tried[0]
    best = max(tried, key=lambda pair: pair[1].roc_auc)
    if best is configured:
        return (*configured, "the configured booster scored best" if len(tried) > 1 else "the only candidate")
    margin = best[1].roc_auc - configured[1].roc_auc
    if margin <= best[1].standard_error:
        return (
            *configured,
            f"the configured booster: the best trial beat it by {margin:.4f}, within one standard error "
            f"({best[1].standard_error:.4f})",
        )
    return (*best, f"the best trial: {margin:.4f} above the configured booster (one standard error: "
            f"{best[1].standard_error:.4f})")  # fmt: skip


def _confirmation_seconds(trials: list[dict[str, Any]], search: SearchConfig) -> float:
    """What `_confirm` is expected to take for the trials so far: the best one again, and the configured
    booster (the first) again when the best is another, each on `confirm_folds` folds (k folds fit k models on
    (k - 1) / k of the rows: (k - 1) times the rows of one fit on all)."""
    best = max(range(len(trials)), key=lambda i: trials[i]["cv_roc_auc"])
    scale = (search.confirm_folds - 1) / (search.folds - 1)
    return float(scale * (trials[best]["seconds"] + (trials[0]["seconds"] if best else 0.0)))


def _confirm(
    configured: BoosterConfig,
    chosen: BoosterConfig,
    searched: CrossValidated,
    rule: str,
    cross_validated: Any,
) -> tuple[BoosterConfig, CrossValidated, str, dict[str, float]]:
    """The search's choice cross-validated again on fresh folds (`cross_validated(params)`), against the
    configured booster on the same folds when the choice is another candidate.

    The best of many trials scored on the same folds is the luckiest as much as the best: on RavenStack's 400
    training accounts (no detectable signal) the winner of ~100 trials scored 0.04-0.14 above the configured
    booster and then lost to the logistic regression on held-out rows, because the blend weight was chosen
    against its inflated out-of-fold scores. Scores on folds it was not chosen on carry no such bias. A choice
    that does not beat the configured booster on the fresh folds too is dropped for it.

    Returns the parameters, their fresh cross-validation (its trees' number and out-of-fold scores are the
    ones used from here on), the rule and both fresh ROC AUCs. When the deadline cuts the fresh run short,
    `searched` (the search's own cross-validation of `chosen`) stands, as before there was a confirmation.
    """
    again = cross_validated(chosen)
    if again.cut_short:  # the budget ran out: the search's own scores are all there is
        return chosen, searched, f"{rule}; not confirmed (the budget ran out)", {}
    if chosen is configured:
        return chosen, again, f"{rule}; fresh folds: {again.roc_auc:.4f}", {"chosen": again.roc_auc}
    baseline = cross_validated(configured)
    if baseline.cut_short:
        note = f"{rule}; fresh folds: {again.roc_auc:.4f} (the configured booster's run was cut short)"
        return chosen, again, note, {"chosen": again.roc_auc}
    scores = {"chosen": again.roc_auc, "configured": baseline.roc_auc}
    if again.roc_auc > baseline.roc_auc:
        return (
            chosen,
            again,
            f"{rule}; confirmed on fresh folds ({again.roc_auc:.4f} vs {baseline.roc_auc:.4f})",
            scores,
        )
    return (
        configured,
        baseline,
        f"the configured booster: the search's choice did not beat it on fresh folds "
        f"({again.roc_auc:.4f} vs {baseline.roc_auc:.4f}; on the search's folds, {rule})",
        scores,
    )


def fit_calibrated(
    rows: pd.DataFrame, schema: FeatureSchema, choice: ChurnChoice, config: ChurnConfig
) -> Pipeline:
    """`encode` + `CalibratedClassifierCV(trees, cv=grouped folds, ensemble=False)` fitted on `rows`: the
    calibrator learns from out-of-fold scores, the trees are then refitted on all of `rows`."""
    X = prepare_features(rows, schema)
    y = rows[CHURNED].to_numpy(dtype=np.int64)
    folds = cv_folds(rows[CUSTOMER_ID].astype(str), y, config.calibration.folds, config.seed)
    encode = make_encoder(schema, choice.params.max_categories, choice.numeric)
    encoded = encode.fit_transform(X)
    blend = make_blend(
        config,
        categorical_positions(schema),
        make_trees(choice.params, config.seed, choice.rounds),
        choice.linear_weight,
    )
    calibrated = CalibratedClassifierCV(
        blend,
        method=choice.calibration,
        cv=folds,
        ensemble=False,
    )
    with warnings.catch_warnings():
        # LightGBM restates that it treats the listed columns as categories.
        warnings.filterwarnings("ignore", message=".*categorical_feature.*", category=UserWarning)
        calibrated.fit(encoded, y, categorical_feature=categorical_positions(schema) or "auto")
    keep_the_order(calibrated)
    return Pipeline([("encode", encode), ("classifier", calibrated)])


def fit_baseline(train: pd.DataFrame, schema: FeatureSchema, config: ChurnConfig) -> Pipeline:
    """The logistic-regression baseline, fitted on the same training rows."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the problem is small, and spinning BLAS threads stall a shared 2-core machine (a 6k-row
    # fit took 10 s with two threads under load, 0.3 s with one).
    with threadpool_limits(limits=1, user_api="blas"):
        return make_baseline(schema, config).fit(
            prepare_features(train, schema), train[CHURNED].to_numpy(np.int64)
        )
