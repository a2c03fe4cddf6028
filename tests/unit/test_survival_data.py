"""Time to churn for the labelled snapshots: durations agree with the labels, censoring, no leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.columns import AS_OF, CHURN_DATE, CHURNED, CUSTOMER_ID, EVENT_TYPE, TIMESTAMP
from features.survival import (
    DURATION,
    EVENT,
    SurvivalDataError,
    survival_frame,
    survival_snapshots,
    tenure_durations,
)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    from features.pipeline import load_data, schema_for, training_frame
    from features.simulate import write_demo_data
    from features.spec import load_spec

    folder: Path = tmp_path_factory.mktemp("survival")
    write_demo_data(folder, n_customers=400, seed=11)
    spec = load_spec(folder / "spec.yaml")
    data = load_data(spec, with_text=False)
    schema = schema_for(spec, data)
    return spec, data, schema, survival_frame(data, training_frame(data, schema))


def test_durations_agree_with_the_horizon_labels_on_every_row(simulated):
    spec, _, _, frame = simulated
    horizon = spec.labels.horizon_days
    within = (frame[EVENT] == 1) & (frame[DURATION] <= horizon)
    assert (within.astype(int) == frame[CHURNED]).all()
    assert frame[CHURNED].sum() > 10 and (frame[EVENT] == 0).sum() > 10  # both kinds of row are tested
    assert (frame[DURATION] >= 1).all() and (frame[DURATION] == np.floor(frame[DURATION])).all()


def test_customers_still_active_are_censored_at_the_end_of_the_data(simulated):
    _, data, _, frame = simulated
    end = max(data.events[TIMESTAMP].max(), data.customers[CHURN_DATE].max())
    censored = frame[frame[EVENT] == 0]
    expected = np.floor((end - pd.to_datetime(censored[AS_OF])) / pd.Timedelta(days=1)) + 1
    np.testing.assert_array_equal(censored[DURATION].to_numpy(), expected.to_numpy(dtype="float64"))
    # Of the rows of one customer, a later as_of never has a longer time to the same end.
    for _, rows in censored.groupby(CUSTOMER_ID):
        assert rows.sort_values(AS_OF)[DURATION].is_monotonic_decreasing


def test_features_do_not_see_what_the_durations_measure(simulated):
    """No leakage: drop every event at or after the last as_of and the features of that snapshot are unchanged
    (they read the past), while its durations change (they read the future)."""
    from features.pipeline import SpecData, training_frame

    spec, data, schema, frame = simulated
    last = pd.Timestamp(frame[AS_OF].max())
    past = data.events[data.events[TIMESTAMP] < last].reset_index(drop=True)
    customers = data.customers.assign(**{CHURN_DATE: data.customers[CHURN_DATE].where(lambda d: d < last)})
    cut = SpecData(spec, customers, past, data.rejects)
    cut_frame = training_frame(cut, schema)
    mine = frame[frame[AS_OF] == last].set_index(CUSTOMER_ID)
    theirs = cut_frame[cut_frame[AS_OF] == last].set_index(CUSTOMER_ID)
    names = schema.feature_names()
    pd.testing.assert_frame_equal(mine.loc[theirs.index, names], theirs[names])


def test_durations_by_hand():
    as_of = pd.Timestamp("2024-03-01")
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: ["dated", "event", "both", "stays"],
            CHURN_DATE: pd.to_datetime(["2024-03-11", None, "2024-04-01", None]),
        }
    )
    events = pd.DataFrame(
        {
            CUSTOMER_ID: ["dated", "event", "event", "both", "both", "stays", "stays"],
            TIMESTAMP: pd.to_datetime(
                [
                    "2024-02-01 00:00",
                    "2024-02-15 00:00",
                    "2024-03-05 12:00",
                    "2024-02-20 00:00",
                    "2024-03-20 00:00",
                    "2024-02-10 00:00",
                    "2024-05-31 08:00",
                ]
            ),
            EVENT_TYPE: ["login", "login", "cancel", "login", "cancel", "login", "login"],
        }
    )
    labels = pd.DataFrame({CUSTOMER_ID: ["dated", "event", "both", "stays"], AS_OF: as_of})
    got = survival_snapshots(customers, events, labels, churn_event="cancel").set_index(CUSTOMER_ID)
    # Day k is [k - 1, k) after as_of: a churn exactly 10 days on is in day 11, as the horizon label's
    # half-open window [as_of, as_of + H) has it (churned within 10 days: no).
    assert got.loc["dated", [DURATION, EVENT]].tolist() == [11, 1]
    assert got.loc["event", [DURATION, EVENT]].tolist() == [5, 1]  # 4.5 days: day 5
    assert got.loc["both", [DURATION, EVENT]].tolist() == [20, 1]  # the earlier of the two (19 days on)
    assert got.loc["stays", [DURATION, EVENT]].tolist() == [92, 0]  # censored at the newest event (91.3 days)
    # A churn exactly at the horizon: not churned within it, so its duration is past it.
    from features.labels import label_snapshot

    labelled = label_snapshot(customers, events, as_of, horizon_days=10, churn_event="cancel")
    timed = survival_snapshots(customers, events, labelled, churn_event="cancel")
    within = ((timed[EVENT] == 1) & (timed[DURATION] <= 10)).astype(int).to_numpy()
    assert (within == labelled[CHURNED].to_numpy()).all() and labelled[CHURNED].sum() == 1  # "event" only


def test_what_cannot_be_timed_is_refused():
    labels = pd.DataFrame({CUSTOMER_ID: ["a"], AS_OF: pd.Timestamp("2024-03-01")})
    events = pd.DataFrame(
        {CUSTOMER_ID: ["a"], TIMESTAMP: pd.to_datetime(["2024-02-01"]), EVENT_TYPE: ["login"]}
    )
    with pytest.raises(SurvivalDataError, match="inactivity"):
        survival_snapshots(None, events, labels, None, inactivity=True)
    with pytest.raises(SurvivalDataError, match="churn_date or events.churn_event"):
        survival_snapshots(None, events, labels, None)


def test_tenure_durations_convert_units_and_name_bad_values():
    customers = pd.DataFrame({CUSTOMER_ID: ["a", "b"], "tenure": ["2", "0"], CHURNED: [1, 0]})
    got = tenure_durations(customers, "tenure", "months")
    assert got[DURATION].tolist() == [61.0, 1.0] and got[EVENT].tolist() == [1, 0]
    with pytest.raises(SurvivalDataError, match="'tenure'.*first: b"):
        tenure_durations(customers.assign(tenure=["3", "-1"]), "tenure", "days")
    with pytest.raises(SurvivalDataError, match="'tenure'.*first: a"):
        tenure_durations(customers.assign(tenure=["inf", "2"]), "tenure", "days")
    with pytest.raises(SurvivalDataError, match="not in the customers table"):
        tenure_durations(customers, "months", "days")


def test_training_rows_are_censored_where_validation_begins(simulated):
    """No training outcome reaches into the period the model is judged on: censored at the cut, every churn
    before it kept, and the same durations as if the data had ended there."""
    from features.survival import censor_at

    _, data, _, frame = simulated
    first, last = sorted(frame[AS_OF].unique())[:2]
    early = frame[frame[AS_OF] == first]
    cut = censor_at(early, pd.Timestamp(last))
    span = (pd.Timestamp(last) - pd.Timestamp(first)).days
    assert (cut[DURATION] <= span + 1).all()
    kept = early[DURATION] <= span
    pd.testing.assert_frame_equal(cut[kept.to_numpy()], early[kept.to_numpy()])  # churns before the cut stay
    assert (cut.loc[~kept.to_numpy(), EVENT] == 0).all() and (~kept).sum() > 0
    # ... the durations the data would give if it ended at the cut.
    ended_events = data.events[data.events[TIMESTAMP] < pd.Timestamp(last)]
    ended_customers = data.customers.assign(
        **{CHURN_DATE: data.customers[CHURN_DATE].where(lambda d: d < pd.Timestamp(last))}
    )
    again = survival_snapshots(ended_customers, ended_events, early, "cancellation")
    # Censoring in `again` happens at its newest event (just before the cut): at most one day apart.
    assert (np.abs(again[DURATION].to_numpy() - cut[DURATION].to_numpy()) <= 1).all()
    np.testing.assert_array_equal(again[EVENT].to_numpy(), cut[EVENT].to_numpy())


def test_a_tenure_column_on_snapshot_data_and_report_days_are_refused(simulated):
    from training.churn_config import ConfigError, parse_config

    spec, data, _, frame = simulated
    with_tenure = spec.model_copy(
        update={"customers": spec.customers.model_copy(update={"duration": "plan"})}
    )
    with pytest.raises(SurvivalDataError, match="customers.duration: for one-table data"):
        survival_frame(type(data)(with_tenure, data.customers, data.events, data.rejects), frame)
    # Every answer reports the same days (its columns are a contract of the service and the batch output).
    with pytest.raises(ConfigError, match="report_days"):
        parse_config({"survival": {"report_days": [30, 90]}})
