"""The event simulator: reproducible files that load through the spec, and a churn story the features can see."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from features import simulate as sim
from features.columns import AS_OF, CHURNED
from features.io import load_reviews, rating_to_sentiment
from features.labels import label_snapshots
from features.pipeline import load_data, schema_for, training_frame
from features.spec import load_spec

N_CUSTOMERS = 2000
SERVICE_TYPES = {"ticket_opened", "complaint", "ticket_resolved"}
NEGATIVE_WORDS = (
    r"fed up|ridiculous|not fixed|cancelling|leaving|manager|useless|joke|worst|unbelievable|avoid"
)
POSITIVE_WORDS = r"thanks a lot|appreciate|great|right away|keep it up|happy customer|best provider|reliable"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    sim.write_demo_data(out, n_customers=N_CUSTOMERS, seed=11)
    return out


@pytest.fixture(scope="module")
def data() -> sim.SimulatedData:
    return sim.simulate(N_CUSTOMERS, seed=11)


def _per_customer_counts(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby("customer_id", observed=True)["event_type"].value_counts().unstack(fill_value=0)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        summary = sim.write_demo_data(tmp_path / name, n_customers=300, seed=seed)
        assert "customers: 300" in summary and "spec.yaml" in summary
    files = (sim.CUSTOMERS_FILE, sim.EVENTS_FILE, sim.REVIEWS_FILE, sim.SPEC_FILE)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in (sim.CUSTOMERS_FILE, sim.EVENTS_FILE, sim.REVIEWS_FILE):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(files)  # no staging folder left


def test_in_memory_simulation_matches_the_files(demo_dir: Path, data: sim.SimulatedData) -> None:
    customers = pd.read_csv(demo_dir / sim.CUSTOMERS_FILE, dtype={"customer_id": "string"})
    events = pq.read_table(demo_dir / sim.EVENTS_FILE).to_pandas()
    assert customers["customer_id"].tolist() == data.customers["customer_id"].tolist()
    assert customers["churned_at"].notna().sum() == data.customers["churned_at"].notna().sum()
    assert len(events) == len(data.events)
    assert (
        events["event_type"]
        .astype(str)
        .value_counts()
        .equals(data.events["event_type"].astype(str).value_counts())
    )


def test_files_have_the_documented_columns_and_no_leaking_ones(demo_dir: Path) -> None:
    customers = pd.read_csv(demo_dir / sim.CUSTOMERS_FILE, dtype={"customer_id": "string"})
    assert tuple(customers.columns) == sim.CUSTOMER_COLUMNS
    assert customers["customer_id"].str.fullmatch(r"C\d{7}").all() and customers["customer_id"].is_unique
    assert set(customers["plan"]) == set(sim.PLANS) and set(customers["contract"]) == set(sim.CONTRACTS)
    assert 0.05 < customers["churned_at"].notna().mean() < 0.6

    parquet = pq.ParquetFile(demo_dir / sim.EVENTS_FILE)
    assert parquet.schema_arrow.equals(sim.EVENTS_SCHEMA)
    assert all(
        parquet.metadata.row_group(i).num_rows <= sim.ROW_GROUP_ROWS for i in range(parquet.num_row_groups)
    )
    events = parquet.read().to_pandas()
    kinds = events["event_type"].astype(str)
    assert set(kinds) == set(sim.EVENT_TYPES)
    assert set(events["channel"].astype(str)) == set(sim.CHANNELS)
    assert 10 < len(events) / len(customers) < 40
    has_text = events["text"].notna()
    assert kinds[has_text].isin(SERVICE_TYPES).all()
    assert 0.02 < has_text.mean() < 0.1
    waits = events["duration_s"].notna()
    assert events.loc[waits, "channel"].astype(str).isin(["phone", "chat"]).all()
    assert kinds[waits].isin(SERVICE_TYPES).all() and (events.loc[waits, "duration_s"] > 0).all()
    money = events["amount"].notna()
    assert set(kinds[money]) == {"purchase", "billing", "price_increase"}
    assert (events.loc[money, "amount"] > 0).all()

    reviews = pd.read_csv(demo_dir / sim.REVIEWS_FILE)
    assert tuple(reviews.columns) == sim.REVIEW_COLUMNS
    assert len(reviews) == sim.default_review_count(N_CUSTOMERS)
    assert set(reviews["stars"]) == {1, 2, 3, 4, 5}
    assert reviews["review_id"].is_unique
    assert 0 < reviews["text"].duplicated().sum() < 0.05 * len(reviews)


def test_churned_customers_cancel_once_on_their_churn_date_and_then_nothing_happens(
    data: sim.SimulatedData,
) -> None:
    customers = data.customers.set_index("customer_id")
    events = data.events.assign(customer_id=data.events["customer_id"].astype(str))
    cancels = events[events["event_type"] == sim.CHURN_EVENT]
    assert cancels["customer_id"].is_unique
    churned = customers["churned_at"].dropna()
    assert set(cancels["customer_id"]) == set(churned.index)
    cancel_at = cancels.set_index("customer_id")["timestamp"]
    assert (cancel_at.dt.normalize() == churned.reindex(cancel_at.index)).all()
    last = events.groupby("customer_id")["timestamp"].max()
    assert (last.reindex(cancel_at.index) == cancel_at).all()
    # Everything happens inside the customer's life and the simulated period.
    signup = customers["signup_date"].reindex(events["customer_id"]).to_numpy()
    assert (events["timestamp"].to_numpy() >= signup).all()
    assert events["timestamp"].min() >= pd.Timestamp(data.start)
    assert events["timestamp"].max() < pd.Timestamp(data.end)
    assert (churned > customers["signup_date"].reindex(churned.index)).all()


def test_service_failures_price_and_fading_usage_go_with_churn(data: sim.SimulatedData) -> None:
    counts = _per_customer_counts(data.events)
    churned = data.customers.set_index("customer_id")["churned_at"].notna().reindex(counts.index)

    unresolved = counts["ticket_opened"] > counts["ticket_resolved"]
    assert churned[unresolved].mean() > 1.5 * churned[~unresolved].mean()
    repeated = counts["complaint"] >= 2
    assert churned[repeated].mean() > 1.5 * churned[counts["complaint"] == 0].mean()
    longest_wait = data.events.groupby("customer_id", observed=True)["duration_s"].max().reindex(counts.index)
    assert churned[longest_wait > 1200].mean() > churned[longest_wait < 600].mean()
    # Price: among monthly customers on board at the first campaign, those who got the notice leave more in the
    # next four months. (Comparing all customers with and without a notice would be biased: people who left
    # before a campaign never receive one.)
    customers = data.customers.set_index("customer_id")
    notices = data.events.loc[data.events["event_type"] == "price_increase", ["customer_id", "timestamp"]]
    notice_day = notices["timestamp"].min().normalize()
    noticed = notices.loc[notices["timestamp"] < notice_day + pd.Timedelta(days=1), "customer_id"].astype(str)
    base = customers[
        (customers["contract"] == "monthly")
        & (customers["signup_date"] < notice_day)
        & ~(customers["churned_at"] < notice_day)
    ]
    left = (base["churned_at"] >= notice_day) & (base["churned_at"] < notice_day + pd.Timedelta(days=120))
    hit = base.index.isin(noticed)
    assert 0.3 < hit.mean() < 0.7
    assert left[hit].mean() > 1.2 * left[~hit].mean()

    # Leavers use the service less in the four weeks before they cancel than in the four weeks before that.
    leave = data.customers.set_index("customer_id")["churned_at"].dropna()
    leave = leave[leave >= pd.Timestamp(data.start) + pd.Timedelta(days=90)]
    usage = data.events[data.events["event_type"] == "usage"]
    days_before = (
        leave.reindex(usage["customer_id"].astype(str)).to_numpy() - usage["timestamp"].to_numpy()
    ) / (np.timedelta64(1, "D"))
    recent = ((days_before > 0) & (days_before <= 28)).sum()
    earlier = ((days_before > 28) & (days_before <= 56)).sum()
    assert recent < 0.8 * earlier


def test_texts_are_varied_and_their_tone_follows_the_service(data: sim.SimulatedData) -> None:
    events = data.events
    texts = events["text"].dropna().astype(str)
    assert texts.nunique() > 0.5 * len(texts) > 500
    negative = texts.str.contains(NEGATIVE_WORDS, case=False)
    positive = texts.str.contains(POSITIVE_WORDS, case=False)
    assert (negative & positive).any()  # mixed texts exist
    kinds = events.loc[texts.index, "event_type"].astype(str)
    assert negative[kinds == "complaint"].mean() > 2 * negative[kinds == "ticket_resolved"].mean()
    assert positive[kinds == "ticket_resolved"].mean() > 2 * positive[kinds == "complaint"].mean()
    churned = data.customers.set_index("customer_id")["churned_at"].notna()
    writer_churned = churned.reindex(events.loc[texts.index, "customer_id"].astype(str)).to_numpy()
    assert negative[writer_churned].mean() > negative[~writer_churned].mean()


def test_review_stars_follow_the_tone_of_the_text(data: sim.SimulatedData) -> None:
    reviews = data.reviews
    negative = reviews["text"].str.contains(NEGATIVE_WORDS, case=False)
    positive = reviews["text"].str.contains(POSITIVE_WORDS, case=False)
    assert reviews.loc[negative & ~positive, "stars"].mean() < 2.3
    assert reviews.loc[positive & ~negative, "stars"].mean() > 3.7
    # A bag-of-words model learns the 3-class sentiment well above the majority share, but not perfectly.
    labels = rating_to_sentiment(reviews["stars"]).astype(str).to_numpy()
    train = np.arange(len(reviews)) < int(0.8 * len(reviews))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2)).fit(reviews.loc[train, "text"])
    model = LogisticRegression(max_iter=500).fit(
        vectorizer.transform(reviews.loc[train, "text"]), labels[train]
    )
    accuracy = (model.predict(vectorizer.transform(reviews.loc[~train, "text"])) == labels[~train]).mean()
    majority = pd.Series(labels[~train]).value_counts(normalize=True).iloc[0]
    assert majority + 0.15 < accuracy < 0.99


def test_spec_loads_and_gives_labelled_feature_snapshots(demo_dir: Path) -> None:
    spec = load_spec(demo_dir / sim.SPEC_FILE)
    dates = spec.labels.as_of_dates()
    assert len(dates) == sim.N_SNAPSHOTS
    assert dates[-1] + dt.timedelta(days=spec.labels.horizon_days) <= dt.date.fromisoformat(sim.DEFAULT_END)
    data = load_data(spec, with_text=False)
    assert len(data.rejects) == 0
    labels = label_snapshots(
        data.customers, data.events, dates, spec.labels.horizon_days, spec.events.churn_event
    )
    schema = schema_for(spec, data)
    assert sim.CHURN_EVENT not in schema.event_types
    assert {"ticket_opened", "complaint", "ticket_resolved", "usage"} <= set(schema.event_types)
    assert {"plan", "monthly_price", "contract", "region"} <= set(schema.feature_names())
    frame = training_frame(data, schema)
    assert len(frame) == len(labels)
    rates = frame.groupby(AS_OF)[CHURNED].mean()
    assert len(rates) == len(dates)
    assert ((rates > 0.03) & (rates < 0.3)).all(), rates
    # The engine sees the story: recent complaints are more common before churn.
    assert (
        frame.loc[frame[CHURNED] == 1, "n_complaint_90d"].mean()
        > frame.loc[frame[CHURNED] == 0, "n_complaint_90d"].mean()
    )
    reviews, rejects = load_reviews(spec)
    assert len(rejects) == 0 and set(reviews["label"]) == {"negative", "neutral", "positive"}


def test_a_failed_run_leaves_no_half_written_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "demo"

    def broken(*args: object, **kwargs: object) -> pd.DataFrame:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sim, "simulate_reviews", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        sim.write_demo_data(out, n_customers=50, seed=1)
    assert list(out.iterdir()) == []


def test_snapshot_dates_leave_room_for_history_and_horizon() -> None:
    dates = sim.snapshot_dates("2024-01-01", "2025-01-01", horizon_days=60, count=4)
    assert dates == [dt.date(2024, 8, 1), dt.date(2024, 9, 1), dt.date(2024, 10, 1), dt.date(2024, 11, 1)]
    short = sim.snapshot_dates("2024-01-01", "2024-07-01", horizon_days=60, count=4)
    assert short and all(d >= dt.date(2024, 3, 31) for d in short)
    assert short[-1] + dt.timedelta(days=60) <= dt.date(2024, 7, 1)
