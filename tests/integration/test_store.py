"""The event store against SQLite and a real PostgreSQL server: ingest, by-id history, extracts, migrations."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from features.engine import build_customer_features, infer_schema, to_timestamp_ns
from features.pipeline import add_sentiment, load_data
from features.spec import load_spec
from store.ingest import ingest_spec, store_layout
from store.read import extract, history
from store.schema import SCHEMA_VERSION, StoreError, open_store, schema_version

pytestmark = pytest.mark.slow  # each store test starts from files; PostgreSQL is a real server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulator data with the events in two files (an older and a newer part) and a spec for each stage."""
    from features.simulate import write_demo_data

    folder = tmp_path_factory.mktemp("store_data")
    write_demo_data(folder, n_customers=600, seed=21)
    frame = pd.read_parquet(folder / "events.parquet").sort_values("timestamp", kind="stable")
    (folder / "events").mkdir()
    half = len(frame) * 2 // 3
    frame.iloc[:half].to_parquet(folder / "events" / "part-1.parquet", index=False)
    frame.iloc[half:].to_parquet(folder / "events" / "part-2.parquet", index=False)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec.pop("reviews", None)
    for name, path in (("first.yaml", "events/part-1.parquet"), ("all.yaml", "events/*.parquet")):
        spec["events"]["path"] = path
        (folder / name).write_text(yaml.safe_dump(spec))
    return folder


def polarity(texts) -> np.ndarray:  # noqa: ANN001
    """A deterministic stand-in for the sentiment model: the store's job is the texts, not their scores."""
    return np.array([((len(t) * 7919) % 201 - 100) / 100.0 for t in texts], dtype="float64")


def test_ingest_is_idempotent_incremental_and_counts_every_row(
    data_dir: Path, store_url: str, tmp_path: Path
):
    first = ingest_spec(data_dir / "first.yaml", store_url, rejects_path=tmp_path / "r1.parquet")
    assert first.customers_new == first.customer_rows == 600 and first.rejected == 0
    assert first.events_new == first.event_rows > 0
    again = ingest_spec(data_dir / "first.yaml", store_url, rejects_path=tmp_path / "r2.parquet")
    assert (
        again.customers_new == 0 and again.events_new == 0 and again.events_already_stored == first.event_rows
    )
    both = ingest_spec(data_dir / "all.yaml", store_url, rejects_path=tmp_path / "r3.parquet")
    n_all = len(pd.read_parquet(data_dir / "events.parquet"))
    assert both.event_rows == n_all and both.events_new == n_all - first.event_rows
    engine = open_store(store_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from events")).scalar_one() == n_all
        assert schema_version(connection) == SCHEMA_VERSION
    assert "rows/s" in both.render()


@pytest.mark.parametrize("lifetime", [False, True], ids=["windows", "lifetime"])
def test_by_id_history_gives_the_features_of_the_whole_history(
    data_dir: Path, store_url: str, tmp_path: Path, lifetime: bool
):
    """Window features: only the lookback window plus anchors are read, yet every feature equals the whole
    history's, bit for bit. Lifetime features (all-time counts and sums, gaps): the service's lookback reads
    the whole history, and they equal it too."""
    from features.evidence import EvidenceFinder
    from serving.event_store import lookback_days

    ingest_spec(data_dir / "all.yaml", store_url, rejects_path=tmp_path / "r.parquet")
    spec = load_spec(data_dir / "all.yaml")
    data = load_data(spec, sentiment_scorer=polarity)
    schema = infer_schema(
        data.customers, data.events, value_columns=tuple(spec.events.values), lifetime=lifetime
    )
    assert (
        schema.use_sentiment
        and schema.value_columns
        and schema.profile_numeric
        and schema.profile_categorical
    )
    engine = open_store(store_url)
    layout = store_layout(engine)
    ids = sorted(data.customers["customer_id"].astype(str))
    lookback = lookback_days(schema)
    assert (lookback is None) == lifetime
    for as_of in (dt.date(2024, 6, 15), dt.date(2024, 10, 1), dt.date(2025, 1, 1)):
        whole = build_customer_features(data.events, as_of, schema, customers=data.customers).loc[ids]
        with engine.connect() as connection:
            found = history(connection, layout, ids, to_timestamp_ns(as_of), lookback)
        assert found.missing == []
        before = (data.events["timestamp"] < pd.Timestamp(as_of)).sum()
        assert len(found.events) == before if lifetime else len(found.events) < before
        events = add_sentiment(found.events, polarity)
        mine = build_customer_features(events, as_of, schema, customers=found.customers).loc[ids]
        pd.testing.assert_frame_equal(mine, whole, check_exact=True)
        # The events behind every feature too (anchors stand in for older events: recencies name time and type).
        finder = EvidenceFinder(schema)
        reasons = {c: [{"feature": n} for n in schema.event_feature_names()] for c in ids[:60]}
        from_store = finder.find(events, as_of, reasons)
        assert from_store == finder.find(add_sentiment(data.events, polarity), as_of, reasons)
        assert sum(item["total"] for rows in from_store.values() for item in rows if item) > 0


def test_unknown_and_hostile_ids_are_just_unknown(data_dir: Path, store_url: str, tmp_path: Path):
    ingest_spec(data_dir / "first.yaml", store_url, rejects_path=tmp_path / "r.parquet")
    engine = open_store(store_url)
    hostile = ["x' OR 1=1 --", "nobody", "C0000001'; DROP TABLE events; --"]
    with engine.connect() as connection:
        found = history(connection, store_layout(engine), hostile, to_timestamp_ns("2024-10-01"), 180)
        assert found.missing == hostile and len(found.customers) == 0 and len(found.events) == 0
        assert connection.execute(sa.text("select count(*) from events")).scalar_one() > 0


def test_bad_rows_go_to_the_rejects_file_and_the_store_keeps_the_rest(
    data_dir: Path, store_url: str, tmp_path: Path
):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "customers.csv").write_text(
        "customer_id,signup_date,plan\nA,2024-01-01,basic\nB,2024-02-01,pro,extra\n,2024-03-01,basic\n"
    )
    (folder / "events.csv").write_text(
        "customer_id,timestamp,event_type,amount\nA,2024-03-01,call,3\nA,not a date,call,1\nZ,2024-03-02,call,2\n"
        "A,2024-03-03,call,abc\nA,2024-03-04,call,4\n"
    )
    (folder / "spec.yaml").write_text(
        "customers: {path: customers.csv, id: customer_id, signup_date: signup_date}\n"
        "events: {path: events.csv, id: customer_id, time: timestamp, type: event_type, values: [amount]}\n"
    )
    summary = ingest_spec(folder / "spec.yaml", store_url, rejects_path=tmp_path / "rejects.parquet")
    rejects = pd.read_parquet(tmp_path / "rejects.parquet")
    assert summary.rejected == len(rejects) == 5
    assert sorted(rejects["reason"].str.split(":").str[0]) == sorted(
        [
            "row has 4 fields, the header has 3",
            "customer id is empty",
            "timestamp is missing, not a date, or outside 1678-2261",
            "customer id not in the customers table (or its customer row was rejected)",
            "amount is not a number",
        ]
    )
    assert summary.customers_new == 1 and summary.events_new == 2


def test_another_layout_is_refused_by_name(data_dir: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ingest_spec(data_dir / "first.yaml", url, rejects_path=tmp_path / "r.parquet")
    spec = yaml.safe_load((data_dir / "first.yaml").read_text())
    spec["events"]["values"] = ["amount"]
    (data_dir / "fewer.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(StoreError, match="value_columns"):
        ingest_spec(data_dir / "fewer.yaml", url, rejects_path=tmp_path / "r.parquet")


def _open(url: str) -> int:
    from store.schema import open_store

    with open_store(url).connect() as connection:
        return schema_version(connection)


def test_two_processes_creating_one_new_store_both_succeed(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'new' / 'store.db'}"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_open, [url, url]) == [SCHEMA_VERSION, SCHEMA_VERSION]


def test_an_extract_is_a_data_set_with_the_same_customers_and_events(
    data_dir: Path, store_url: str, tmp_path: Path
):
    ingest_spec(data_dir / "all.yaml", store_url, rejects_path=tmp_path / "r.parquet")
    engine = open_store(store_url)
    spec_path = extract(engine, store_layout(engine), tmp_path / "extract")
    mine = load_data(load_spec(spec_path))
    theirs = load_data(load_spec(data_dir / "all.yaml"))
    a = mine.events.astype({"customer_id": str, "event_type": str}).reset_index(drop=True)
    b = theirs.events.astype({"customer_id": str, "event_type": str}).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[b.columns], b, check_exact=True, check_dtype=False)
    assert sorted(mine.customers["customer_id"]) == sorted(theirs.customers["customer_id"])


def test_appended_events_are_stored_once_and_refused_for_unknown_customers(
    data_dir: Path, store_url: str, tmp_path: Path
):
    from store.append import NewEvent, append_events

    ingest_spec(data_dir / "first.yaml", store_url, rejects_path=tmp_path / "r.parquet")
    writer = open_store(store_url, writer=True)
    layout = store_layout(writer)
    customer = "C0000003"
    now = to_timestamp_ns("2025-01-10T09:30:00")
    ticket = NewEvent(customer, now, "support_ticket", text="  still  broken ", values={"amount": 2.5})
    assert append_events(writer, layout, [ticket]).stored == 1
    again = append_events(writer, layout, [ticket])
    assert (again.stored, again.duplicates) == (0, 1)  # same content, same key: stored once
    named = NewEvent(customer, now, "support_ticket", event_id="T-77")
    assert append_events(writer, layout, [named, named]).stored == 1
    refused = append_events(
        writer, layout, [NewEvent("nobody", now, "call"), NewEvent(customer, now + 1, "call")]
    )
    assert refused.unknown_customers == ["nobody"] and refused.stored == 0
    with writer.connect() as connection:
        found = history(connection, layout, [customer], now + 1, 90)
    mine = found.events[found.events["timestamp"] == pd.Timestamp(now, unit="ns")]
    assert len(mine) == 2 and "still broken" in mine["text"].tolist()  # normalised, and no third copy
