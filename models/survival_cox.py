"""scikit-survival's ridge Cox model with a batch-invariant linear predictor.

Its own `predict` is one matrix-vector product, whose rounding may depend on how many rows are scored together;
here each row's elementwise products are summed on their own, so a customer's curve is the same alone, in a
batch or on Spark. Everything else (fitting, Breslow's baseline, curves from the predictor) is scikit-survival's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data
from sksurv.linear_model import CoxPHSurvivalAnalysis


class InvariantCox(CoxPHSurvivalAnalysis):
    """`CoxPHSurvivalAnalysis` whose linear predictor is summed row by row."""

    def fit(self, X: Any, y: Any) -> InvariantCox:
        """scikit-survival's Newton fit. A first step that overshoots (rare customers far out on a standardised
        feature) overflows exp(x.w) to infinity; the fit sees the infinite loss and halves the step, so the
        overflow is expected and its warnings only noise."""
        with np.errstate(over="ignore"):
            return super().fit(X, y)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, np.asarray(X, dtype=np.float64), reset=False)
        return (X * self.coef_[None, :]).sum(axis=1)
