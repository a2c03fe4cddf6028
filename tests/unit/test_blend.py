"""The churn model's blend of a logistic regression and LightGBM trees (`models.blend`): an exact logistic
regression, exactly additive reasons, the same bits for a row alone or in a batch, and a weight CV chooses."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from models.blend import LinearTreesBlend


def _data(n: int, seed: int, interaction: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two numeric columns (one with missing values), a categorical code column; an additive or an
    interaction (XOR-like) signal."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    code = rng.integers(0, 4, size=n).astype(np.float64)
    signal = 3 * np.sign(a * b) if interaction else 1.2 * a - 0.8 * b + 0.6 * (code == 2)
    y = (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(np.int64)
    b = b.copy()
    b[rng.random(n) < 0.1] = np.nan
    code[rng.random(n) < 0.05] = np.nan
    return np.column_stack([code, a, b]), y


def _blend(weight: float) -> LinearTreesBlend:
    from lightgbm import LGBMClassifier

    trees = LGBMClassifier(n_estimators=30, num_leaves=4, verbose=-1, n_jobs=1, deterministic=True)
    return LinearTreesBlend(trees=trees, linear_weight=weight, categorical=(0,))


def test_the_linear_part_is_the_logistic_regression_of_its_design():
    X, y = _data(2000, seed=1)
    model = _blend(1.0).fit(X, y, categorical_feature=[0])
    design = model._design(X)
    assert design.shape[1] == 5 + 1 + 2  # 4 codes + missing slot, a, b and b's missing flag
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(design, y)
    np.testing.assert_allclose(model.linear_score(X), reference.decision_function(design), rtol=0, atol=1e-6)
    assert model.trees_ is None  # weight 1: no trees are fitted
    np.testing.assert_array_equal(model.decision_function(X), model.linear_score(X))


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_contributions_are_exact_and_do_not_depend_on_the_batch(weight: float):
    X, y = _data(1500, seed=2)
    model = _blend(weight).fit(X, y, categorical_feature=[0])
    linear = model.linear_contributions(X)
    trees = model.trees_.booster_.predict(X, pred_contrib=True) if model.trees_ is not None else None
    expected_trees = trees[0, -1] if trees is not None else 0.0
    total = model.blend(linear, trees[:, :-1] if trees is not None else np.zeros_like(linear)).sum(axis=1)
    expected = model.blend(np.asarray([model.linear_expected_]), np.asarray([expected_trees]))[0]
    np.testing.assert_allclose(total + expected, model.decision_function(X), rtol=0, atol=1e-9)
    alone = np.concatenate([model.decision_function(X[i : i + 1]) for i in range(50)])
    np.testing.assert_array_equal(alone, model.decision_function(X[:50]))
    single = np.concatenate([model.linear_contributions(X[i : i + 1]) for i in range(50)])
    np.testing.assert_array_equal(single, linear[:50])


def test_values_beyond_the_training_range_are_clipped_not_extrapolated():
    X, y = _data(1000, seed=3)
    model = _blend(1.0).fit(X, y, categorical_feature=[0])
    top = np.nanmax(X[:, 1])
    odd = X[:2].copy()
    odd[0, 1], odd[1, 1] = 1e9, top
    terms = model.linear_contributions(odd)
    assert terms[0, 1] == terms[1, 1]
    unseen = X[:1].copy()
    unseen[0, 0] = 17.0  # a code training never saw: the missing slot
    missing = X[:1].copy()
    missing[0, 0] = np.nan
    assert model.linear_contributions(unseen)[0, 0] == model.linear_contributions(missing)[0, 0]


@pytest.mark.parametrize(("interaction", "expect_high"), [(False, True), (True, False)])
def test_cross_validation_weighs_the_linear_part_by_what_the_data_is(interaction: bool, expect_high: bool):
    """Additive data: the logistic regression carries weight; an interaction it cannot express: the trees."""
    from sklearn.metrics import roc_auc_score

    from training.churn_blend import choose_linear_weight
    from training.churn_config import ChurnConfig
    from training.churn_fit import cross_validate

    X, y = _data(3000, seed=4, interaction=interaction)
    folds = list(StratifiedKFold(3).split(X, y))
    config = ChurnConfig()
    trees = cross_validate(config.booster, 1, X, y, [0], folds)
    weight, auc, oof = choose_linear_weight(trees.oof, X, y, [0], folds, config)
    assert set(auc) == set(config.blend.linear_weights) and oof.shape == y.shape
    assert roc_auc_score(y, oof) == auc[weight]
    # The most linear weight within a paired standard error of the best (the one-standard-error rule).
    assert max(auc.values()) - auc[weight] <= 0.01
    assert (weight >= 0.5) if expect_high else (weight <= 0.5 and auc[1.0] < auc[weight] - 0.1), auc


def test_the_paired_auc_difference_standard_error_matches_the_bootstrap():
    """DeLong's standard error of a difference of two ROC AUCs on the same rows, against 2,000 bootstrap
    resamples: small for two nearly identical scorers, large for two unrelated ones, 0 for one scorer."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    from training.churn_blend import paired_auc_difference_se

    def auc(labels: np.ndarray, scores: np.ndarray) -> float:
        """Mann-Whitney's ROC AUC (ties at half): scikit-learn's number, without its ~1 ms of checks per call."""
        positives = labels == 1
        n1, n0 = positives.sum(), (~positives).sum()
        return (rankdata(scores)[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    a = y + rng.normal(0, 2, 400)
    for b in (a + rng.normal(0, 0.3, 400), rng.normal(0, 1, 400) + 0.3 * y):
        assert auc(y, b) == pytest.approx(roc_auc_score(y, b), abs=1e-12)
        rows = [rng.integers(0, 400, 400) for _ in range(2000)]
        boot = np.std([auc(y[i], a[i]) - auc(y[i], b[i]) for i in rows])
        assert paired_auc_difference_se(y, a, b) == pytest.approx(boot, rel=0.15)
    assert paired_auc_difference_se(y, a, a) == 0.0


def _terms_column_by_column(model: LinearTreesBlend, X: np.ndarray) -> np.ndarray:
    """The linear terms as first written, one column at a time: the reference the vectorised terms must equal
    bit for bit (models trained before keep their scores)."""
    out = np.zeros((X.shape[0], len(model.kinds_)))
    for j, (kind, p, coef) in enumerate(zip(model.kinds_, model.params_, model.coefficients_, strict=True)):
        column = X[:, j]
        missing = np.isnan(column)
        if kind == "categorical":
            out[:, j] = coef[model._slot(column, p["slots"])]
            continue
        out[:, j] = coef[0] * model._standardised(column, missing, p)
        if p["flag"]:
            out[:, j] += coef[1] * missing
    return out


def test_linear_terms_equal_the_column_by_column_reference_bit_for_bit():
    import pickle

    X, y = _data(3000, seed=4)
    rng = np.random.default_rng(5)
    extra = rng.normal(size=(3000, 3)) * [1.0, 1e6, 1e-6]
    extra[rng.random((3000, 3)) < 0.2] = np.nan
    X = np.column_stack([X, extra])
    model = LinearTreesBlend(linear_weight=1.0, categorical=(0,)).fit(X, y)
    probe = X.copy()
    probe[:100] *= 1e3  # beyond the training range: clipped
    probe[100:200] = np.nan
    np.testing.assert_array_equal(model._terms(probe), _terms_column_by_column(model, probe))
    restored = pickle.loads(pickle.dumps(model))  # the cache is not saved, and is rebuilt the same
    np.testing.assert_array_equal(restored.linear_score(probe[:7]), model.linear_score(probe[:7]))
    assert "_numeric_cache" not in model.__getstate__()
