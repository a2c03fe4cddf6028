"""The churn model at inference time: exact reasons, risk bands, contract checks, batch-size independence.

Models here are tiny and built in the test (no registry), except the load test, which saves an MLflow model
folder the way the trainer logs it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.ensemble import HistGradientBoostingClassifier

from features.columns import CHURNED, CUSTOMER_ID
from features.engine import FEATURE_VERSION, FeatureSchema, build_customer_features, infer_schema
from models.churn import (
    ChurnModel,
    ModelContractError,
    RiskCutoffs,
    check_contract,
    prepare_features,
    risk_band,
)
from models.treeshap import BoostedTreeExplainer
from training.churn import model_metadata, pip_requirements, skops_trusted_types
from training.churn_config import ChurnConfig
from training.churn_fit import fit_churn_model

FAST = {"booster": {"max_iter": 40, "learning_rate": 0.15, "early_stopping": False, "min_samples_leaf": 20}}


# --- risk bands --------------------------------------------------------------------------------------------


def test_risk_band_edges_fall_in_the_higher_band():
    cutoffs = RiskCutoffs(0.2, 0.5, 0.8)
    p = [0.0, 0.19999, 0.2, 0.49, 0.5, 0.79, 0.8, 1.0]
    assert list(risk_band(p, cutoffs)) == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
        "critical",
        "critical",
    ]
    # Mappings and sequences are accepted, and give the same answer.
    assert list(risk_band(p, {"medium": 0.2, "high": 0.5, "critical": 0.8})) == list(
        risk_band(p, (0.2, 0.5, 0.8))
    )


def test_risk_band_refuses_bad_input():
    with pytest.raises(ValueError, match="ascending|medium < high"):
        RiskCutoffs(0.5, 0.4, 0.8)
    with pytest.raises(ValueError, match="0 < medium"):
        RiskCutoffs(0.0, 0.4, 0.8)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        risk_band([0.1, np.nan], RiskCutoffs())
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        risk_band([1.2], RiskCutoffs())


# --- TreeSHAP against brute force --------------------------------------------------------------------------


def _path_dependent_value(booster: HistGradientBoostingClassifier, x: np.ndarray, subset: set[int]) -> float:
    """E[f(x) | x_S] as path-dependent TreeSHAP defines it, by recursion over every tree (test oracle)."""
    known, f_idx_map = booster._bin_mapper.make_known_categories_bitsets()
    total = float(booster._baseline_prediction.ravel()[0])
    for (predictor,) in booster._predictors:
        nodes, bitsets = predictor.nodes, predictor.raw_left_cat_bitsets

        def walk(i: int, nodes=nodes, bitsets=bitsets) -> float:
            node = nodes[i]
            if node["is_leaf"]:
                return float(node["value"])
            feature = int(node["feature_idx"])
            if feature not in subset:
                left, right = int(node["left"]), int(node["right"])
                return (nodes[left]["count"] * walk(left) + nodes[right]["count"] * walk(right)) / node[
                    "count"
                ]
            value = x[feature]
            missing_child = node["left"] if node["missing_go_to_left"] else node["right"]
            if np.isnan(value):
                return walk(int(missing_child))
            if node["is_categorical"]:
                code = int(value)
                if value < 0:
                    return walk(int(missing_child))
                if (bitsets[node["bitset_idx"], code // 32] >> (code % 32)) & 1:
                    return walk(int(node["left"]))
                if (known[f_idx_map[feature], code // 32] >> (code % 32)) & 1:
                    return walk(int(node["right"]))
                return walk(int(missing_child))
            return walk(int(node["left"] if value <= node["num_threshold"] else node["right"]))

        total += walk(0)
    return total


def _brute_force_shap(booster: HistGradientBoostingClassifier, x: np.ndarray) -> np.ndarray:
    n = len(x)
    values = {
        s: _path_dependent_value(booster, x, set(s))
        for k in range(n + 1)
        for s in itertools.combinations(range(n), k)
    }
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for s in itertools.combinations(others, k):
                phi[i] += weight * (values[tuple(sorted((*s, i)))] - values[s])
    return phi


@pytest.fixture(scope="module")
def small_booster() -> tuple[HistGradientBoostingClassifier, np.ndarray]:
    """Five features: numeric with NaN, categorical (in the middle, so sklearn reorders it) with NaN."""
    rng = np.random.default_rng(3)
    n = 2000
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 6, n).astype(float),
            rng.normal(size=n),
            rng.integers(0, 3, n).astype(float),
            rng.normal(size=n),
        ]
    )
    X[rng.random(n) < 0.1, 0] = np.nan
    X[rng.random(n) < 0.05, 1] = np.nan
    score = X[:, 2] + 1.5 * (X[:, 1] == 3) - 0.8 * np.nan_to_num(X[:, 0]) + 0.7 * (X[:, 3] == 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(int)
    booster = HistGradientBoostingClassifier(
        max_iter=25, max_leaf_nodes=8, categorical_features=[False, True, False, True, False], random_state=0
    ).fit(X, y)
    probe = X[:12].copy()
    probe[0, 1] = 7.0  # category never seen in training: sklearn treats it as missing
    probe[1, 3] = -1.0  # negative code: also missing
    probe[2, :] = np.nan
    return booster, probe


def test_treeshap_equals_brute_force_shapley_values(small_booster):
    booster, probe = small_booster
    explainer = BoostedTreeExplainer(booster)
    phi = explainer.shap_values(probe)
    # The trees see sklearn's remapped columns (categorical first); the oracle works there too.
    remapped = booster._preprocess_X(probe, reset=False)
    order = np.r_[np.flatnonzero(booster.is_categorical_), np.flatnonzero(~booster.is_categorical_)]
    for row in range(6):
        np.testing.assert_allclose(phi[row][order], _brute_force_shap(booster, remapped[row]), atol=1e-12)


def test_treeshap_adds_up_to_the_raw_score(small_booster):
    booster, probe = small_booster
    explainer = BoostedTreeExplainer(booster)
    raw, phi = explainer.explain(probe)
    # The explainer's raw score is the booster's, bit for bit (it replaces a second pass over the trees).
    np.testing.assert_array_equal(raw, booster.decision_function(probe))
    np.testing.assert_array_equal(explainer.decision_function(probe), raw)
    np.testing.assert_allclose(
        explainer.expected_value + phi.sum(axis=1), booster.decision_function(probe), atol=1e-10
    )
    assert np.abs(phi).sum() > 1.0  # not trivially zero


# --- a small calibrated churn model -----------------------------------------------------------------------


def _customers(n: int, seed: int) -> pd.DataFrame:
    """A one-table customer base whose churn depends on plan, tenure, support calls and a missing flag."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2])
    tenure = rng.gamma(2.0, 12.0, n)
    calls = rng.poisson(1.5, n).astype(float)
    charges = rng.normal(50, 15, n)
    charges[rng.random(n) < 0.05] = np.nan
    region = rng.choice(["north", "south", "east", "west"], n).astype(object)
    region[rng.random(n) < 0.05] = None
    score = -1.0 + 0.9 * (plan == "basic") - 0.05 * tenure + 0.6 * calls + 0.5 * np.isnan(charges)
    churned = (rng.random(n) < 1 / (1 + np.exp(-score))).astype("int8")
    return pd.DataFrame(
        {
            CUSTOMER_ID: [f"c{i:05d}" for i in range(n)],
            "plan": plan,
            "tenure": tenure,
            "support_calls": calls,
            "monthly_charges": charges,
            "region": pd.Series(region, dtype="string"),
            CHURNED: churned,
        }
    )


def _fit(customers: pd.DataFrame, **overrides) -> tuple[ChurnModel, pd.DataFrame]:
    schema = infer_schema(customers, None)
    features = build_customer_features(None, "2024-01-01", schema, customers=customers)
    frame = features.reset_index()
    frame[CHURNED] = customers[CHURNED].to_numpy()
    config = ChurnConfig(**(FAST | overrides))
    fitted = fit_churn_model(frame, schema, config)
    return ChurnModel(fitted.pipeline, schema, config.risk_bands.cutoffs()), features


@pytest.fixture(scope="module")
def sigmoid_model() -> tuple[ChurnModel, pd.DataFrame]:
    return _fit(_customers(3000, seed=1), calibration={"method": "sigmoid"})


@pytest.fixture(scope="module")
def isotonic_model() -> tuple[ChurnModel, pd.DataFrame]:
    return _fit(_customers(3000, seed=1), calibration={"method": "isotonic"})


@pytest.mark.parametrize("which", ["sigmoid_model", "isotonic_model"])
def test_contributions_add_up_to_calibrated_log_odds(which, request):
    model, features = request.getfixturevalue(which)
    assert model.calibration == which.split("_")[0]
    proba = model.predict_proba(features)
    contributions = model.contributions(features)
    assert list(contributions.columns) == model.schema.feature_names()
    target = logit(np.clip(proba, 1e-9, 1 - 1e-9)) - model.base_logit
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(), target, atol=1e-6)
    # The explained rows are not degenerate: several features matter, with both signs.
    assert (contributions.abs().mean() > 0.01).sum() >= 3
    assert (contributions.to_numpy() > 0).any() and (contributions.to_numpy() < 0).any()


@pytest.mark.parametrize("which", ["sigmoid_model", "isotonic_model"])
def test_probabilities_equal_the_sklearn_pipeline_exactly(which, request):
    """ChurnModel scores with the explainer's pass over the trees; the logged pipeline must agree bit for bit."""
    model, features = request.getfixturevalue(which)
    odd = features.iloc[:3].copy()
    odd["plan"] = ["platinum", None, "basic"]
    odd["tenure"] = [np.nan, 1e6, -3.0]
    rows = pd.concat([features, odd.set_axis(["odd1", "odd2", "odd3"])])
    expected = model.pipeline.predict_proba(prepare_features(rows, model.schema))[:, 1]
    np.testing.assert_array_equal(model.predict_proba(rows), expected)
    np.testing.assert_array_equal(model.score(rows)["churn_risk"].to_numpy(), expected)


def test_fast_input_path_equals_the_sklearn_encoders(sigmoid_model):
    model, features = sigmoid_model
    assert model._tree_input is not None  # the fast path is in use
    odd = features.iloc[:4].copy()
    odd["plan"] = ["platinum", None, "basic", np.nan]
    odd["region"] = pd.array([None, "mars", "north", pd.NA], dtype="string")
    odd["tenure"] = ["12", None, "abc", 3]  # text from a JSON request: parsed as numbers, else missing
    rows = pd.concat([features, odd.set_axis(["o1", "o2", "o3", "o4"])])
    fast, values = model._tree_input.transform(rows)
    np.testing.assert_array_equal(fast, model._slow_trees_input(rows))
    assert values["plan"][-4:].tolist() == ["platinum", None, "basic", None]
    np.testing.assert_array_equal(values["tenure"][-4:], [12.0, np.nan, np.nan, 3.0])


def test_base_logit_is_near_the_churn_rate(sigmoid_model):
    model, features = sigmoid_model
    mean_risk = model.predict_proba(features).mean()
    assert abs(1 / (1 + math.exp(-model.base_logit)) - mean_risk) < 0.08


def test_reasons_are_directional(sigmoid_model):
    """More support calls push risk up; a long tenure pushes it down (the data were made that way)."""
    model, features = sigmoid_model
    contributions = model.contributions(features)
    calls = features["support_calls"]
    assert (
        contributions.loc[calls >= 4, "support_calls"].mean()
        > 0
        > contributions.loc[calls == 0, "support_calls"].mean()
    )
    tenure = features["tenure"]
    assert contributions.loc[tenure > 50, "tenure"].mean() < 0


def test_explain_lists_top_features_with_values(sigmoid_model):
    model, features = sigmoid_model
    rows = features.iloc[:50]
    reasons = model.explain(rows, top_k=3)
    contributions = model.contributions(rows)
    assert len(reasons) == 50 and all(len(r) == 3 for r in reasons)
    for (customer, row), listed in zip(contributions.iterrows(), reasons, strict=True):
        expected = row.abs().sort_values(ascending=False, kind="stable").index[:3].tolist()
        assert [r["feature"] for r in listed] == expected
        for item in listed:
            assert set(item) == {"feature", "value", "contribution"}
            assert item["contribution"] == pytest.approx(row[item["feature"]], abs=1e-12)
            raw = rows.loc[customer, item["feature"]]
            if pd.isna(raw):
                assert item["value"] is None
            elif item["feature"] in ("plan", "region"):
                assert item["value"] == raw
            else:
                assert item["value"] == pytest.approx(float(raw))


def test_one_row_and_many_rows_are_bit_identical(sigmoid_model, isotonic_model):
    for model, features in (sigmoid_model, isotonic_model):
        many = model.score(features, top_k=5)
        picks = [0, 7, 1234, len(features) - 1]
        for i in picks:
            one = model.score(features.iloc[[i]], top_k=5)
            assert one["churn_risk"].iloc[0] == many["churn_risk"].iloc[i]  # exact, not approx
            assert one["risk_band"].iloc[0] == many["risk_band"].iloc[i]
            assert one["reasons"].iloc[0] == many["reasons"].iloc[i]
        # A shuffled, differently sized batch gives the same numbers too.
        subset = features.iloc[::-3]
        np.testing.assert_array_equal(
            model.contributions(subset).to_numpy(), model.contributions(features).loc[subset.index].to_numpy()
        )
        assert list(many.columns) == [
            "churn_risk",
            "risk_band",
            "base_value",
            "other_contribution",
            "reasons",
        ]
        assert many.index.equals(features.index)
        for i in picks:
            one = model.score(features.iloc[[i]], top_k=5)
            assert one["base_value"].iloc[0] == many["base_value"].iloc[i]
            assert one["other_contribution"].iloc[0] == many["other_contribution"].iloc[i]


@pytest.mark.parametrize("top_k", [0, 1, 5])
def test_reasons_reconcile_with_the_risk(sigmoid_model, isotonic_model, top_k):
    """base_value + listed contributions + other_contribution = logit(churn_risk), for both calibrations."""
    for model, features in (sigmoid_model, isotonic_model):
        scored = model.score(features.iloc[:300], top_k=top_k)
        listed = np.array([sum(r["contribution"] for r in row) for row in scored["reasons"]])
        total = scored["base_value"].to_numpy() + listed + scored["other_contribution"].to_numpy()
        p = np.clip(scored["churn_risk"].to_numpy(), 1e-9, 1 - 1e-9)
        np.testing.assert_allclose(total, logit(p), rtol=0, atol=1e-9)
        assert (scored["base_value"] == model.base_logit).all()
        if top_k == 0:
            assert (scored["reasons"].map(len) == 0).all()
        else:
            # The rest is what the model says the unlisted features contribute.
            all_contributions = model.contributions(features.iloc[:300]).to_numpy()
            np.testing.assert_allclose(
                listed + scored["other_contribution"].to_numpy(), all_contributions.sum(axis=1), atol=1e-6
            )


def test_unknown_categories_and_missing_values_are_scored(sigmoid_model):
    model, features = sigmoid_model
    odd = features.iloc[:3].copy()
    odd["plan"] = ["platinum", None, "basic"]  # unseen, missing, known
    odd["monthly_charges"] = [np.nan, 1e9, -5.0]
    scored = model.score(odd)
    assert scored["churn_risk"].between(0, 1).all()
    proba = scored["churn_risk"].to_numpy()
    np.testing.assert_allclose(
        model.contributions(odd).sum(axis=1), logit(proba) - model.base_logit, atol=1e-6
    )


def test_prepare_features_names_missing_columns(sigmoid_model):
    model, features = sigmoid_model
    with pytest.raises(ModelContractError, match="tenure"):
        model.predict_proba(features.drop(columns=["tenure"]))
    # Column order and extra columns do not matter: columns are taken by name.
    shuffled = features[features.columns[::-1]].assign(extra=1.0)
    np.testing.assert_array_equal(model.predict_proba(shuffled), model.predict_proba(features))
    prepared = prepare_features(features, model.schema)
    assert prepared["plan"].dtype == object and prepared["tenure"].dtype == np.float64


# --- the contract a logged model carries -------------------------------------------------------------------


def _metadata(model: ChurnModel) -> dict:
    class _Fitted:  # the parts of FittedChurn that model_metadata reads
        pipeline = model.pipeline
        calibration = model.calibration

    return model_metadata(model.schema, model.cutoffs, _Fitted)


def test_check_contract_refuses_other_feature_versions_and_columns(sigmoid_model):
    model, _ = sigmoid_model
    metadata = _metadata(model)
    assert check_contract(metadata) == model.schema
    with pytest.raises(ModelContractError, match="feature version 0 .* builds version " + FEATURE_VERSION):
        check_contract(metadata | {"feature_version": "0"})
    reordered = list(reversed(metadata["feature_columns"]))
    with pytest.raises(ModelContractError, match="do not match"):
        check_contract(metadata | {"feature_columns": reordered})
    with pytest.raises(ModelContractError, match="no feature_schema"):
        check_contract({k: v for k, v in metadata.items() if k != "feature_schema"})


def test_saved_model_loads_with_its_contract_and_predicts_identically(sigmoid_model, tmp_path):
    import mlflow
    import yaml

    model, features = sigmoid_model
    folder = tmp_path / "model"
    mlflow.sklearn.save_model(
        model.pipeline,
        str(folder),
        pip_requirements=pip_requirements(),
        metadata=_metadata(model),
        skops_trusted_types=skops_trusted_types(model.pipeline),
    )
    loaded = ChurnModel.load(str(folder))
    assert loaded.schema == model.schema and loaded.cutoffs == model.cutoffs
    np.testing.assert_array_equal(loaded.predict_proba(features), model.predict_proba(features))
    assert loaded.explain(features.iloc[:20]) == model.explain(features.iloc[:20])

    # A model from another feature version is refused at load, with what to do about it.
    mlmodel = folder / "MLmodel"
    raw = yaml.safe_load(mlmodel.read_text())
    raw["metadata"]["feature_version"] = "999"
    mlmodel.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelContractError, match="retrain"):
        ChurnModel.load(str(folder))


def test_schema_json_round_trip_keeps_the_column_order(sigmoid_model):
    model, _ = sigmoid_model
    again = FeatureSchema.from_json(model.schema.to_json())
    assert again.feature_names() == model.schema.feature_names()


def test_search_picks_the_best_candidate_by_cross_validation():
    customers = _customers(1500, seed=4)
    schema = infer_schema(customers, None)
    frame = build_customer_features(None, "2024-01-01", schema, customers=customers).reset_index()
    frame[CHURNED] = customers[CHURNED].to_numpy()
    candidates = [{"max_iter": 1, "max_leaf_nodes": 2}, {"max_iter": 30, "max_leaf_nodes": 8}]
    config = ChurnConfig(**FAST | {"search": {"enabled": True, "folds": 2, "candidates": candidates}})
    fitted = fit_churn_model(frame, schema, config)
    assert [r["params"] for r in fitted.search] == candidates
    scores = [r["cv_roc_auc"] for r in fitted.search]
    assert scores[1] > scores[0] and fitted.cv_roc_auc == max(scores)
    assert fitted.booster_params["max_iter"] == 30
    assert fitted.pipeline[-1].calibrated_classifiers_[0].estimator.max_iter == 30


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_assembled_calibration_equals_calibrated_classifier_cv(method):
    """The trainer reuses its out-of-fold scores for the calibrator; the result must be what sklearn's own
    `CalibratedClassifierCV(ensemble=False)` fit gives on the same folds."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline

    from training.churn_fit import _out_of_fold, calibrated_pipeline, cv_folds, make_booster

    customers = _customers(1200, seed=6)
    schema = infer_schema(customers, None)
    frame = build_customer_features(None, "2024-01-01", schema, customers=customers).reset_index()
    X = prepare_features(frame, schema)
    y = customers[CHURNED].to_numpy(dtype=np.int64)
    params = ChurnConfig(**FAST).booster
    numeric = list(schema.profile_numeric)
    folds = cv_folds(frame[CUSTOMER_ID], y, 3, seed=0)
    oof = _out_of_fold(schema, params, 0, numeric, X, y, folds)
    ours = calibrated_pipeline(schema, params, 0, numeric, X, y, oof, method, len(folds))
    reference = make_booster(schema, params, 0, numeric)
    sklearn_way = Pipeline(
        [
            ("encode", reference.named_steps["encode"]),
            (
                "classifier",
                CalibratedClassifierCV(
                    reference.named_steps["classifier"], method=method, cv=folds, ensemble=False
                ),
            ),
        ]
    ).fit(X, y)
    np.testing.assert_array_equal(ours.predict_proba(X), sklearn_way.predict_proba(X))


def test_chunking_does_not_change_a_bit(sigmoid_model, monkeypatch):
    import models.treeshap as treeshap

    model, features = sigmoid_model
    whole = model.contributions(features)
    monkeypatch.setattr(treeshap, "_CHUNK_ELEMENTS", 5_000)  # a few rows per chunk
    chunked = model.contributions(features)
    np.testing.assert_array_equal(chunked.to_numpy(), whole.to_numpy())
    np.testing.assert_array_equal(
        model.predict_proba(features),
        model.pipeline.predict_proba(prepare_features(features, model.schema))[:, 1],
    )
