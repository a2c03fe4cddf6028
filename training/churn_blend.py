"""The churn model's blend weight: how much of the logistic regression goes into the log-odds (`models.blend`).

    weight, auc, oof = choose_linear_weight(trees_oof, encoded, y, categorical, folds, config)

The trees' out-of-fold scores come from the search (`training.churn_fit`); the logistic regression is fitted on
the same grouped folds, and every weight in `blend.linear_weights` is scored by the out-of-fold ROC AUC of its
blend. The chosen weight is the most linear one within one paired (DeLong) standard error of the best.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from models.blend import LinearTreesBlend
from training.churn_config import ChurnConfig


def linear_oof(
    encoded: np.ndarray, y: np.ndarray, categorical: list[int], folds: list, config: ChurnConfig
) -> np.ndarray:
    """Out-of-fold log-odds of the blend's logistic regression, on the trees' folds."""
    oof = np.empty(len(y))
    for fit_rows, test_rows in folds:
        linear = make_blend(config, categorical, trees=None, linear_weight=1.0).fit(
            encoded[fit_rows], y[fit_rows]
        )
        oof[test_rows] = linear.linear_score(encoded[test_rows])
    return oof


def choose_linear_weight(
    trees_oof: np.ndarray,
    encoded: np.ndarray,
    y: np.ndarray,
    categorical: list[int],
    folds: list,
    config: ChurnConfig,
) -> tuple[float, dict[float, float], np.ndarray]:
    """The blend weight, every weight's out-of-fold ROC AUC, and the chosen blend's out-of-fold scores (what
    calibration is chosen on).

    The most linear weight whose ROC AUC is within one standard error of the best one's, the standard error of
    their paired difference (DeLong): the trees' out-of-fold scores are a little optimistic (their number of
    trees was chosen on the same folds), so on data with little signal the best-looking blend is often luck,
    while a difference that two highly correlated blends show on thousands of rows is real.
    """
    weights = config.blend.linear_weights
    linear = linear_oof(encoded, y, categorical, folds, config) if any(w > 0 for w in weights) else None
    blends = {w: trees_oof if linear is None else w * linear + (1 - w) * trees_oof for w in weights}
    auc = {w: float(roc_auc_score(y, scores)) for w, scores in blends.items()}
    best = max(weights, key=lambda w: auc[w])  # max keeps the first of equals
    close = [w for w in weights if auc[best] - auc[w] <= paired_auc_difference_se(y, blends[best], blends[w])]
    chosen = max(close)
    return chosen, auc, blends[chosen]


def paired_auc_difference_se(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of ROC AUC(a) - ROC AUC(b) on the same rows (DeLong et al., 1988: placement values)."""
    from scipy.stats import rankdata

    positive, negative = y == 1, y == 0
    m, n = int(positive.sum()), int(negative.sum())
    if m < 2 or n < 2:
        return 0.0
    components = []
    for scores in (a, b):
        every = rankdata(scores)
        among_positive = rankdata(scores[positive])
        among_negative = rankdata(scores[negative])
        v10 = (every[positive] - among_positive) / n  # per positive: share of negatives scored below it
        v01 = 1.0 - (every[negative] - among_negative) / m  # per negative: share of positives above it
        components.append((v10, v01))
    s10 = np.cov(np.vstack([components[0][0], components[1][0]]))
    s01 = np.cov(np.vstack([components[0][1], components[1][1]]))
    covariance = s10 / m + s01 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    return float(np.sqrt(max(variance, 0.0)))


def make_blend(
    config: ChurnConfig, categorical: list[int], trees: Any, linear_weight: float
) -> LinearTreesBlend:
    """Unfitted `LinearTreesBlend` with the baseline's regularisation."""
    return LinearTreesBlend(
        trees=trees,
        linear_weight=linear_weight,
        C=config.baseline.C,
        max_iter=config.baseline.max_iter,
        categorical=tuple(categorical),
    )
