"""The churn model: exact reasons, risk bands, contract checks, batch-size independence, the search.

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
from sklearn.metrics import roc_auc_score

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
from training.churn import model_metadata, pip_requirements, skops_trusted_types
from training.churn_calibration import keep_the_order
from training.churn_config import LIGHTGBM_DEFAULTS, ChurnConfig
from training.churn_fit import choose_churn_model, fit_calibrated

FAST = {"booster": {"learning_rate": 0.15, "min_child_samples": 20}, "search": {"enabled": False}}


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


# --- LightGBM's TreeSHAP against brute force --------------------------------------------------------------


def _count(node: dict) -> float:
    return float(node.get("internal_count", node.get("leaf_count")))


def _goes_left(node: dict, value: float) -> bool:
    if node["decision_type"] == "==":
        return int(value) in {int(c) for c in str(node["threshold"]).split("||")}
    return value <= node["threshold"]


def _path_value(node: dict, x: np.ndarray, known: set[int]) -> float:
    """E[tree(x) | the features in `known`], path-dependent (children weighted by training counts), read
    from LightGBM's public `dump_model()`."""
    if "leaf_value" in node:
        return float(node["leaf_value"])
    left, right = node["left_child"], node["right_child"]
    if node["split_feature"] in known:
        return _path_value(left if _goes_left(node, x[node["split_feature"]]) else right, x, known)
    return (_count(left) * _path_value(left, x, known) + _count(right) * _path_value(right, x, known)) / (
        _count(left) + _count(right)
    )


def _brute_force_shap(trees: list[dict], x: np.ndarray) -> np.ndarray:
    n = len(x)

    def value(known: set[int]) -> float:
        return sum(_path_value(t["tree_structure"], x, known) for t in trees)

    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                phi[i] += weight * (value({*subset, i}) - value(set(subset)))
    return phi


def test_lightgbm_contributions_are_exact_shapley_values():
    """The reasons' raw numbers are LightGBM's `pred_contrib`: checked against Shapley values computed by
    enumerating every feature subset of a small model (numeric and categorical splits)."""
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    X = np.column_stack([rng.integers(0, 5, 600), rng.normal(size=(600, 3))]).astype(float)
    y = ((X[:, 0] == 2) + X[:, 1] - 0.5 * X[:, 2] + rng.normal(size=600) > 0.5).astype(int)
    trees = lgb.LGBMClassifier(n_estimators=8, num_leaves=6, min_child_samples=10, verbose=-1)
    trees.fit(X, y, categorical_feature=[0])
    dump = trees.booster_.dump_model()["tree_info"]
    assert any('"=="' in str(t) or "'=='" in str(t) for t in dump)  # a categorical split is exercised
    contrib = trees.booster_.predict(X[:12], pred_contrib=True)
    raw = trees.booster_.predict(X[:12], raw_score=True)
    for row in range(12):
        np.testing.assert_allclose(contrib[row, :-1], _brute_force_shap(dump, X[row]), atol=1e-9)
    np.testing.assert_allclose(contrib.sum(axis=1), raw, atol=1e-12)


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
    choice = choose_churn_model(frame, schema, config)
    return ChurnModel(
        fit_calibrated(frame, schema, choice, config), schema, config.risk_bands.cutoffs()
    ), features


# Both fixtures blend the logistic regression and the trees half and half, so every test below exercises both
# parts of the model's score and reasons.
HALF = {"linear_weights": (0.5,)}


@pytest.fixture(scope="module")
def sigmoid_model() -> tuple[ChurnModel, pd.DataFrame]:
    return _fit(_customers(3000, seed=1), calibration={"method": "sigmoid"}, blend=HALF)


@pytest.fixture(scope="module")
def isotonic_model() -> tuple[ChurnModel, pd.DataFrame]:
    return _fit(_customers(3000, seed=1), calibration={"method": "isotonic"}, blend=HALF)


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
    """ChurnModel scores without sklearn's input checks; the logged pipeline must agree bit for bit."""
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
            # The service's path: the same row as arrays, no frame.
            rows = model.score_rows(features.iloc[[i]], top_k=5)
            assert rows.churn_risk[0] == many["churn_risk"].iloc[i]
            assert (
                rows.risk_band[0] == many["risk_band"].iloc[i] and rows.reasons[0] == many["reasons"].iloc[i]
            )
            assert rows.base_value[0] == many["base_value"].iloc[i]
            assert rows.other_contribution[0] == many["other_contribution"].iloc[i]
        assert (
            many["risk_band"].dtype == "str" and model.score_columns(features)[0]["risk_band"].dtype == "str"
        )


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
        # Exactly: what the listed reasons leave over is computed from their sum in the order they are listed.
        np.testing.assert_array_equal(
            scored["other_contribution"].to_numpy(), (logit(p) - model.base_logit) - listed
        )
        if top_k == 0:
            assert (scored["reasons"].map(len) == 0).all()
        else:
            # The rest is what the model says the unlisted features contribute.
            all_contributions = model.contributions(features.iloc[:300]).to_numpy()
            np.testing.assert_allclose(
                listed + scored["other_contribution"].to_numpy(), all_contributions.sum(axis=1), atol=1e-6
            )


@pytest.mark.parametrize("top_k", [0, 1, 5, 1000])
def test_reasons_as_columns_give_the_batch_output_of_reasons_as_dicts(sigmoid_model, isotonic_model, top_k):
    """`score_columns` (the batch job's path) writes the very reasons column `score`'s dicts write: unseen,
    missing and blank categories, NaN and huge numbers, ineligible rows between, more reasons asked than there
    are features, and none."""
    import datetime as dt
    from types import SimpleNamespace

    from batch.output import result_table

    plan = SimpleNamespace(sentiment=None, as_of=dt.date(2024, 11, 1), model_version="3", aspect_model=None)
    for model, features in (sigmoid_model, isotonic_model):
        odd = features.iloc[:40].copy()
        odd.iloc[:4, odd.columns.get_loc("plan")] = ["platinum", None, "basic", "  "]
        odd.iloc[:4, odd.columns.get_loc("monthly_charges")] = [np.nan, 1e300, -5.0, 0.1 + 0.2]
        eligible = np.arange(len(odd) * 3 // 2) % 3 != 1  # 40 of 60 customers
        ids = pd.Index([f"c{i}" for i in range(len(eligible))], name="customer_id")
        odd.index = ids[eligible]
        why_not = np.where(eligible, None, "not a customer").astype(object)
        dicts = model.score(odd, top_k=top_k)
        frame, columns = model.score_columns(odd, top_k=top_k)
        pd.testing.assert_frame_equal(frame, dicts.drop(columns="reasons"))
        expected = result_table(ids, dicts, plan, eligible, why_not)
        got = result_table(ids, frame, plan, eligible, why_not, reason_columns=columns)
        assert got.schema == expected.schema
        assert got.column("reasons").to_pylist() == expected.column("reasons").to_pylist()
        assert got.equals(expected)
        assert columns.feature.shape == (len(odd), min(top_k, len(model.columns)))


def test_no_rows_score_to_an_empty_answer(sigmoid_model):
    """A bucket or request with no customer to score gets an empty frame (LightGBM alone fails on 0 rows)."""
    model, features = sigmoid_model
    scored = model.score(features.iloc[:0], top_k=5)
    assert len(scored) == 0 and list(scored.columns) == list(model.score(features.iloc[:1]).columns)
    assert model.contributions(features.iloc[:0]).shape == (0, len(model.columns))


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
    class _Choice:  # the part of ChurnChoice that model_metadata reads
        calibration = model.calibration

    return model_metadata(model.schema, model.cutoffs, _Choice, model.pipeline)


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


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, FeatureSchema]:
    customers = _customers(n, seed=seed)
    schema = infer_schema(customers, None)
    frame = build_customer_features(None, "2024-01-01", schema, customers=customers).reset_index()
    frame[CHURNED] = customers[CHURNED].to_numpy()
    return frame, schema


def test_search_picks_the_best_candidate_by_cross_validation():
    frame, schema = _frame(1500, seed=4)
    candidates = [{"num_leaves": 2, "max_rounds": 1}, {"num_leaves": 8, "max_rounds": 200}]
    search = {"enabled": True, "folds": 2, "candidates": candidates, "max_trials": 4, "budget_s": 600}
    config = ChurnConfig(**FAST | {"search": search, "blend": HALF})
    choice = choose_churn_model(frame, schema, config)
    # The configured booster first, then LightGBM's defaults, then the listed candidates.
    assert [t["params"] for t in choice.trials] == [{}, LIGHTGBM_DEFAULTS, *candidates]
    scores = [t["cv_roc_auc"] for t in choice.trials]
    assert scores[2] < max(scores)  # the one-leaf-pair stump is no match
    assert choice.params.num_leaves != 2
    # The choice is scored again on fresh folds; its trees' number comes from there.
    assert choice.cv_roc_auc in choice.confirmed.values() and "fresh folds" in choice.rule
    final = fit_calibrated(frame, schema, choice, config)
    assert final[-1].calibrated_classifiers_[0].estimator.trees_.booster_.current_iteration() == choice.rounds


def test_search_is_deterministic_for_a_seed():
    frame, schema = _frame(1200, seed=5)
    config = ChurnConfig(**FAST | {"search": {"enabled": True, "max_trials": 5, "budget_s": 600}})
    first, second = (choose_churn_model(frame, schema, config) for _ in range(2))
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]
    assert [t["cv_roc_auc"] for t in first.trials] == [t["cv_roc_auc"] for t in second.trials]
    X = prepare_features(frame, schema)
    np.testing.assert_array_equal(
        fit_calibrated(frame, schema, first, config).predict_proba(X),
        fit_calibrated(frame, schema, second, config).predict_proba(X),
    )


def test_search_respects_its_budget():
    frame, schema = _frame(3000, seed=7)
    budget = 3.0
    config = ChurnConfig(**FAST | {"search": {"enabled": True, "max_trials": 1000, "budget_s": budget}})
    choice = choose_churn_model(frame, schema, config)
    assert 2 <= len(choice.trials) < 1000  # stopped by time, not by the trial cap
    # A hard limit: a trial still running at the deadline stops there (give it a second for the last
    # trial's out-of-fold scores and a busy machine).
    assert choice.search_seconds <= budget + 1.0


def test_the_deadline_cuts_a_long_trial_short():
    frame, schema = _frame(3000, seed=7)
    slow = {"learning_rate": 0.001, "max_rounds": 20_000, "early_stopping_rounds": 20_000}
    config = ChurnConfig(**FAST | {"booster": slow, "search": {"enabled": True, "budget_s": 1.5}})
    choice = choose_churn_model(frame, schema, config)
    (trial,) = choice.trials
    assert trial["cut_short"] and 1 <= trial["rounds"] < 20_000
    assert choice.search_seconds <= 1.5 + 1.0


def _without_signal(n: int, seed: int) -> tuple[pd.DataFrame, FeatureSchema]:
    """`_frame` with its labels shuffled: no feature says anything about churn."""
    frame, schema = _frame(n, seed=seed)
    frame[CHURNED] = np.random.default_rng(seed).permutation(frame[CHURNED].to_numpy())
    return frame, schema


def test_the_search_winner_is_scored_again_on_fresh_folds():
    """On labels without signal the best of 30 trials looks good on the folds that chose it (the winner's curse).
    Those scores must not choose the blend weight or the calibration: the choice is cross-validated again on
    fresh folds, and the blend is weighed there (its trees-only ROC AUC is the fresh one)."""
    frame, schema = _without_signal(400, seed=6)
    config = ChurnConfig(**FAST | {"search": {"enabled": True, "max_trials": 30, "budget_s": 600}})
    choice = choose_churn_model(frame, schema, config)
    best = max(t["cv_roc_auc"] for t in choice.trials)
    assert len(choice.trials) == 30 and best > 0.55
    assert "fresh folds" in choice.rule
    assert choice.cv_roc_auc in choice.confirmed.values() and choice.cv_roc_auc < best - 0.03
    assert choice.blend_roc_auc[0.0] == choice.cv_roc_auc


def test_the_confirmation_drops_a_choice_the_fresh_folds_do_not_bear_out():
    """A candidate that loses to the configured booster on the fresh folds is dropped for it; a confirmation
    the deadline cut short leaves the search's own scores standing (and says so)."""
    from training.churn_fit import CrossValidated, _confirm

    configured = ChurnConfig().booster
    chosen = configured.model_copy(update={"num_leaves": 31})
    searched = CrossValidated(0.70, 0.01, 40, np.zeros(4))
    fresh = {
        id(chosen): CrossValidated(0.65, 0.01, 30, np.ones(4)),
        id(configured): CrossValidated(0.66, 0.01, 90, np.ones(4)),
    }
    params, result, rule, scores = _confirm(configured, chosen, searched, "best", lambda p: fresh[id(p)])
    assert params is configured and result is fresh[id(configured)] and result.rounds == 90
    assert scores == {"chosen": 0.65, "configured": 0.66} and "did not beat it on fresh folds" in rule
    cut = CrossValidated(0.55, 0.01, 2, np.ones(4), cut_short=True)
    params, result, rule, scores = _confirm(configured, chosen, searched, "best", lambda p: cut)
    assert params is chosen and result is searched and scores == {} and "not confirmed" in rule


def test_a_validation_roc_auc_within_chance_is_a_warning():
    """The trainer warns when the held-out ROC AUC's 95% interval reaches 0.5 (RavenStack's one-table view:
    100 validation accounts, 22 churned), and not for a clear signal on the same rows or a strong one on few."""
    from training.churn import no_signal_warning

    y = np.array([1] * 22 + [0] * 78)
    warning = no_signal_warning(0.58, y)
    assert warning and "0.5800" in warning and "no detectable churn signal" in warning
    assert no_signal_warning(0.75, y) is None
    assert no_signal_warning(0.40, y)  # below chance is no signal either
    assert no_signal_warning(0.58, np.array([1] * 2000 + [0] * 8000)) is None  # 0.58 on 10,000 rows is real


def test_calibration_never_reverses_the_model():
    """Platt scaling has no sign constraint: on these rows without signal scikit-learn's sigmoid calibrator
    learns a falling slope from the out-of-fold scores and would rank the final model's customers upside down.
    Ours keeps the model's own log-odds then: probabilities rise with the model's score."""
    from scipy.special import expit
    from sklearn.calibration import CalibratedClassifierCV

    from training.churn_blend import make_blend
    from training.churn_fit import categorical_positions, cv_folds, make_trees

    frame, schema = _without_signal(400, seed=6)
    config = ChurnConfig(**FAST | {"calibration": {"method": "sigmoid"}, "blend": {"linear_weights": (1.0,)}})
    choice = choose_churn_model(frame, schema, config)
    ours = fit_calibrated(frame, schema, choice, config)
    X = prepare_features(frame, schema)
    y = frame[CHURNED].to_numpy(dtype=np.int64)
    encoded = ours[0].transform(X)
    categorical = categorical_positions(schema)
    blend = make_blend(config, categorical, make_trees(choice.params, config.seed, choice.rounds), 1.0)
    folds = cv_folds(frame[CUSTOMER_ID], y, config.calibration.folds, config.seed)
    reference = CalibratedClassifierCV(blend, method="sigmoid", cv=folds, ensemble=False).fit(
        encoded, y, categorical_feature=categorical
    )
    assert reference.calibrated_classifiers_[0].calibrators[0].a_ > 0  # scikit-learn's falls
    score = ours[-1].calibrated_classifiers_[0].estimator.decision_function(encoded)
    p = ours.predict_proba(X)[:, 1]
    assert np.all(np.diff(p[np.argsort(score, kind="stable")]) >= 0)
    np.testing.assert_allclose(p, expit(score), rtol=1e-12)


def test_the_configured_booster_stays_unless_clearly_beaten():
    """One-standard-error rule: a candidate must beat the configured booster by more than the standard error
    of its ROC AUC; against a crippled configured booster, the best candidate wins on real folds."""
    from training.churn_fit import CrossValidated, _one_standard_error, auc_standard_error

    def trial(auc: float, leaves: int) -> tuple:
        params = ChurnConfig().booster.model_copy(update={"num_leaves": leaves})
        return params, CrossValidated(auc, auc_standard_error(auc, 100, 500), 10, np.zeros(1))

    error = auc_standard_error(0.70, 100, 500)
    assert 0.02 < error < 0.04  # 100 churners: AUCs closer than ~0.03 are not told apart
    close = [trial(0.70, 4), trial(0.70 + error * 0.9, 31), trial(0.69, 8)]
    params, _, rule = _one_standard_error(close)
    assert params.num_leaves == 4 and "within one standard error" in rule
    clear = [trial(0.70, 4), trial(0.70 + error * 1.5, 31)]
    params, _, rule = _one_standard_error(clear)
    assert params.num_leaves == 31 and rule.startswith("the best trial")

    crippled = ChurnConfig(
        **FAST | {"booster": {"num_leaves": 2, "max_rounds": 1}, "search": {"enabled": True, "max_trials": 3}}
    )
    strong = choose_churn_model(*_frame(1500, seed=4), crippled)
    assert strong.cv_roc_auc > strong.trials[0]["cv_roc_auc"] and strong.rule.startswith("the best trial")


def test_final_model_is_fitted_on_every_row():
    """`fit_calibrated` refits the trees on all rows it is given: the trees saw each row (LightGBM counts the
    rows a tree's root holds), and the calibrator learnt from out-of-fold scores of all of them."""
    frame, schema = _frame(1000, seed=8)
    config = ChurnConfig(**FAST | {"blend": HALF})
    choice = choose_churn_model(frame.iloc[:600], schema, config)
    final = fit_calibrated(frame, schema, choice, config)
    trees = final[-1].calibrated_classifiers_[0].estimator.trees_.booster_
    root = trees.dump_model()["tree_info"][0]["tree_structure"]
    assert root["internal_count"] == len(frame)
    part = fit_calibrated(frame.iloc[:600], schema, choice, config)
    root_part = part[-1].calibrated_classifiers_[0].estimator.trees_.booster_.dump_model()["tree_info"][0]
    assert root_part["tree_structure"]["internal_count"] == 600


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_fit_is_calibrated_classifier_cv_on_grouped_folds(method):
    """The calibrated pipeline is sklearn's own `CalibratedClassifierCV(ensemble=False)` on the grouped folds:
    a rebuilt one gives the same probabilities."""
    from sklearn.calibration import CalibratedClassifierCV

    from training.churn_blend import make_blend
    from training.churn_fit import categorical_positions, cv_folds, make_trees

    frame, schema = _frame(1200, seed=6)
    config = ChurnConfig(**FAST | {"calibration": {"method": method}, "blend": HALF})
    choice = choose_churn_model(frame, schema, config)
    ours = fit_calibrated(frame, schema, choice, config)
    X = prepare_features(frame, schema)
    y = frame[CHURNED].to_numpy(dtype=np.int64)
    encoded = ours[0].transform(X)
    folds = cv_folds(frame[CUSTOMER_ID], y, config.calibration.folds, config.seed)
    categorical = categorical_positions(schema)
    blend = make_blend(config, categorical, make_trees(choice.params, config.seed, choice.rounds), 0.5)
    reference = CalibratedClassifierCV(blend, method=method, cv=folds, ensemble=False).fit(
        encoded, y, categorical_feature=categorical
    )
    keep_the_order(
        reference
    )  # the one change made to sklearn's fit (isotonic: centred; sigmoid: never falling)
    np.testing.assert_array_equal(ours.predict_proba(X), reference.predict_proba(encoded))
    assert ours[-1].calibrated_classifiers_[0].method == method


def test_isotonic_calibration_keeps_the_models_order(isotonic_model):
    """Isotonic regression pools runs of scores into flat steps, tying customers the model ranks apart (on an
    e-commerce fold it cost 0.002 ROC AUC against a sigmoid on the same scores). The centred calibrator rises
    strictly between its first and last step: every pair the model orders is ordered the same way."""
    model, features = isotonic_model
    calibrated = model.pipeline[-1].calibrated_classifiers_[0]
    raw = calibrated.estimator.decision_function(
        model.pipeline[0].transform(prepare_features(features, model.schema))
    )
    proba = model.predict_proba(features)
    x = calibrated.calibrators[0].X_thresholds_
    inside = (raw > x.min()) & (raw < x.max())
    assert inside.mean() > 0.9
    order = np.argsort(raw[inside], kind="stable")
    rises = np.diff(raw[inside][order]) > 0
    assert rises.mean() > 0.9
    assert (np.diff(proba[inside][order])[rises] > 0).all()  # every step up in the score is a step up in risk
    y = _customers(3000, seed=1)[CHURNED].to_numpy()
    assert roc_auc_score(y[inside], proba[inside]) == roc_auc_score(y[inside], raw[inside])


def test_a_model_from_before_lightgbm_is_refused_with_what_to_do(sigmoid_model):
    """A champion registered by an earlier churnsense (HistGradientBoosting trees) must not crash the batch
    job or the service with an AttributeError: it is refused, and the message says to retrain."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    model, features = sigmoid_model
    X = prepare_features(features, model.schema)
    encoded = model.pipeline[0].transform(X)
    y = (encoded[:, -1] > np.nanmedian(encoded[:, -1])).astype(int)
    old = CalibratedClassifierCV(HistGradientBoostingClassifier(max_iter=5), cv=2, ensemble=False).fit(
        encoded, y
    )
    with pytest.raises(ModelContractError, match="HistGradientBoostingClassifier.*retrain"):
        ChurnModel(
            Pipeline([("encode", model.pipeline[0]), ("classifier", old)]), model.schema, model.cutoffs
        )


def test_the_baseline_fits_a_categorical_profile_column_with_blanks():
    """A profile table with a blank cell (or a joined table without a row for every customer) gives a missing
    category: the logistic baseline imputes it as its own value instead of failing the training run."""
    from training.churn_fit import fit_baseline

    rng = np.random.default_rng(3)
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: [f"c{i}" for i in range(80)],
            "region": rng.choice(["eu", "us", ""], 80),
            "seats": rng.integers(1, 9, 80),
        }
    )
    schema = infer_schema(customers, None)
    features = build_customer_features(None, "2024-01-01", schema, customers=customers)
    assert features["region"].isna().any()
    train = features.reset_index().assign(**{CHURNED: rng.integers(0, 2, 80)})
    baseline = fit_baseline(train, schema, ChurnConfig())
    assert baseline.predict_proba(train[schema.feature_names()]).shape == (80, 2)
