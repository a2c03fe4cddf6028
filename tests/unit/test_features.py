"""The feature engine on hand-computed examples, point-in-time correctness, and the `features` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from churnsense.cli import app
from features.columns import ASPECT, CUSTOMER_ID, EVENT_TYPE, SENTIMENT, SIGNUP_DATE, TIMESTAMP
from features.engine import DAY_NS, FeatureSchema, build_customer_features, infer_schema
from features.pipeline import feature_table, load_data, schema_for
from features.spec import load_spec
from tests.shared_data import shared_file

AS_OF = pd.Timestamp("2024-03-01")
NS = pd.Timedelta(1, "ns")
DAY = pd.Timedelta(days=1)
SCHEMA = FeatureSchema(
    event_types=("login", "ticket", "view"), value_columns=("amount",), use_sentiment=True, lifetime=True
)


def _events(rows: list[tuple[str, pd.Timestamp, str, float, float]]) -> pd.DataFrame:
    ids, times, types, amounts, scores = zip(*rows, strict=True) if rows else ((), (), (), (), ())
    return pd.DataFrame(
        {
            CUSTOMER_ID: pd.Series(ids, dtype="string"),
            TIMESTAMP: pd.Series(times, dtype="datetime64[ns]"),
            EVENT_TYPE: pd.Series(types, dtype="string"),
            "amount": pd.Series(amounts, dtype="float64"),
            SENTIMENT: pd.Series(scores, dtype="float64"),
        }
    )


# Customer A: one event of every kind of boundary; D: only a scored text long ago; B: no events at all.
HAND_EVENTS = _events(
    [
        ("A", AS_OF - NS, "login", 10.0, 0.5),  # 1 ns before as_of: inside the 7-day window
        ("A", AS_OF - 7 * DAY, "login", np.nan, np.nan),  # exactly 7 days: still inside the 7-day window
        ("A", AS_OF - 7 * DAY - NS, "view", 5.0, -0.8),  # just outside 7 days
        ("A", AS_OF - 10 * DAY, "refund", 2.5, -0.3),  # unseen type -> "other"; -0.3 is not negative
        ("A", AS_OF - 45 * DAY, "ticket", 100.0, 0.1),  # in the 30 days before the trend window
        ("A", AS_OF - 100 * DAY, "login", 1000.0, -1.0),  # outside every window
        ("A", AS_OF, "ticket", 1e6, -1.0),  # at as_of: the future
        ("D", AS_OF - 200 * DAY, "view", 0.0, 0.7),
    ]
)
HAND_CUSTOMERS = pd.DataFrame(
    {
        CUSTOMER_ID: ["A", "B", "D"],
        SIGNUP_DATE: pd.Series([AS_OF - 365 * DAY, pd.NaT, pd.NaT], dtype="datetime64[ns]"),
    }
)


@pytest.fixture(scope="module")
def hand() -> pd.DataFrame:
    return build_customer_features(HAND_EVENTS, AS_OF, SCHEMA, customers=HAND_CUSTOMERS)


def test_window_counts_and_boundaries(hand):
    a = hand.loc["A"]
    assert (a["n_events_7d"], a["n_events_30d"], a["n_events_90d"]) == (2, 4, 5)
    assert (a["n_login_7d"], a["n_login_30d"], a["n_login_90d"]) == (2, 2, 2)
    assert (a["n_view_7d"], a["n_view_30d"], a["n_view_90d"]) == (0, 1, 1)
    assert (a["n_ticket_7d"], a["n_ticket_30d"], a["n_ticket_90d"]) == (0, 0, 1)


def test_unseen_event_types_count_as_other(hand):
    a = hand.loc["A"]
    assert (a["n_other_7d"], a["n_other_30d"], a["n_other_90d"]) == (0, 1, 1)
    assert a["days_since_other"] == 10
    assert not any("refund" in name for name in hand.columns)


def test_recency(hand):
    a, b, d = hand.loc["A"], hand.loc["B"], hand.loc["D"]
    assert a["days_since_last_event"] == 1 / DAY_NS
    assert a["days_since_first_event"] == 100
    assert a["days_since_login"] == 1 / DAY_NS
    assert a["days_since_view"] == 7 + 1 / DAY_NS
    assert a["days_since_ticket"] == 45  # the ticket at as_of is not seen
    assert d["days_since_last_event"] == 200 and np.isnan(d["days_since_login"])
    assert np.isnan(b["days_since_last_event"]) and np.isnan(b["days_since_first_event"])
    assert b["n_events_90d"] == 0


def test_tenure_from_signup_date_else_first_event(hand):
    assert hand.loc["A", "tenure_days"] == 365  # signup date wins over the first event (100 days)
    assert hand.loc["D", "tenure_days"] == 200  # no signup date: first event
    assert np.isnan(hand.loc["B", "tenure_days"])  # neither
    alone = build_customer_features(HAND_EVENTS, AS_OF, SCHEMA)  # no customers table at all
    assert alone.loc["A", "tenure_days"] == 100


def test_value_aggregates(hand):
    a = hand.loc["A"]
    assert (a["sum_amount_7d"], a["sum_amount_30d"], a["sum_amount_90d"]) == (10.0, 17.5, 117.5)
    assert a["mean_amount_90d"] == 117.5 / 4  # the NaN amount is not counted
    assert a["max_amount_90d"] == 100.0  # 1000 is older than 90 days, 1e6 is at as_of
    assert np.isnan(hand.loc["B", "mean_amount_90d"]) and np.isnan(hand.loc["B", "max_amount_90d"])
    assert hand.loc["B", "sum_amount_90d"] == 0


def test_trend_compares_the_trend_window_with_the_one_before(hand):
    a = hand.loc["A"]
    assert SCHEMA.trend_window == 30
    assert a["trend_events_30d"] == (4 - 1) / (1 + 1)
    assert a["trend_login_30d"] == 2.0
    assert a["trend_ticket_30d"] == -0.5
    assert a["trend_amount_30d"] == (17.5 - 100.0) / (100.0 + 1)
    assert hand.loc["B", "trend_events_30d"] == 0


def test_sentiment_aggregates(hand):
    a, d = hand.loc["A"], hand.loc["D"]
    assert a["n_texts_90d"] == 4
    assert a["sentiment_mean_90d"] == pytest.approx((0.5 - 0.8 - 0.3 + 0.1) / 4)
    assert a["sentiment_min_90d"] == -0.8
    assert a["sentiment_share_negative_90d"] == 0.25  # only -0.8: the threshold is strict
    assert a["sentiment_last"] == 0.5
    assert d["n_texts_90d"] == 0 and np.isnan(d["sentiment_mean_90d"]) and np.isnan(d["sentiment_min_90d"])
    assert d["sentiment_last"] == 0.7  # the last text counts whatever its age


def test_excluded_event_types_are_not_counted():
    schema = FeatureSchema(event_types=("login",), excluded_event_types=("cancel",))
    events = _events([("A", AS_OF - DAY, "cancel", 0, 0), ("A", AS_OF - 2 * DAY, "login", 0, 0)])
    row = build_customer_features(events, AS_OF, schema).loc["A"]
    assert row["n_events_7d"] == 1 and row["n_other_7d"] == 0 and row["days_since_last_event"] == 2


def test_lifetime_features_describe_the_whole_history(hand):
    a, b, d = hand.loc["A"], hand.loc["B"], hand.loc["D"]
    assert (a["n_events_all"], a["n_login_all"], a["n_view_all"], a["n_ticket_all"], a["n_other_all"]) == (
        6, 3, 1, 1, 1,
    )  # fmt: skip
    assert a["sum_amount_all"] == 10 + 5 + 2.5 + 100 + 1000  # the missing amount counts as nothing
    assert a["events_per_30d"] == pytest.approx(6 / 100 * 30)
    # Gaps in whole minutes: the event 1 ns before as_of falls in the minute before it.
    minutes = np.array([-144_000, -64_800, -14_400, -10_081, -10_080, -1])
    gaps = np.diff(minutes)
    assert a["gap_mean_days"] == pytest.approx(gaps.mean() / 1440, rel=1e-12)
    assert a["gap_sd_days"] == pytest.approx(gaps.std() / 1440, rel=1e-9)
    assert d["n_events_all"] == 1 and d["events_per_30d"] == pytest.approx(30 / 200)
    assert np.isnan(d["gap_mean_days"]) and np.isnan(d["gap_sd_days"])  # one event: no gap
    assert b["n_events_all"] == 0 and np.isnan(b["events_per_30d"]) and np.isnan(b["gap_mean_days"])


def test_lifetime_counts_and_gaps_ignore_the_order_events_arrive_in(hand):
    """Integer arithmetic: no order to depend on (float sums follow the loaders' canonical event order)."""
    shuffled = HAND_EVENTS.sample(frac=1.0, random_state=3).reset_index(drop=True)
    lifetime = [c for c in SCHEMA.lifetime_feature_names() if not c.startswith("sum_")]
    pd.testing.assert_frame_equal(
        build_customer_features(shuffled, AS_OF, SCHEMA, customers=HAND_CUSTOMERS)[lifetime], hand[lifetime]
    )


def test_future_events_change_no_feature(hand):
    future = _events(
        [
            ("A", AS_OF, "login", 5.0, -1.0),
            ("A", AS_OF + NS, "view", 7.0, 1.0),
            ("B", AS_OF + 3 * DAY, "ticket", 9.0, -0.9),
            ("NEW", AS_OF + DAY, "login", 1.0, 0.0),
        ]
    )
    changed = HAND_EVENTS.copy()
    at_or_after = changed[TIMESTAMP] >= AS_OF
    changed.loc[at_or_after, "amount"] = -123.0
    changed.loc[at_or_after, SENTIMENT] = 0.99
    changed.loc[at_or_after, EVENT_TYPE] = "view"
    more = pd.concat([changed, future], ignore_index=True)
    pd.testing.assert_frame_equal(
        build_customer_features(more, AS_OF, SCHEMA, customers=HAND_CUSTOMERS), hand
    )
    # Without a customers table the rows come from events before as_of: "NEW" must not appear.
    pd.testing.assert_frame_equal(
        build_customer_features(more, AS_OF, SCHEMA), build_customer_features(HAND_EVENTS, AS_OF, SCHEMA)
    )


def test_an_event_one_nanosecond_before_as_of_counts_and_one_at_as_of_does_not():
    schema = FeatureSchema(event_types=("login",))
    before = build_customer_features(_events([("A", AS_OF - NS, "login", 0, 0)]), AS_OF, schema).loc["A"]
    assert before["n_events_7d"] == 1 and before["n_login_7d"] == 1
    customers = pd.DataFrame({CUSTOMER_ID: ["A"]})
    at = build_customer_features(_events([("A", AS_OF, "login", 0, 0)]), AS_OF, schema, customers=customers)
    assert at.loc["A", "n_events_90d"] == 0


def _random_data(n_customers: int, n_events: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{i:05d}" for i in range(n_customers)])
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: ids,
            SIGNUP_DATE: np.where(
                rng.random(n_customers) < 0.2,
                np.datetime64("NaT"),
                AS_OF.to_datetime64() - rng.integers(1, 800, n_customers).astype("timedelta64[D]"),
            ).astype("datetime64[ns]"),
            "plan": rng.choice(["basic", "pro", None], n_customers),
            "seats": np.where(rng.random(n_customers) < 0.1, np.nan, rng.integers(1, 50, n_customers)),
        }
    )
    age = rng.integers(-20 * DAY_NS, 200 * DAY_NS, n_events)  # some events after as_of
    events = pd.DataFrame(
        {
            CUSTOMER_ID: rng.choice(ids[: n_customers * 9 // 10], n_events),  # 10% have no events
            TIMESTAMP: (AS_OF.value - age).astype("datetime64[ns]"),
            EVENT_TYPE: rng.choice(
                ["login", "view", "ticket", "payment", "rare"], n_events, p=[0.4, 0.3, 0.1, 0.1999, 0.0001]
            ),
            "amount": np.where(rng.random(n_events) < 0.1, np.nan, rng.gamma(2.0, 10.0, n_events)),
            SENTIMENT: np.where(rng.random(n_events) < 0.5, np.nan, rng.uniform(-1, 1, n_events)),
        }
    )
    return customers, events


def test_one_customer_alone_equals_its_row_among_thousands():
    customers, events = _random_data(3000, 60_000, seed=11)
    schema = infer_schema(customers, events, value_columns=("amount",))
    assert "rare" not in schema.event_types and schema.use_sentiment  # "rare" goes to "other"
    as_categorical = events.astype({CUSTOMER_ID: "category", EVENT_TYPE: "category"})  # as the loader gives
    everyone = build_customer_features(as_categorical, AS_OF, schema, customers=customers)
    assert len(everyone) == 3000
    checked = 0
    for customer in [
        "C00000",
        "C00017",
        "C01234",
        "C02999",
        *customers[CUSTOMER_ID].sample(6, random_state=1),
    ]:
        mine = events[events[CUSTOMER_ID] == customer].reset_index(drop=True)  # plain strings, as online
        profile = customers[customers[CUSTOMER_ID] == customer].reset_index(drop=True)
        alone = build_customer_features(mine, AS_OF, schema, customers=profile)
        pd.testing.assert_frame_equal(alone, everyone.loc[[customer]], check_exact=True)
        checked += int(alone.isna().to_numpy().any())
    assert checked > 0  # the comparison covered NaN positions too (C02999 has no events)


@pytest.mark.parametrize("with_customers", [True, False])
def test_the_customers_split_between_threads_give_the_one_thread_features_bit_for_bit(
    monkeypatch, with_customers
):
    """For millions of events the engine splits the customers between threads; the features must be those of
    one thread exactly (value sums in the same order, text and aspect aggregates, unseen and excluded types,
    events of unknown customers), with the customers table given or taken from the events."""
    from features import event_block

    customers, events = _random_data(3000, 60_000, seed=12)
    events["aspect"] = pd.Series(
        np.random.default_rng(3).choice(["billing", "delay", None], len(events)), dtype="str"
    ).where(events[SENTIMENT].notna())
    events.loc[events.index[::97], EVENT_TYPE] = "cancel"  # excluded
    schema = infer_schema(
        customers if with_customers else None,
        events,
        value_columns=("amount",),
        exclude_event_types=("cancel",),
        aspects=("billing", "delay"),
    )
    assert schema.aspects and schema.lifetime and schema.use_sentiment
    frame = events.astype({CUSTOMER_ID: "category", EVENT_TYPE: "category"})
    frame.loc[frame.index[:40], CUSTOMER_ID] = np.nan  # no id: counts for nobody
    known = customers.iloc[:2500] if with_customers else None  # events of customers not in the table
    monkeypatch.setattr(event_block, "feature_threads", lambda: 1)
    one = build_customer_features(frame, AS_OF, schema, customers=known)
    monkeypatch.setattr(event_block, "PARALLEL_MIN_EVENTS", 0)
    for threads in (2, 3):  # 3: ranges of unequal size
        monkeypatch.setattr(event_block, "feature_threads", lambda n=threads: n)
        split = build_customer_features(frame, AS_OF, schema, customers=known)
        pd.testing.assert_frame_equal(split, one, check_exact=True)
    assert one["n_texts_about_billing_90d"].sum() > 0 and one["sum_amount_90d"].notna().all()


def test_profile_rows_follow_the_customers_table_whatever_its_id_dtype():
    # Rows are the customers table's rows in its order: integer ids (a DataFrame built by hand) keep their
    # profile values instead of being looked up as strings and lost; all-missing profile columns stay typed.
    customers = pd.DataFrame({CUSTOMER_ID: [7, 3], "seats": [2.0, None], "plan": [None, None]})
    schema = FeatureSchema(profile_numeric=("seats",), profile_categorical=("plan",), use_events=False)
    frame = build_customer_features(None, AS_OF, schema, customers=customers)
    assert frame.index.tolist() == ["7", "3"]
    assert frame["seats"].tolist()[0] == 2.0 and np.isnan(frame["seats"].tolist()[1])
    assert frame["seats"].dtype == "float64" and frame["plan"].dtype == "str"
    assert frame["plan"].isna().all()


def test_feature_names_and_order_come_from_the_schema():
    customers, events = _random_data(50, 2000, seed=3)
    schema = infer_schema(customers, events, value_columns=("amount",))
    frame = build_customer_features(events, AS_OF, schema, customers=customers)
    assert list(frame.columns) == schema.feature_names()
    assert schema.feature_names()[:3] == ["seats", "plan", "tenure_days"]
    names = schema.feature_names()
    assert names.index("n_events_7d") < names.index("n_login_7d") < names.index("n_other_7d")
    assert names.index("n_other_90d") < names.index("sum_amount_7d") < names.index("n_texts_90d")
    # The same schema on data with other types or column order gives the same columns in the same order.
    shuffled = events.sample(frac=1.0, random_state=2)[
        [EVENT_TYPE, SENTIMENT, "amount", TIMESTAMP, CUSTOMER_ID]
    ]
    shuffled.loc[shuffled.index[:5], EVENT_TYPE] = "brand_new_type"
    assert list(build_customer_features(shuffled, AS_OF, schema, customers=customers).columns) == names
    assert FeatureSchema.from_json(schema.to_json()) == schema
    assert FeatureSchema.from_json(schema.to_json()).feature_names() == names


def test_schema_checks_its_windows_and_reserved_names():
    with pytest.raises(ValueError, match="windows"):
        FeatureSchema(windows=(30, 7))
    with pytest.raises(ValueError, match="other"):
        FeatureSchema(event_types=("login", "other"))


def test_infer_schema_reads_blank_padded_numbers_as_numeric():
    customers = pd.DataFrame(
        {
            CUSTOMER_ID: ["a", "b", "c"],
            "total": pd.Series(["29.85", " ", "1889.5"], dtype="string"),
            "contract": ["Month-to-month", "One year", "Two year"],
            "code": pd.Series(["1", "x", "3"], dtype="string"),
        }
    )
    schema = infer_schema(customers, None)
    assert schema.profile_numeric == ("total",) and schema.profile_categorical == ("contract", "code")
    assert not schema.use_events
    row = build_customer_features(None, AS_OF, schema, customers=customers)
    assert row["total"].tolist()[0] == 29.85 and np.isnan(row.loc["b", "total"])


def test_true_false_columns_are_two_categories_read_the_same_from_every_source(tmp_path):
    """A yes/no column (RavenStack's `is_trial`) was classed numeric and turned into all-missing values in
    training, and `score` rejected every row of it. It is a two-value category, whatever the source: a CSV
    pandas parses as booleans, one with a blank (text), Parquet booleans, or a JSON request's true/false."""
    from features.io import load_customers
    from features.spec import DatasetSpec

    (tmp_path / "c.csv").write_text("id,is_trial,seats\na,True,3\nb,False,5\nc,,7\n")
    spec = DatasetSpec.model_validate({"customers": {"path": "c.csv", "id": "id"}, "base_dir": str(tmp_path)})
    loaded, rejects = load_customers(spec)
    schema = infer_schema(loaded, None)
    assert schema.profile_categorical == ("is_trial",) and schema.profile_numeric == ("seats",)
    _, rejects = load_customers(spec, numeric_columns=schema.profile_numeric)
    assert len(rejects) == 0
    expected = ["True", "False", None]
    sources = {
        "csv": loaded,
        "booleans": loaded.assign(is_trial=pd.Series([True, False, None], dtype="boolean")),
        "python objects (a request)": loaded.assign(is_trial=pd.Series([True, False, None], dtype=object)),
        "parquet": pd.read_parquet(_parquet(loaded.assign(is_trial=[True, False, None]), tmp_path)),
    }
    for source, customers in sources.items():
        row = build_customer_features(None, AS_OF, schema, customers=customers)
        assert row["is_trial"].iloc[:2].tolist() == expected[:2] and pd.isna(row["is_trial"].iloc[2]), source
        assert row["seats"].tolist() == [3.0, 5.0, 7.0], source


def _parquet(frame: pd.DataFrame, folder: Path) -> Path:
    path = folder / "c.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_telco_feature_table_has_numeric_total_charges_and_categorical_contract(tmp_path):
    csv = shared_file("telco_churn", "WA_Fn-UseC_-Telco-Customer-Churn.csv")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"customers:\n  path: {csv}\n  id: customerID\n  label: Churn\n")
    spec = load_spec(spec_file)
    data = load_data(spec)
    schema = schema_for(spec, data)
    assert "TotalCharges" in schema.profile_numeric and "MonthlyCharges" in schema.profile_numeric
    assert {"Contract", "PaymentMethod", "gender"} <= set(schema.profile_categorical)
    assert "Churn" not in schema.feature_names() and "customerID" not in schema.feature_names()
    table = feature_table(data, schema, "2024-01-01")
    assert len(table) == 7043 and table["TotalCharges"].dtype == "float64"
    assert table["TotalCharges"].isna().sum() == 11  # the blank values
    assert table.loc["7590-VHVEG", "TotalCharges"] == 29.85
    assert set(table["Contract"]) == {"Month-to-month", "One year", "Two year"}


# --- `churnsense features` ----------------------------------------------------------------------------


def _write_small_dataset(folder: Path) -> Path:
    customers, events = _random_data(40, 800, seed=5)
    customers.rename(columns={CUSTOMER_ID: "cust", SIGNUP_DATE: "joined"}).to_csv(
        folder / "customers.csv", index=False
    )
    events = events.drop(columns=[SENTIMENT]).rename(
        columns={CUSTOMER_ID: "cust", TIMESTAMP: "at", EVENT_TYPE: "kind"}
    )
    events.to_parquet(folder / "events.parquet", index=False)
    spec_file = folder / "spec.yaml"
    spec_file.write_text(
        "customers: {path: customers.csv, id: cust, signup_date: joined}\n"
        "events: {path: events.parquet, id: cust, time: at, type: kind, values: [amount]}\n"
    )
    return spec_file


def test_features_command_writes_the_engine_output(tmp_path):
    spec_file = _write_small_dataset(tmp_path)
    out = tmp_path / "out" / "features.parquet"
    result = CliRunner().invoke(
        app, ["features", "--spec", str(spec_file), "--as-of", "2024-03-01", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "40 customers" in result.output
    written = pd.read_parquet(out)
    spec = load_spec(spec_file)
    data = load_data(spec, with_text=False)
    schema = schema_for(spec, data)
    expected = feature_table(data, schema, "2024-03-01").reset_index()
    assert list(written.columns) == [CUSTOMER_ID, *schema.feature_names()]
    pd.testing.assert_frame_equal(written, expected)
    assert written["n_events_90d"].sum() > 0
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "churnsense.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_features_command_rejects_a_bad_date_with_exit_2(tmp_path):
    spec_file = _write_small_dataset(tmp_path)
    out = tmp_path / "features.parquet"
    result = _cli("features", "--spec", str(spec_file), "--as-of", "2024-13-45", "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --as-of") and "2024-13-45" in lines[0]
    assert not out.exists()


def test_features_command_reports_a_missing_spec_with_exit_2(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = _cli(
        "features", "--spec", str(missing), "--as-of", "2024-03-01", "--out", str(tmp_path / "f.parquet")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: spec file not found"


@pytest.mark.parametrize("dtype", ["str", "category", "object"])
def test_negative_texts_are_counted_per_aspect_in_the_longest_window(dtype):
    schema = FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects=("billing", "Late Flight"))
    rows = [  # (customer, days before as_of, sentiment, aspect)
        ("a", 1, -0.9, "billing"),  # counted
        ("a", 89, -0.5, "billing"),  # counted: inside 90 days
        ("a", 91, -0.9, "billing"),  # outside the longest window
        ("a", 2, 0.8, "billing"),  # not negative
        ("a", 3, -0.3, "billing"),  # -0.3 is not below the threshold
        ("a", 4, -0.9, "Late Flight"),  # counted under the other aspect
        ("a", 5, -0.9, "none"),  # the model's "none": no aspect
        ("a", 6, -0.9, "refunds"),  # a name the schema lacks
        ("a", 7, np.nan, "billing"),  # no text, no score
        ("a", -1, -0.9, "billing"),  # after as_of
        ("b", 1, -0.9, None),  # a text without an aspect
    ]
    ids, days, scores, about = zip(*rows, strict=True)
    events = pd.DataFrame(
        {
            CUSTOMER_ID: pd.array(ids, dtype="str"),
            TIMESTAMP: [AS_OF - pd.Timedelta(days=d) for d in days],
            EVENT_TYPE: pd.array(["ticket"] * len(rows), dtype="str"),
            SENTIMENT: np.array(scores, dtype="float64"),
            ASPECT: pd.Series(about, dtype=dtype),
        }
    )
    features = build_customer_features(events, AS_OF, schema)
    assert features.loc["a", "n_negative_about_billing_90d"] == 2
    assert features.loc["a", "n_texts_about_billing_90d"] == 4  # and the positive and the -0.3 ones
    assert features.loc["a", "n_negative_about_late_flight_90d"] == 1
    assert features.loc["a", "n_texts_about_late_flight_90d"] == 1
    about = [n for n in schema.feature_names() if "_about_" in n]
    assert len(about) == 4 and features.loc["b", about].sum() == 0
    # One customer alone gets the same numbers as in the batch (the online path).
    alone = build_customer_features(events[events[CUSTOMER_ID] == "a"], AS_OF, schema)
    pd.testing.assert_series_equal(alone.loc["a"], features.loc["a"])
    with pytest.raises(ValueError, match="`aspect` column"):
        build_customer_features(events.drop(columns=[ASPECT]), AS_OF, schema)


def test_aspect_schemas_refuse_what_would_break_their_features():
    with pytest.raises(ValueError, match="need sentiment"):
        FeatureSchema(event_types=("ticket",), aspects=("billing",))
    with pytest.raises(ValueError, match="same feature names"):
        FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects=("Late flight", "late-flight"))
    with pytest.raises(ValueError, match="letter or a digit"):
        FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects=("??",))
    with pytest.raises(ValueError, match="made twice"):  # an aspect's features against an event type's
        FeatureSchema(event_types=("texts_about_billing",), use_sentiment=True, aspects=("billing",))
    stored = FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects=("billing",))
    assert FeatureSchema.from_json(stored.to_json()) == stored


def test_aspect_names_become_ascii_feature_names_or_a_clear_error():
    from features.text_features import aspect_feature_names

    assert aspect_feature_names("Frühstück", 90) == (
        "n_texts_about_fruhstuck_90d",
        "n_negative_about_fruhstuck_90d",
    )
    assert aspect_feature_names("Can't Tell", 30)[1] == "n_negative_about_can_t_tell_30d"
    with pytest.raises(ValueError, match="Latin letter or a digit.*rename"):
        aspect_feature_names("配送", 90)
    with pytest.raises(ValueError, match="not the one string"):
        FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects="abc")
    with pytest.raises(ValueError, match="are text"):
        FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects=(1,))
    with pytest.raises(ValueError, match="same feature names"):
        FeatureSchema(event_types=("ticket",), use_sentiment=True, aspects=("Billing", "billing"))


@pytest.mark.parametrize("dtype", [object, "str", "string"])
def test_a_few_customers_profile_texts_read_as_many_customers_do(dtype):
    """The one-customer shortcut for categorical profile values gives what the path for many customers gives,
    for every kind of value a request or a file holds (whitespace of all sorts, blanks, missing, numbers)."""
    from features.engine import _FEW_ROWS

    odd = [
        "pro",
        " pro",
        "pro\t",
        "",
        "   ",
        None,
        "é",
        " é ",
        "\u00a0x",
        "x\u2003",
        "\x1cx",
        "x\x1f",
        "a b",
        "Ünï",
    ]
    if dtype is object:
        odd += [1, 1.5, True, float("nan")]
    schema = FeatureSchema(profile_categorical=("plan",), use_events=False)

    def profile(values: list) -> list:
        frame = pd.DataFrame({"customer_id": [str(i) for i in range(len(values))], "plan": values})
        frame["plan"] = frame["plan"].astype(dtype) if dtype is not object else frame["plan"]
        return build_customer_features(None, "2024-01-01", schema, customers=frame)["plan"].tolist()

    many = profile(odd * (_FEW_ROWS // len(odd) + 1))[: len(odd)]
    one_by_one = [profile([value])[0] for value in odd]
    assert [None if pd.isna(v) else v for v in one_by_one] == [None if pd.isna(v) else v for v in many]
    assert profile(["pro", "pro "]) == ["pro", "pro"]


def test_gap_features_equal_the_two_key_sort_reference_bit_for_bit():
    """The gap mean and spread come from one sort of a combined (customer << bits | minute) key and
    per-customer run sums; they must equal the plain reference (lexsort, np.add.at) exactly, ties and lone events included."""
    from features.gaps import gap_block, sorted_steps

    rng = np.random.default_rng(11)
    n_customers, n = 300, 5_000
    customer = rng.integers(0, n_customers - 20, n)  # the last 20 customers have no events
    times_ns = (
        rng.integers(0, 50_000, n) * 60 + rng.integers(0, 60, n)
    ) * 1_000_000_000 + 1_700_000_000 * 10**9
    times_ns[:50] = times_ns[50:100]  # ties in time
    minutes = times_ns // 60_000_000_000
    order = np.lexsort((minutes, customer))
    by_customer, by_time = customer[order], minutes[order]
    same = by_customer[1:] == by_customer[:-1]
    gaps, owner = (by_time[1:] - by_time[:-1])[same], by_customer[1:][same]
    n_gaps = np.bincount(owner, minlength=n_customers)
    span, squares = np.zeros(n_customers, dtype=np.int64), np.zeros(n_customers, dtype=np.int64)
    np.add.at(span, owner, gaps)
    np.add.at(squares, owner, gaps * gaps)
    mean = np.divide(span, n_gaps, out=np.full(n_customers, np.nan), where=n_gaps > 0)
    variance = np.divide(squares, n_gaps, out=np.full(n_customers, np.nan), where=n_gaps > 1) - mean * mean
    got = gap_block(customer, times_ns, n_customers)
    np.testing.assert_array_equal(got["gap_mean_days"], mean / 1_440.0)
    np.testing.assert_array_equal(got["gap_sd_days"], np.sqrt(np.maximum(variance, 0.0)) / 1_440.0)
    # The two-key sort is the fallback when the combined key could overflow: same pairs.
    for fast, slow in zip(
        sorted_steps(customer, minutes, n_customers), sorted_steps(customer, minutes, 2**61), strict=True
    ):
        np.testing.assert_array_equal(fast, slow)
    assert np.isnan(got["gap_mean_days"][-20:]).all()


def test_as_of_in_nanoseconds_is_what_pandas_reads_for_every_kind_of_datetime():
    """`to_timestamp_ns` reads a plain datetime by integer arithmetic (the service's as_of): it must give
    pandas' nanoseconds for naive, UTC and other-offset times, microseconds included, and refuse what pandas
    refuses (years it cannot hold) the same way."""
    import datetime as dt
    import random

    from features.engine import to_timestamp_ns

    def by_pandas(value):
        stamp = pd.Timestamp(value)
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        return int(stamp.as_unit("ns").value)

    rng = random.Random(7)
    zones = [
        None,
        dt.UTC,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(-dt.timedelta(hours=11)),
    ]
    for _ in range(2000):
        base = dt.datetime(1678, 1, 1) + dt.timedelta(
            microseconds=rng.randrange(0, 584 * 365 * 86_400 * 10**6)
        )
        value = base.replace(tzinfo=rng.choice(zones))
        assert to_timestamp_ns(value) == by_pandas(value), value
    for edge in (dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, tzinfo=dt.UTC), dt.datetime(2262, 4, 12)):
        with pytest.raises(ValueError):  # pandas' OutOfBoundsDatetime is a ValueError
            by_pandas(edge)
        with pytest.raises(ValueError):
            to_timestamp_ns(edge)
    assert to_timestamp_ns(dt.date(2024, 5, 1)) == by_pandas(
        dt.date(2024, 5, 1)
    )  # a date: midnight at its start
