"""Several survival models as one: their curves averaged on the union of their time grids.

    AveragedSurvival([InvariantCox(alpha=1.0), GradientBoostingSurvivalAnalysis()]).fit(X, y)

Each member's curve is read at every time any member knows (a step function holds its last value), the curves
are averaged in a fixed order, and the risk is minus the area under the averaged curve (the restricted mean
survival time): a customer who leaves sooner has less area. Everything is computed row by row, so a customer
is scored the same alone or in a batch, as the members are (`models.survival_cox`, one-job forests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone


class AveragedSurvival(BaseEstimator):
    """The mean curve of `estimators` (scikit-survival models with `unique_times_` and array curves)."""

    def __init__(self, estimators: list[Any] | None = None) -> None:
        self.estimators = estimators

    def fit(self, X: Any, y: Any) -> AveragedSurvival:
        return self.use_fitted([clone(e).fit(X, y) for e in self.estimators or []])

    def use_fitted(self, fitted: list[Any]) -> AveragedSurvival:
        """Take members already fitted on the same rows (the trainer fits each candidate once)."""
        if not fitted:
            raise ValueError("an average of survival models needs at least one model")
        self.estimators_ = list(fitted)
        self.unique_times_ = np.unique(np.concatenate([e.unique_times_ for e in fitted]))
        return self

    def _curves(self, X: Any) -> np.ndarray:
        total = np.zeros((len(X), len(self.unique_times_)))
        for member in self.estimators_:
            values = member.predict_survival_function(X, return_array=True)
            index = np.searchsorted(member.unique_times_, self.unique_times_, side="right") - 1
            total += np.where(index[None, :] < 0, 1.0, values[:, np.clip(index, 0, None)])
        return total / len(self.estimators_)

    def predict_survival_function(self, X: Any, return_array: bool = False) -> Any:
        from sksurv.functions import StepFunction

        curves = self._curves(X)
        if return_array:
            return curves
        return np.array([StepFunction(x=self.unique_times_, y=row) for row in curves], dtype=object)

    def predict(self, X: Any) -> np.ndarray:
        """Minus the restricted mean survival time up to the last known time (higher: leaves sooner)."""
        curves = self._curves(X)
        widths = np.diff(self.unique_times_)
        area = self.unique_times_[0] + (curves[:, :-1] * widths[None, :]).sum(axis=1)
        return -area
