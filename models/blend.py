"""The churn model's classifier: a logistic regression and LightGBM trees, their log-odds blended.

    raw(x) = w * linear(x) + (1 - w) * trees(x)          # w = `linear_weight`, chosen by grouped CV

Churn data is often nearly additive (a logistic regression is hard to beat) and sometimes not (trees win by
points): the blend keeps both, and cross-validation picks the weight (0: trees only, 1: the linear model
only). It is an ordinary scikit-learn classifier (`fit`, `decision_function`, `predict_proba`), so
`CalibratedClassifierCV` calibrates `raw` as it did the trees alone.

Both parts are exactly additive over the input columns, so the blend is too: `contributions(X)` gives each
column's share of `raw(x) - expected_raw` (the linear part's `coef * (z(x) - mean z)` per column, exact; the
trees' own TreeSHAP, `pred_contrib`), summing to it exactly.

The linear part reads the trees' input (ordinal codes for categorical columns, numbers with NaN): a categorical
column is one-hot encoded (missing or unknown is its own slot), a numeric one median-imputed, clipped to its
training range (as trees are bounded by theirs), standardised, and given a missing flag when training saw
missing values. Its score is computed column by column with elementwise
numpy (no matrix product whose rounding depends on the number of rows), so a row scores the same alone or in a
million.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

_NUMERIC_PARAMS = ("median", "low", "high", "mean", "scale")


class LinearTreesBlend(ClassifierMixin, BaseEstimator):
    """Blended log-odds of a logistic regression and LightGBM trees over the same encoded matrix.

    Args:
        trees: an unfitted `lightgbm.LGBMClassifier` (unused when `linear_weight` is 1).
        linear_weight: w in [0, 1].
        C, max_iter: the logistic regression's.
        categorical: positions of the categorical (ordinal-coded) columns.
    """

    def __init__(
        self,
        trees: object = None,
        linear_weight: float = 0.0,
        C: float = 1.0,
        max_iter: int = 2000,
        categorical: tuple[int, ...] = (),
    ) -> None:
        self.trees = trees
        self.linear_weight = linear_weight
        self.C = C
        self.max_iter = max_iter
        self.categorical = categorical

    # --- fitting ------------------------------------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray, categorical_feature: object = "auto") -> LinearTreesBlend:
        from threadpoolctl import threadpool_limits

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        self._fit_design(X)
        design = self._design(X)
        # One BLAS thread: small problems, and spinning threads stall a shared machine.
        with threadpool_limits(limits=1, user_api="blas"):
            linear = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(design, y)
        self.__dict__.pop("_numeric_cache", None)
        self._split_coefficients(linear.coef_[0], float(linear.intercept_[0]))
        self.column_means_ = self._terms(X).mean(axis=0)
        self.linear_expected_ = self.intercept_ + float(np.sum(self.column_means_))
        self.trees_ = None
        if self.linear_weight < 1:
            from sklearn.base import clone

            self.trees_ = clone(self.trees).fit(X, y, categorical_feature=categorical_feature)
        return self

    def _fit_design(self, X: np.ndarray) -> None:
        """Per column: the categorical codes seen, or the median, mean, scale and whether a missing flag."""
        self.kinds_ = []
        self.params_ = []
        categorical = set(self.categorical)
        for j in range(X.shape[1]):
            column = X[:, j]
            missing = np.isnan(column)
            if j in categorical:
                codes = np.unique(column[~missing]).astype(np.int64)
                self.kinds_.append("categorical")
                self.params_.append({"slots": int(codes.max()) + 2 if codes.size else 1})
                continue
            seen = column[~missing]
            median = float(np.median(seen)) if seen.size else 0.0
            low, high = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 0.0)
            filled = np.where(missing, median, column)
            mean, sd = float(filled.mean()), float(filled.std())
            self.kinds_.append("numeric")
            self.params_.append(
                {
                    "median": median,
                    "low": low,
                    "high": high,
                    "mean": mean,
                    "scale": sd if sd > 0 else 1.0,
                    "flag": bool(missing.any()),
                }
            )

    def _design(self, X: np.ndarray) -> np.ndarray:
        """The logistic regression's input: per column its slots (one-hot) or value (and missing flag)."""
        blocks = []
        for j, (kind, p) in enumerate(zip(self.kinds_, self.params_, strict=True)):
            column = X[:, j]
            missing = np.isnan(column)
            if kind == "categorical":
                slots = self._slot(column, p["slots"])
                blocks.append(np.eye(p["slots"])[slots])
                continue
            blocks.append(self._standardised(column, missing, p)[:, None])
            if p["flag"]:
                blocks.append(missing.astype(np.float64)[:, None])
        return np.hstack(blocks) if blocks else np.zeros((len(X), 0))

    @staticmethod
    def _standardised(column: np.ndarray, missing: np.ndarray, p: dict) -> np.ndarray:
        """Missing -> the training median; values clipped to the training range (a linear term must not
        extrapolate: a typo of 1e9 would otherwise decide the risk alone); then standardised."""
        return (np.clip(np.where(missing, p["median"], column), p["low"], p["high"]) - p["mean"]) / p["scale"]

    @staticmethod
    def _slot(column: np.ndarray, slots: int) -> np.ndarray:
        """Code -> one-hot slot; missing, and codes training never saw, share the last slot."""
        missing = np.isnan(column)
        codes = np.where(missing, slots - 1, column).astype(np.int64)
        return np.where((codes < 0) | (codes >= slots - 1), slots - 1, codes)

    def _split_coefficients(self, coef: np.ndarray, intercept: float) -> None:
        self.intercept_ = intercept
        self.coefficients_ = []
        at = 0
        for kind, p in zip(self.kinds_, self.params_, strict=True):
            width = p["slots"] if kind == "categorical" else 1 + int(p["flag"])
            self.coefficients_.append(np.asarray(coef[at : at + width], dtype=np.float64))
            at += width

    # --- scoring ------------------------------------------------------------------------------------------

    def _terms(self, X: np.ndarray) -> np.ndarray:
        """Each column's (uncentred) term of the linear score, shape (rows, columns); elementwise only.

        The numeric columns are done together, each element by the very operations `_standardised` applies to
        its column (a per-column loop cost more than the rest of scoring one customer)."""
        out = np.zeros((X.shape[0], len(self.kinds_)))
        numeric = self._numeric_terms()
        if numeric["at"].size:
            block = X[:, numeric["at"]]
            missing = np.isnan(block)
            filled = np.clip(np.where(missing, numeric["median"], block), numeric["low"], numeric["high"])
            terms = numeric["coef"] * ((filled - numeric["mean"]) / numeric["scale"])
            flagged = numeric["flagged"]
            terms[:, flagged] += numeric["flag_coef"][flagged] * missing[:, flagged]
            out[:, numeric["at"]] = terms
        for j, (kind, p, coef) in enumerate(zip(self.kinds_, self.params_, self.coefficients_, strict=True)):
            if kind == "categorical":
                out[:, j] = coef[self._slot(X[:, j], p["slots"])]
        return out

    def _numeric_terms(self) -> dict[str, np.ndarray]:
        """The numeric columns' positions and parameters as arrays (built once per loaded model, not saved)."""
        cached = self.__dict__.get("_numeric_cache")
        if cached is None:
            at = [j for j, kind in enumerate(self.kinds_) if kind == "numeric"]
            params = [self.params_[j] for j in at]
            coefs = [self.coefficients_[j] for j in at]
            cached = {
                "at": np.asarray(at, dtype=np.int64),
                **{key: np.asarray([p[key] for p in params], dtype=np.float64) for key in _NUMERIC_PARAMS},
                "coef": np.asarray([c[0] for c in coefs], dtype=np.float64),
                "flagged": np.asarray([bool(p["flag"]) for p in params], dtype=bool),
                "flag_coef": np.asarray(
                    [c[1] if p["flag"] else 0.0 for c, p in zip(coefs, params, strict=True)], np.float64
                ),
            }
            self.__dict__["_numeric_cache"] = cached
        return cached

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_numeric_cache", None)  # derived from params_: never saved with the model
        return state

    def linear_contributions(self, X: np.ndarray) -> np.ndarray:
        """Each column's share of linear(x) - `linear_expected_` (exact)."""
        return self._terms(np.asarray(X, dtype=np.float64)) - self.column_means_

    def linear_score(self, X: np.ndarray, contributions: np.ndarray | None = None) -> np.ndarray:
        """The logistic regression's log-odds: `linear_expected_` plus each column's contribution, added left to
        right (a running sum, never a pairwise one, so the same bits for any row count). `contributions`:
        `linear_contributions(X)` when the caller has them already."""
        if contributions is None:
            contributions = self.linear_contributions(X)
        terms = np.empty((contributions.shape[0], contributions.shape[1] + 1))
        terms[:, 0] = self.linear_expected_
        terms[:, 1:] = contributions
        return np.cumsum(terms, axis=1)[:, -1]  # `accumulate` adds strictly in order

    def tree_score(self, X: np.ndarray, num_threads: int = 0) -> np.ndarray:
        """The trees' raw log-odds (zeros without trees); each row on its own whatever the thread count."""
        if self.trees_ is None:
            return np.zeros(len(X))
        return self.trees_.booster_.predict(X, raw_score=True, num_threads=num_threads)

    def blend(self, linear: np.ndarray, trees: np.ndarray) -> np.ndarray:
        """w * linear + (1 - w) * trees: the one place the two parts meet."""
        w = float(self.linear_weight)
        return w * linear + (1.0 - w) * trees

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return self.blend(self.linear_score(X), self.tree_score(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]
