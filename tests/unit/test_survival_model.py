"""The survival model's answers: a customer's curve is the same alone, in any batch, in any order, for every
kind of model (the Cox model's batch-invariant predictor, forests predicting tree by tree)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.engine import FeatureSchema
from features.survival import DURATION, EVENT
from training.churn_config import parse_config
from training.survival import fit_survival

SCHEMA = FeatureSchema(profile_numeric=("usage", "price"), profile_categorical=("plan",), use_events=False)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 500
    plan = rng.choice(["monthly", "yearly", None], n)
    usage = rng.gamma(2.0, 10.0, n)
    usage[rng.random(n) < 0.1] = np.nan  # missing values take the imputer's path
    price = rng.normal(50, 10, n)
    hazard = np.exp(-3.5 + 0.8 * (plan == "monthly") - 0.02 * np.nan_to_num(usage, nan=20))
    time = np.ceil(rng.exponential(1 / hazard))
    censor = rng.integers(20, 200, n)
    return pd.DataFrame(
        {
            "usage": usage,
            "price": price,
            "plan": pd.array(plan, dtype="str"),
            DURATION: np.minimum(time, censor).astype("float64"),
            EVENT: (time <= censor).astype("int8"),
        },
        index=pd.Index([f"c{i}" for i in range(n)], name="customer_id"),
    )


@pytest.mark.parametrize("kind", ["cox", "gbsa", "rsf", "cox+gbsa", "cox+gbsa+rsf"])
def test_a_customer_is_answered_the_same_alone_or_in_any_batch(frame, kind):
    config = parse_config({"survival": {"gbsa_trees": 20, "rsf_trees": 20, "threads": 2}})
    model = fit_survival(frame, SCHEMA, kind, config)
    together = model.summary(frame)
    assert together["survival_90d"].std() > 0.01  # the model tells customers apart
    shuffled = model.summary(frame.sample(frac=1.0, random_state=1)).loc[frame.index]
    pd.testing.assert_frame_equal(shuffled, together, check_exact=True)
    for i in range(0, len(frame), 37):
        alone = model.summary(frame.iloc[[i]])
        pd.testing.assert_frame_equal(alone, together.iloc[[i]], check_exact=True)
    np.testing.assert_array_equal(model.risk(frame.iloc[:7]), model.risk(frame)[:7])


def test_an_average_is_the_mean_of_its_members_curves_and_ranks_by_area(frame):
    config = parse_config({"survival": {"gbsa_trees": 20}})
    cox = fit_survival(frame, SCHEMA, "cox", config)
    gbsa = fit_survival(frame, SCHEMA, "gbsa", config)
    both = fit_survival(frame, SCHEMA, "cox+gbsa", config, {"cox": cox, "gbsa": gbsa})
    days = [1, 5, 17.5, 40, 90, 500]
    np.testing.assert_allclose(
        both.curves(frame, days), (cox.curves(frame, days) + gbsa.curves(frame, days)) / 2, rtol=0, atol=1e-12
    )
    # The risk is minus the area under the averaged curve: a customer whose curve is everywhere lower is riskier.
    grid = both.pipeline[-1].unique_times_
    curves = both.curves(frame, grid)
    lower = np.flatnonzero((curves <= curves[0]).all(axis=1) & (curves < curves[0]).any(axis=1))
    assert lower.size and (both.risk(frame)[lower] > both.risk(frame)[0]).all()


def test_no_customers_get_empty_answers(frame):
    model = fit_survival(frame, SCHEMA, "cox", parse_config({}))
    empty = model.summary(frame.iloc[:0])
    assert len(empty) == 0 and list(empty.columns) == list(model.summary(frame.iloc[:1]).columns)
    assert model.risk(frame.iloc[:0]).shape == (0,) and model.curves(frame.iloc[:0], [30, 60]).shape == (0, 2)


def test_answers_are_read_off_the_curve_and_say_how_long_it_stays_above_one_half(frame):
    from models.survival import ANSWER_COLUMNS

    # Followed for 40 days at most: some curves end above one half.
    short = frame.assign(
        **{DURATION: frame[DURATION].clip(upper=40), EVENT: frame[EVENT] * (frame[DURATION] <= 40)}
    )
    model = fit_survival(short, SCHEMA, "gbsa", parse_config({"survival": {"gbsa_trees": 20}}))
    assert model.followup_days == 40
    answers = model.summary(frame)
    assert list(answers.columns) == list(ANSWER_COLUMNS)
    np.testing.assert_array_equal(answers["survival_30d"].to_numpy(), model.curves(frame, [30])[:, 0])
    assert answers[["survival_60d", "survival_90d"]].isna().all().all()  # past the 40 days training followed
    grid = np.arange(1, model.followup_days + 1)
    curves = model.curves(frame, grid)
    crossed = (curves <= 0.5).any(axis=1)
    assert crossed.any() and (~crossed).any(), "customers on both sides of one half"
    first = np.where(crossed, grid[np.argmax(curves <= 0.5, axis=1)], np.nan)
    np.testing.assert_array_equal(answers["expected_days_to_churn"].to_numpy(), first)
    more = answers["expected_days_more_than"].to_numpy()
    assert (np.isnan(more) == crossed).all() and (more[~crossed] == model.followup_days).all()


def test_tenure_answers_are_given_the_time_already_stayed(frame):
    """One-table models answer S(t + d) / S(t) for a customer with tenure t; a tenure that is missing, negative
    or past the follow-up gets no answer rather than the flat end of a curve."""
    model = fit_survival(frame, SCHEMA, "cox", parse_config({}))
    plain = model.summary(frame)
    tenure = np.tile([0.0, 10.0, 2.5, np.nan, -1.0, 1e6, 40.0], len(frame) // 7 + 1)[: len(frame)]
    features = frame.assign(tenure_weeks=tenure)
    model.tenure = ("tenure_weeks", "weeks")
    answers = model.summary(features)
    # The day before the step tenure t was counted at in training (durations are max(ceil(t * 7), 1) days).
    start = np.maximum(np.ceil(tenure * 7), 1) - 1
    checked = 0
    for i in range(70):  # every tenure of the pattern, ten times
        row, t = answers.iloc[i], start[i]
        if not np.isfinite(t) or tenure[i] < 0 or t >= model.followup_days:
            assert row.isna().all(), (i, t)
            continue
        days = t + np.array([0, 30, 60, 90])
        curve = model.curves(frame.iloc[[i]], days)[0]
        want = np.where(days[1:] <= model.followup_days, curve[1:] / curve[0], np.nan)
        np.testing.assert_allclose(row[["survival_30d", "survival_60d", "survival_90d"]], want, rtol=1e-12)
        if t == 0:
            pd.testing.assert_series_equal(row, plain.iloc[i], check_names=False)
        checked += 1
    assert checked == 30  # tenures 0, 10 and 2.5 weeks answered; 40 weeks is past the follow-up, and missing,
    # negative and 1e6 are no tenures
    # A customer who has stayed longer is, under proportional hazards, answered differently: the tenure is used.
    assert not np.array_equal(
        answers["survival_90d"].iloc[1::7].to_numpy(), plain["survival_90d"].iloc[1::7].to_numpy()
    )
    with pytest.raises(Exception, match="tenure_weeks"):
        model.summary(frame)


def test_a_survival_model_only_answers_beside_a_churn_model_with_the_same_features(frame):
    import dataclasses
    from types import SimpleNamespace

    from models.churn import ModelContractError
    from models.lineage import SentimentLineage

    model = fit_survival(frame, SCHEMA, "cox", parse_config({}))

    def churn(schema=SCHEMA, sentiment=None):
        return SimpleNamespace(schema=schema, sentiment_lineage=sentiment, aspect_lineage=None, version="7")

    model.check_fits(churn())
    model.check_fits(
        churn(dataclasses.replace(SCHEMA, profile_numeric=("usage", "price", "age")))
    )  # more is fine
    refusals = {
        "price, which the churn model does not": churn(
            dataclasses.replace(SCHEMA, profile_numeric=("usage",))
        ),
        "event and text features": churn(dataclasses.replace(SCHEMA, use_events=True)),
        "sentiment model is none": churn(
            sentiment=SentimentLineage("models:/s/1", "ab" * 32, True, "s", "1")
        ),
    }
    for message, other in refusals.items():
        with pytest.raises(ModelContractError, match=message):
            model.check_fits(other)
    model.tenure = ("tenure_weeks", "weeks")
    with pytest.raises(ModelContractError, match="current tenure 'tenure_weeks'"):
        model.check_fits(churn())


def test_monthly_tenures_get_the_same_monthly_odds_whatever_the_tenure():
    """Tenures in months become durations on a 30-31 day grid. A customer at tenure t is still at risk of the
    churn recorded at t (it happens during month t): at a constant 3% a month, every tenure must be told about
    0.97 at 30 days, 0.94 at 60, 0.91 at 90, not 1.0 for half of them (the grid read one day off)."""
    from features.survival import UNIT_DAYS

    rng = np.random.default_rng(5)
    n = 6000
    months = rng.geometric(0.03, n).astype("float64")  # the month each customer churns in (1, 2, ...)
    censor = rng.integers(1, 72, n).astype("float64")
    tenure = np.minimum(months, censor)
    frame = pd.DataFrame(
        {
            "price": rng.normal(50, 5, n),
            DURATION: np.maximum(np.ceil(tenure * UNIT_DAYS["months"]), 1.0),
            EVENT: (months <= censor).astype("int8"),
        }
    )
    schema = FeatureSchema(profile_numeric=("price",), use_events=False)
    model = fit_survival(frame, schema, "cox", parse_config({}))
    model.tenure = ("tenure_months", "months")
    asked = pd.DataFrame({"price": 50.0, "tenure_months": np.arange(1.0, 25.0)})
    answers = model.summary(asked)
    for days, months_ahead in ((30, 1), (60, 2), (90, 3)):
        column = answers[f"survival_{days}d"]
        assert column.notna().all()
        np.testing.assert_allclose(column, 0.97**months_ahead, atol=0.02, err_msg=f"{days} days")


def test_answers_past_the_follow_up_are_missing_not_the_flat_end_of_the_curve(frame):
    """A report day beyond the longest follow-up is unknown: missing, never the curve's last value; a model
    without a known follow-up answers nothing rather than everything."""
    model = fit_survival(frame, SCHEMA, "cox", parse_config({}))
    followup = model.followup_days
    model.tenure = ("tenure_days", "days")
    near_end = frame.iloc[:3].assign(tenure_days=[followup - 45, followup - 75, followup - 150])
    answers = model.summary(near_end)
    assert answers["survival_30d"].notna().all()
    assert answers["survival_60d"].isna().tolist() == [True, False, False]
    assert answers["survival_90d"].isna().tolist() == [True, True, False]
    model.followup_days = float("nan")
    assert model.summary(near_end).isna().all().all()


@pytest.mark.parametrize("kind", ["cox", "gbsa", "rsf", "cox+gbsa"])
def test_the_fast_design_gives_scikit_learns_numbers_bit_for_bit(frame, kind):
    """The NumPy design (models.survival_input) against the fitted scikit-learn steps: missing numbers, missing
    and unseen categories, one row and many."""
    config = parse_config({"survival": {"gbsa_trees": 10, "rsf_trees": 5}})
    model = fit_survival(frame, SCHEMA, kind, config)
    assert model.fast_design is not None
    odd = frame.copy()
    odd.loc[odd.index[:40], "plan"] = "lifetime"  # never seen in training
    odd.loc[odd.index[40:80], "price"] = np.nan  # never missing in training
    odd.loc[odd.index[80:90], "usage"] = np.nan
    design = model.fast_design.transform(odd)
    np.testing.assert_array_equal(design, model.pipeline[0].transform(model._input(odd)))
    fast = model.summary(odd)
    slow_model = fit_survival(frame, SCHEMA, kind, config)
    slow_model.fast_design = None
    pd.testing.assert_frame_equal(fast, slow_model.summary(odd), check_exact=True)
    pd.testing.assert_frame_equal(model.summary(odd.iloc[[3]]), fast.iloc[[3]], check_exact=True)
