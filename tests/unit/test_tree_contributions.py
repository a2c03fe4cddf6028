"""Contribution tables (`models.tree_contributions`) give LightGBM's `pred_contrib` for every kind of split, and
the same bits for a row whatever the rows around it."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import pytest

from models import tree_contributions
from models.tree_contributions import ContributionTables

WIDTH = 8
CATEGORICAL = 3


def _training_rows(seed: int, missing: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 4000
    X = rng.normal(size=(n, WIDTH))
    X[:, CATEGORICAL] = rng.integers(0, 9, n)
    X[:, 4] = np.where(rng.random(n) < 0.4, 0.0, X[:, 4])  # many exact zeros
    if missing:
        X[rng.random((n, WIDTH)) < 0.15] = np.nan
    signal = np.nan_to_num(X[:, 0]) + (np.nan_to_num(X[:, CATEGORICAL]) % 3 == 0) - np.nan_to_num(X[:, 4])
    y = (signal + rng.normal(size=n) > 0.5).astype(int)
    return X, y


def _booster(leaves: int, missing: bool = True, **params: object) -> lgb.Booster:
    X, y = _training_rows(leaves, missing)
    model = lgb.LGBMClassifier(
        n_estimators=120, num_leaves=leaves, min_child_samples=10, colsample_bytree=0.8, verbose=-1, **params
    )
    return model.fit(X, y, categorical_feature=[CATEGORICAL]).booster_


def _hostile_rows(booster: lgb.Booster, n: int = 3000, seed: int = 5) -> np.ndarray:
    """Random rows plus every value a split can be fooled by: each threshold and its neighbours, 0, -0, values
    inside and just outside LightGBM's zero threshold, NaN, +-inf, and category codes that are negative,
    fractional (-0.5 is category 0), unseen or NaN."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, WIDTH))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[:, CATEGORICAL] = rng.choice(
        [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.7, 3.0, 6.0, 8.0, 12.0, 1e12, np.nan], n
    )
    zero = float(np.float32(1e-35))
    specials = [
        0.0,
        -0.0,
        zero,
        -zero,
        math.nextafter(zero, 1.0),
        -math.nextafter(zero, 1.0),
        np.inf,
        -np.inf,
    ]
    for info in booster.dump_model()["tree_info"]:
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" not in node:
                continue
            stack += [node["left_child"], node["right_child"]]
            if node["decision_type"] == "<=":
                t = float(node["threshold"])
                specials += [t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)]
    numeric = [c for c in range(WIDTH) if c != CATEGORICAL]
    picks = rng.random((n, len(numeric))) < 0.3
    X[:, numeric] = np.where(picks, rng.choice(specials, (n, len(numeric))), X[:, numeric])
    return X


@pytest.mark.parametrize(
    ("leaves", "params"),
    [
        (4, {}),  # missing type NaN (NaN seen in training)
        (4, {"zero_as_missing": True}),  # missing type Zero
        (7, {"use_missing": False}),  # missing type None: NaN read as 0
        (2, {}),
    ],
)
def test_tables_give_lightgbms_contributions(leaves: int, params: dict) -> None:
    booster = _booster(leaves, **params)
    tables = ContributionTables.build(booster)
    assert tables is not None
    X = _hostile_rows(booster)
    expected = booster.predict(X, pred_contrib=True)
    got = tables.contributions(X)
    assert got.shape == (len(X), WIDTH)
    # The same values to rounding (the tables sum each tree on its own, LightGBM into one running total).
    np.testing.assert_allclose(got, expected[:, :-1], rtol=0, atol=1e-12)
    assert tables.expected == pytest.approx(expected[0, -1], abs=1e-12)
    # A wrong branch would be off by a whole leaf's share, not by rounding.
    assert np.abs(got - expected[:, :-1]).max() < 1e-13
    # The raw score is LightGBM's bit for bit (the same leaf values added in the same order), in both ways
    # of computing it (few rows at once, and many tree by tree).
    for rows in (X[:200], X):
        raw, _ = tables.evaluate(rows, explain=True)
        assert np.array_equal(raw, booster.predict(rows, raw_score=True))
        assert np.array_equal(tables.raw_score(rows), raw)


def test_missing_types_none_zero_and_nan_all_occur() -> None:
    """The cases above reach each of LightGBM's three missing types (so each decision rule is tested)."""
    seen = set()
    for leaves, params in [(4, {}), (4, {"zero_as_missing": True}), (7, {"use_missing": False})]:
        for info in _booster(leaves, **params).dump_model()["tree_info"]:
            stack = [info["tree_structure"]]
            while stack:
                node = stack.pop()
                if "split_index" in node:
                    seen.add((node["decision_type"], node["missing_type"]))
                    stack += [node["left_child"], node["right_child"]]
    assert {("<=", "None"), ("<=", "Zero"), ("<=", "NaN")} <= seen
    assert any(kind == "==" for kind, _ in seen)  # and categorical splits


def test_a_row_gets_the_same_bits_alone_in_a_batch_and_across_chunks(monkeypatch) -> None:
    booster = _booster(4)
    tables = ContributionTables.build(booster)
    X = _hostile_rows(booster, n=700)
    whole = tables.contributions(X)  # > _FEW_ROWS: tree by tree
    alone = np.vstack([tables.contributions(X[i : i + 1]) for i in range(len(X))])  # one vectorised pass
    few = np.vstack([tables.contributions(X[i : i + 50]) for i in range(0, len(X), 50)])
    monkeypatch.setattr(tree_contributions, "_CHUNK_ROWS", 97)
    chunked = tables.contributions(X)
    for other in (alone, few, chunked):
        assert np.array_equal(whole, other)
    raw_alone = np.concatenate([tables.raw_score(X[i : i + 1]) for i in range(len(X))])
    assert np.array_equal(tables.raw_score(X), raw_alone)


def test_large_trees_are_left_to_pred_contrib() -> None:
    assert ContributionTables.build(_booster(31)) is None


def test_a_pattern_without_a_table_row_is_computed_by_lightgbm(caplog) -> None:
    booster = _booster(4)
    tables = ContributionTables.build(booster)
    X = _hostile_rows(booster, n=300)
    patterns = tables.patterns(X[:1])[0]
    # As if no synthetic row had taken the first row's pattern (its table row and leaf value unknown).
    tables._table[0, patterns[0], 0] = np.nan
    tables._leaf_value[0, patterns[0]] = np.nan
    raw, got = tables.evaluate(X, explain=True)
    expected = booster.predict(X, pred_contrib=True)[:, :-1]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.array_equal(raw, booster.predict(X, raw_score=True))
    assert np.array_equal(tables.raw_score(X[:5]), booster.predict(X[:5], raw_score=True))
    assert "unforeseen branch pattern" in caplog.text
