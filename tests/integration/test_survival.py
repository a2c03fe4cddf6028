"""Time to churn: trained from the churn snapshots, logged, plotted and registered; loaded back, its answers
are survival curves that agree with themselves and with the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnsense.errors import UserError
from training.churn_config import parse_config

pytestmark = pytest.mark.integration
NAME = "test-survival"
# Small and quick: few trees, a larger validation share so the simulated validation set has churners.
SMALL = {
    "split": {"validation_fraction": 0.4},
    "survival": {
        "candidates": ["cox", "rsf", "gbsa", "cox+rsf"],
        "rsf_trees": 10,
        "gbsa_trees": 10,
        "registered_model_name": NAME,
        "experiment_name": NAME,
    },
}


@pytest.fixture(scope="module")
def demo_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.simulate import write_demo_data

    folder = tmp_path_factory.mktemp("survival_demo")
    write_demo_data(folder, n_customers=1500, seed=4)
    return folder / "spec.yaml"


@pytest.fixture(scope="module")
def trained(demo_spec):
    from training.survival import train_survival

    return train_survival(demo_spec, parse_config(SMALL))


def test_every_candidate_is_judged_and_the_best_concordance_is_registered(trained):
    from mlflow import MlflowClient

    assert set(trained.candidates) == {"cox", "rsf", "gbsa", "cox+rsf"}
    best = max(trained.candidates.values(), key=lambda s: s["concordance"])
    assert trained.metrics["concordance"] == best["concordance"]
    assert trained.metrics["concordance"] > 0.6  # the simulator's churners are foreseeable
    assert trained.metrics["integrated_brier"] < trained.metrics["km_integrated_brier"]
    run = MlflowClient().get_run(trained.run_id)
    assert run.data.params["chosen"] == trained.chosen
    artifacts = [f.path for f in MlflowClient().list_artifacts(trained.run_id, "plots")]
    assert artifacts == ["plots/survival_by_band.png"]
    assert trained.model_uri == f"models:/{NAME}/{trained.version}"


def test_the_registered_model_answers_with_consistent_curves(trained, demo_spec):
    from features.pipeline import feature_table, load_data
    from features.spec import load_spec
    from models.survival import SurvivalModel

    model = SurvivalModel.load(trained.model_uri)
    spec = load_spec(demo_spec)
    features = feature_table(load_data(spec, with_text=False), model.schema, spec.labels.as_of_dates()[-1])
    summary = model.summary(features)
    assert list(summary.columns) == [
        "survival_30d",
        "survival_60d",
        "survival_90d",
        "expected_days_to_churn",
        "expected_days_more_than",
    ]
    s30, s60, s90 = (summary[c].to_numpy() for c in ("survival_30d", "survival_60d", "survival_90d"))
    assert ((s30 >= s60) & (s60 >= s90) & (s90 >= 0) & (s30 <= 1)).all()
    _assert_medians_cross_one_half(model, features, summary)
    # Riskier customers (by the model's own risk) keep fewer of their customers at 90 days, on the whole.
    risk = model.risk(features)
    assert np.corrcoef(risk, s90)[0, 1] < -0.5
    # One customer alone is scored as in the whole table.
    alone = model.summary(features.iloc[[3]])
    pd.testing.assert_frame_equal(alone, summary.iloc[[3]], check_exact=True)


def _assert_medians_cross_one_half(model, features, summary) -> int:
    """The median is where the curve crosses 0.5: at or below it that day, above it the day before (times are
    whole days); missing only when the curve stays above 0.5 for the whole follow-up. Returns how many cross."""
    median = summary["expected_days_to_churn"].to_numpy()
    crossed = np.flatnonzero(~np.isnan(median))
    for i in crossed[:50]:
        before, at = model.curves(features.iloc[[i]], [median[i] - 1, median[i]])[0]
        assert before > 0.5 >= at
    never = np.flatnonzero(np.isnan(median))[:50]
    if never.size:
        assert (model.curves(features.iloc[never], [model.followup_days]) > 0.5).all()
    return len(crossed)


def test_one_table_data_takes_durations_from_its_tenure_column(tmp_path):
    from training.survival import train_survival

    rng = np.random.default_rng(1)
    n = 600
    plan = rng.choice(["monthly", "yearly"], n)
    hazard = np.where(plan == "monthly", 1 / 12, 1 / 40)
    tenure = np.ceil(rng.exponential(1 / hazard)).clip(1, 72)
    churned = (tenure < 72) & (rng.random(n) < 0.8)
    pd.DataFrame(
        {
            "id": [f"k{i}" for i in range(n)],
            "plan": plan,
            "tenure": tenure,
            "Churn": np.where(churned, "Yes", "No"),
        }
    ).to_csv(tmp_path / "customers.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "customers: {path: customers.csv, id: id, label: Churn, positive: 'Yes', duration: tenure, "
        "duration_unit: months}\n"
    )
    own = {"registered_model_name": f"{NAME}-one-table", "experiment_name": f"{NAME}-one-table"}
    result = train_survival(
        spec,
        parse_config(SMALL | {"split": {"validation_fraction": 0.3}, "survival": SMALL["survival"] | own}),
    )
    from models.survival import SurvivalModel

    model = SurvivalModel.load(result.model_uri)
    assert "tenure" not in model.schema.feature_names()  # its target is not its feature
    assert result.metrics["concordance"] > 0.6  # the plan decides the hazard
    from features.pipeline import feature_table, load_data
    from features.spec import load_spec

    assert model.tenure == ("tenure", "months")  # answers are given the tenure already stayed
    import dataclasses

    # The churn model's features: the survival model's and the tenure (a churn feature, not a survival one).
    churn_schema = dataclasses.replace(
        model.schema, profile_numeric=(*model.schema.profile_numeric, "tenure")
    )
    features = feature_table(load_data(load_spec(spec), with_text=False), churn_schema, "2024-01-01")
    from_signup = features.assign(tenure=0.0)
    assert (
        _assert_medians_cross_one_half(model, from_signup, model.summary(from_signup)) > n // 4
    )  # monthly plans: a median in sight
    summary = model.summary(features)
    # From the day before the step tenure t was counted at (a customer at t may still churn at t).
    stayed = np.maximum(np.ceil(features["tenure"].to_numpy() * 365.25 / 12), 1) - 1
    for i in range(0, n, 50):
        if stayed[i] >= model.followup_days:
            assert summary.iloc[i].isna().all()
            continue
        days = stayed[i] + np.array([0, 30, 60, 90])
        at = model.curves(features.iloc[[i]], days)[0]
        want = np.where(days[1:] <= model.followup_days, at[1:] / at[0], np.nan)
        np.testing.assert_allclose(summary.iloc[i, :3].to_numpy(dtype=float), want, rtol=1e-12)
    without = tmp_path / "no_duration.yaml"
    without.write_text("customers: {path: customers.csv, id: id, label: Churn, positive: 'Yes'}\n")
    with pytest.raises(UserError, match="customers.duration"):
        train_survival(without, parse_config(SMALL))


def test_promotion_keeps_the_better_concordance_and_force_overrides(trained, demo_spec):
    """The first version becomes champion; a crippled challenger (one forest leaf: the same curve for everyone,
    concordance 0.5) is refused on the challenger's own validation rows; --force promotes it anyway."""
    from mlflow import MlflowClient

    from training.survival import train_survival
    from training.survival_promotion import promote_survival

    config = parse_config(SMALL)
    first = promote_survival(config=config)
    assert first.promoted and str(first.challenger) == trained.version
    crippled = parse_config(
        SMALL
        | {"survival": SMALL["survival"] | {"candidates": ["rsf"], "rsf_trees": 1, "rsf_min_leaf": 100_000}}
    )
    worse = train_survival(demo_spec, crippled)
    assert worse.metrics["concordance"] == 0.5
    refused = promote_survival(config=config)
    assert not refused.promoted and "concordance" in refused.reason
    assert refused.champion_metrics["concordance"] > refused.challenger_metrics["concordance"]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == trained.version
    forced = promote_survival(force=True, config=config)
    assert forced.promoted and forced.forced
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == worse.version


def test_promotion_judges_held_out_models_so_an_overfitted_champion_does_not_win(demo_spec):
    """Each version is judged by the model it fitted on its training rows only: the registered one has seen the
    validation rows, where a forest of one-row leaves looks nearly perfect (0.97 concordance, seen in review)."""
    from training.survival import train_survival
    from training.survival_promotion import promote_survival

    own = {"registered_model_name": f"{NAME}-heldout", "experiment_name": f"{NAME}-heldout"}
    forest = parse_config(
        SMALL | {"survival": own | {"candidates": ["rsf"], "rsf_trees": 3, "rsf_min_leaf": 1, "threads": 1}}
    )
    cox = parse_config(SMALL | {"survival": own | {"candidates": ["cox"]}})
    overfitted = train_survival(demo_spec, forest)
    assert promote_survival(config=forest).promoted  # the first version
    better = train_survival(demo_spec, cox)
    assert better.metrics["concordance"] > overfitted.metrics["concordance"]  # held out, at training
    decision = promote_survival(config=cox)
    assert decision.champion_metrics["concordance"] == pytest.approx(overfitted.metrics["concordance"])
    assert decision.challenger_metrics["concordance"] == pytest.approx(better.metrics["concordance"])
    assert decision.promoted, decision.render()


def test_a_copied_model_folder_loads_without_the_tracking_store(trained, tmp_path, monkeypatch):
    """A Bento carries the model folder, not the MLflow store it came from: loading the folder must not ask a
    tracking server about the logged model (the served Bento failed to start where no store was reachable)."""
    import shutil

    import mlflow

    from models.survival import SurvivalModel

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=trained.model_uri))
    copy = shutil.copytree(folder, tmp_path / "mlflow_model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        model = SurvivalModel.load(str(copy))
    finally:
        mlflow.set_tracking_uri(None)
    assert model.summary is not None
