"""`training.folds.cv_folds`: the folds of scikit-learn's `StratifiedGroupKFold`, exactly, computed faster."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from training.folds import cv_folds, greedy_group_folds


def _sklearn(groups: np.ndarray, y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups=groups))


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for (train, test), (want_train, want_test) in zip(got, want, strict=True):
        np.testing.assert_array_equal(test, want_test)
        np.testing.assert_array_equal(train, want_train)
        assert train.dtype == want_train.dtype and test.dtype == want_test.dtype


def _snapshots(rng: np.random.Generator, n_customers: int, churn_rate: float, classes: int = 2):
    """Customers with 1-6 snapshots each (ids as text, in shuffled row order) and labels per snapshot."""
    per_customer = rng.integers(1, 7, n_customers)
    groups = np.repeat([f"C{i:05d}" for i in range(n_customers)], per_customer)
    if classes == 2:
        y = (rng.random(len(groups)) < churn_rate).astype(np.int64)
    else:
        y = rng.integers(0, classes, len(groups))
    order = rng.permutation(len(groups))
    return groups[order], y[order]


@pytest.mark.parametrize("folds", [2, 3, 5, 10])
def test_the_folds_are_scikit_learns_exactly(folds: int):
    """Many shapes: rare and common churn, few and many customers, several seeds, up to ten folds (where numpy
    could sum in another order) and three classes."""
    rng = np.random.default_rng(folds)
    compared = 0
    for case in range(8):
        n_customers = int(rng.integers(folds * 4, 300))
        churn_rate = float(rng.choice([0.03, 0.1, 0.3, 0.5]))
        groups, y = _snapshots(rng, n_customers, churn_rate, classes=3 if case == 7 else 2)
        if np.bincount(y).min() < folds:
            continue
        seed = int(rng.integers(0, 10_000))
        fast = greedy_group_folds(groups, y, folds, seed)
        assert fast is not None
        _assert_same(fast, _sklearn(groups, y, folds, seed))
        _assert_same(cv_folds(pd.Series(groups), y, folds, seed), fast)
        compared += 1
    assert compared >= 6


def test_a_class_smaller_than_the_folds_is_left_to_scikit_learn_and_its_warning():
    groups = np.repeat(np.arange(40), 2).astype(str)
    y = np.zeros(80, dtype=np.int64)
    y[:4] = 1  # 4 churned snapshots, 5 folds
    assert greedy_group_folds(groups, y, 5, 0) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cv_folds(pd.Series(groups), y, 5, 0)
    assert any("least populated class" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_same(got, _sklearn(groups, y, 5, 0))


def test_one_snapshot_per_customer_is_a_plain_stratified_split():
    from sklearn.model_selection import StratifiedKFold

    y = np.tile([0, 0, 1], 30)
    groups = pd.Series([f"C{i}" for i in range(90)])
    want = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=4).split(np.zeros(90), y))
    _assert_same(cv_folds(groups, y, 3, 4), want)
