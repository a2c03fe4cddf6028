"""Churn labels on hand-made examples: what happens in [as_of, as_of + horizon), and who is eligible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.columns import AS_OF, CHURN_DATE, CHURNED, CUSTOMER_ID, EVENT_TYPE, SIGNUP_DATE, TIMESTAMP
from features.labels import LabelError, label_snapshot, label_snapshots

START = pd.Timestamp("2024-03-01")
DAY = pd.Timedelta(days=1)
NS = pd.Timedelta(1, "ns")
NAT = pd.NaT


def _labels(frame: pd.DataFrame) -> dict[str, int]:
    return dict(zip(frame[CUSTOMER_ID], frame[CHURNED].astype(int), strict=True))


def _customers(rows: dict[str, tuple[pd.Timestamp, pd.Timestamp]]) -> pd.DataFrame:
    """id -> (signup_date, churn_date)."""
    return pd.DataFrame(
        {
            CUSTOMER_ID: list(rows),
            SIGNUP_DATE: pd.Series([s for s, _ in rows.values()], dtype="datetime64[ns]"),
            CHURN_DATE: pd.Series([c for _, c in rows.values()], dtype="datetime64[ns]"),
        }
    )


def _events(rows: list[tuple[str, pd.Timestamp, str]]) -> pd.DataFrame:
    ids, times, types = zip(*rows, strict=True)
    return pd.DataFrame(
        {CUSTOMER_ID: list(ids), TIMESTAMP: pd.Series(times, dtype="datetime64[ns]"), EVENT_TYPE: list(types)}
    )


def test_churn_date_labels_and_eligibility():
    old = START - 300 * DAY
    customers = _customers(
        {
            "stays": (old, NAT),
            "leaves": (old, START + 10 * DAY),
            "leaves_at_as_of": (old, START),
            "leaves_at_horizon_end": (old, START + 30 * DAY),  # the window is half-open: not churned
            "already_gone": (old, START - DAY),
            "not_yet_signed_up": (START + 5 * DAY, NAT),
            "signs_up_at_as_of": (START, NAT),
        }
    )
    frame = label_snapshot(customers, None, START, horizon_days=30)
    assert _labels(frame) == {"stays": 0, "leaves": 1, "leaves_at_as_of": 1, "leaves_at_horizon_end": 0}
    assert list(frame.columns) == [CUSTOMER_ID, AS_OF, CHURNED] and frame[CHURNED].dtype == "int8"
    assert (frame[AS_OF] == START).all()


def test_churn_date_without_signup_dates_uses_first_event_to_know_a_customer():
    customers = _customers({"seen": (NAT, START + DAY), "unseen": (NAT, START + DAY), "late": (NAT, NAT)})
    customers = customers.drop(columns=[SIGNUP_DATE])
    events = _events([("seen", START - 3 * DAY, "login"), ("late", START + DAY, "login")])
    assert _labels(label_snapshot(customers, events, START, 30)) == {"seen": 1}
    # Without events a customers-only table knows every customer.
    assert _labels(label_snapshot(customers, None, START, 30)) == {"seen": 1, "unseen": 1, "late": 0}


def test_churn_event_labels_and_eligibility():
    events = _events(
        [
            ("A", START - 20 * DAY, "login"),
            ("A", START + 5 * DAY, "cancel"),
            ("B", START - 20 * DAY, "login"),
            ("B", START - 2 * DAY, "cancel"),  # left before as_of: not in the snapshot
            ("C", START - 20 * DAY, "login"),
            ("C", START + 30 * DAY, "cancel"),  # at the end of the window: outside it
            ("D", START + 1 * DAY, "login"),  # first seen after as_of: not yet a customer
            ("D", START + 3 * DAY, "cancel"),
            ("E", START - NS, "login"),
            ("E", START, "cancel"),  # at as_of: inside the window
        ]
    )
    assert _labels(label_snapshot(None, events, START, 30, churn_event="cancel")) == {"A": 1, "C": 0, "E": 1}
    customers = pd.DataFrame({CUSTOMER_ID: ["E", "D", "C", "B", "A", "F"]})
    with_customers = label_snapshot(customers, events, START, 30, churn_event="cancel")
    assert list(with_customers[CUSTOMER_ID]) == ["E", "C", "A"]  # the customers' order, eligible only
    assert _labels(with_customers) == {"A": 1, "C": 0, "E": 1}


def test_inactivity_labels_and_eligibility():
    events = _events(
        [
            ("active", START - 5 * DAY, "login"),
            ("active", START + 3 * DAY, "login"),
            ("quiet_after", START - 5 * DAY, "login"),
            ("long_gone", START - 40 * DAY, "login"),  # not active in the 30 days before as_of: excluded
            ("back_too_late", START - DAY, "login"),
            ("back_too_late", START + 30 * DAY, "login"),
            ("edge", START - NS, "login"),
            ("edge", START, "login"),
        ]
    )
    frame = label_snapshot(None, events, START, 30, inactivity=True)
    assert _labels(frame) == {"active": 0, "back_too_late": 1, "edge": 0, "quiet_after": 1}
    assert list(frame[CUSTOMER_ID]) == sorted(frame[CUSTOMER_ID])


def test_definitions_combine_with_or():
    old = START - 100 * DAY
    customers = _customers({"dated": (old, START + DAY), "quiet": (old, NAT), "busy": (old, NAT)})
    events = _events(
        [
            ("dated", START - DAY, "login"),
            ("dated", START + 2 * DAY, "login"),
            ("quiet", START - DAY, "login"),
            ("busy", START - DAY, "login"),
            ("busy", START + 2 * DAY, "login"),
        ]
    )
    frame = label_snapshot(customers, events, START, 30, inactivity=True)
    assert _labels(frame) == {"dated": 1, "quiet": 1, "busy": 0}


def test_categorical_ids_and_types_give_the_same_labels():
    rng = np.random.default_rng(4)
    n = 5000
    events = pd.DataFrame(
        {
            CUSTOMER_ID: rng.choice([f"c{i}" for i in range(300)], n),
            TIMESTAMP: (START.value + rng.integers(-90, 60, n) * DAY.value).astype("datetime64[ns]"),
            EVENT_TYPE: rng.choice(["login", "cancel"], n, p=[0.97, 0.03]),
        }
    )
    customers = pd.DataFrame({CUSTOMER_ID: [f"c{i}" for i in range(320)]})
    as_category = events.astype({CUSTOMER_ID: "category", EVENT_TYPE: "category"})
    for kwargs in ({"churn_event": "cancel"}, {"inactivity": True}):
        for people in (None, customers):
            plain = label_snapshot(people, events, START, 30, **kwargs)
            coded = label_snapshot(people, as_category, START, 30, **kwargs)
            pd.testing.assert_frame_equal(plain, coded)
            assert 0 < plain[CHURNED].sum() < len(plain)


def test_static_label_is_one_snapshot_with_the_label():
    customers = pd.DataFrame({CUSTOMER_ID: ["a", "b", "c"], CHURNED: [1, 0, 1]})
    frame = label_snapshot(customers, None, "2024-01-01", 90)
    assert _labels(frame) == {"a": 1, "b": 0, "c": 1}


def test_label_snapshots_stack_one_block_per_date():
    customers = _customers({"x": (START - 100 * DAY, START + 40 * DAY), "y": (START - 100 * DAY, NAT)})
    dates = [START.date(), (START + 30 * DAY).date()]
    frame = label_snapshots(customers, None, dates, 30)
    assert len(frame) == 4
    by_date = {(str(r[AS_OF].date()), r[CUSTOMER_ID]): r[CHURNED] for _, r in frame.iterrows()}
    assert by_date == {
        ("2024-03-01", "x"): 0,
        ("2024-03-01", "y"): 0,
        ("2024-03-31", "x"): 1,
        ("2024-03-31", "y"): 0,
    }


def test_labels_that_cannot_be_made_raise_label_error():
    customers = pd.DataFrame({CUSTOMER_ID: ["a"]})
    with pytest.raises(LabelError, match="no churn definition"):
        label_snapshot(customers, None, START, 30)
    with pytest.raises(LabelError, match="need an `events` section"):
        label_snapshot(customers, None, START, 30, churn_event="cancel")
    with pytest.raises(LabelError, match="labels.as_of"):
        label_snapshots(customers, None, [], 30)


def test_a_label_window_past_the_newest_event_is_censored() -> None:
    import datetime as dt

    from features.labels import censored_as_of

    newest = pd.Timestamp("2024-03-30 17:45")  # the window's last day needs data: 2024-03-30 counts
    dates = [dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)]
    censored, latest_ok = censored_as_of(dates, 29, newest)
    assert latest_ok == dt.date(2024, 3, 2) and censored == [dt.date(2024, 3, 3)]
    assert censored_as_of(dates, 1, newest) == ([], dt.date(2024, 3, 30))
