"""Several event sources in one spec (features.sources): the features are those of the same events given as one
pre-joined table, bit for bit; a future event in any source moves nothing; every unusable row is a reject that
names its source, file and column; overlaps and ambiguous links are errors, never guesses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.columns import CUSTOMER_ID
from features.io import load_customers, load_events
from features.pipeline import load_data, schema_for, training_frame
from features.raw import DataLoadError
from features.spec import SpecError, load_spec

AS_OF = ["2024-03-01", "2024-04-15", "2024-06-01"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNSENSE_CACHE_DIR", str(tmp_path / "cache"))


def _write(folder: Path, name: str, frame: pd.DataFrame) -> str:
    frame.to_csv(folder / name, index=False)
    return name


def make_tables(folder: Path, n: int = 60, seed: int = 7) -> dict[str, pd.DataFrame]:
    """Accounts, a second profile table, churn dates (some twice), tickets with a priority column, usage keyed by
    subscription and invoices with a fixed type: the shape of a SaaS company's exports."""
    rng = np.random.default_rng(seed)
    ids = [f"A-{i:03d}" for i in range(n)]
    start = pd.Timestamp("2023-06-01")
    accounts = pd.DataFrame(
        {
            "account_id": ids,
            "plan": rng.choice(["basic", "pro", "enterprise"], n),
            "seats": rng.integers(1, 50, n),
            "signup": (start + pd.to_timedelta(rng.integers(0, 200, n), "D")).strftime("%Y-%m-%d"),
        }
    )
    extra = pd.DataFrame({"account": ids[::2], "nps": rng.integers(0, 11, n // 2), "region": "eu"})
    churners = rng.choice(n, n // 3, replace=False)
    churn = pd.DataFrame(
        {
            "acct": [ids[i] for i in churners] + [ids[churners[0]]],
            "left_on": [
                (pd.Timestamp("2023-09-01") + pd.Timedelta(days=int(d))).strftime("%Y-%m-%d")
                for d in rng.integers(0, 300, len(churners) + 1)
            ],
        }
    )
    subscriptions = pd.DataFrame({"sub": [f"S-{i:03d}" for i in range(2 * n)], "owner": ids + ids})

    def times(k: int) -> list[str]:
        offsets = rng.integers(0, 400 * 24 * 60, k)
        return (start + pd.to_timedelta(offsets, "min")).strftime("%Y-%m-%d %H:%M:%S").tolist()

    k = 7 * n
    tickets = pd.DataFrame(
        {
            "account_id": rng.choice(ids, k),
            "opened": times(k),
            "priority": rng.choice(["low", "high", "urgent"], k),
            "hours": np.round(rng.gamma(2.0, 5.0, k), 2),
        }
    )
    usage = pd.DataFrame(
        {
            "subscription": rng.choice(subscriptions["sub"], 3 * k),
            "day": times(3 * k),
            "count": rng.integers(0, 30, 3 * k),
        }
    )
    invoices = pd.DataFrame(
        {"customer": rng.choice(ids, k), "at": times(k), "amount": np.round(rng.gamma(3, 40, k), 2)}
    )
    tables = {
        "accounts": accounts,
        "extra": extra,
        "churn": churn,
        "subscriptions": subscriptions,
        "tickets": tickets,
        "usage": usage,
        "invoices": invoices,
    }
    for name, frame in tables.items():
        _write(folder, f"{name}.csv", frame)
    return tables


def multi_spec(folder: Path, as_of: list[str] = AS_OF, **changes) -> Path:
    spec = {
        "customers": {
            "path": "accounts.csv",
            "id": "account_id",
            "signup_date": "signup",
            "join": [{"path": "extra.csv", "id": "account", "columns": ["nps", "region"]}],
        },
        "churn": {"path": "churn.csv", "id": "acct", "date": "left_on"},
        "events": [
            {
                "name": "tickets",
                "path": "tickets.csv",
                "id": "account_id",
                "time": "opened",
                "type_column": "priority",
                "type_prefix": "ticket_",
                "values": ["hours"],
            },
            {
                "name": "usage",
                "path": "usage.csv",
                "id": "subscription",
                "via": {"path": "subscriptions.csv", "key": "sub", "customer": "owner"},
                "time": "day",
                "type": "usage",
                "values": ["count"],
            },
            {
                "name": "billing",
                "path": "invoices.csv",
                "id": "customer",
                "time": "at",
                "type": "invoice",
                "values": ["amount"],
            },
        ],
        "labels": {"as_of": as_of, "horizon_days": 60},
    }
    spec.update(changes)
    path = folder / "multi.spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def prejoined_spec(folder: Path, tables: dict[str, pd.DataFrame], as_of: list[str] = AS_OF) -> Path:
    """The same data joined by hand, as a user would without churnsense: one customers and one events table."""
    customers = tables["accounts"].merge(
        tables["extra"].rename(columns={"account": "account_id"}), on="account_id", how="left"
    )
    first_churn = (
        tables["churn"]
        .assign(left_on=pd.to_datetime(tables["churn"]["left_on"]))
        .groupby("acct")["left_on"]
        .min()
    )
    customers["left_on"] = customers["account_id"].map(first_churn).dt.strftime("%Y-%m-%d")
    owner = tables["subscriptions"].set_index("sub")["owner"]
    parts = [
        pd.DataFrame(
            {
                "cid": tables["tickets"]["account_id"],
                "when": tables["tickets"]["opened"],
                "kind": "ticket_" + tables["tickets"]["priority"],
                "hours": tables["tickets"]["hours"],
            }
        ),
        pd.DataFrame(
            {
                "cid": tables["usage"]["subscription"].map(owner),
                "when": tables["usage"]["day"],
                "kind": "usage",
                "count": tables["usage"]["count"],
            }
        ),
        pd.DataFrame(
            {
                "cid": tables["invoices"]["customer"],
                "when": tables["invoices"]["at"],
                "kind": "invoice",
                "amount": tables["invoices"]["amount"],
            }
        ),
    ]
    _write(folder, "joined_customers.csv", customers)
    _write(folder, "joined_events.csv", pd.concat(parts, ignore_index=True))
    spec = {
        "customers": {
            "path": "joined_customers.csv",
            "id": "account_id",
            "signup_date": "signup",
            "churn_date": "left_on",
        },
        "events": {
            "path": "joined_events.csv",
            "id": "cid",
            "time": "when",
            "type": "kind",
            "values": ["hours", "count", "amount"],
        },
        "labels": {"as_of": as_of, "horizon_days": 60},
    }
    path = folder / "joined.spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _frame(spec_path: Path) -> pd.DataFrame:
    spec = load_spec(spec_path)
    data = load_data(spec)
    assert len(data.rejects) == 0, data.rejects
    return training_frame(data, schema_for(spec, data))


def test_features_equal_those_of_one_prejoined_table(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    multi = _frame(multi_spec(tmp_path))
    joined = _frame(prejoined_spec(tmp_path, tables))
    pd.testing.assert_frame_equal(multi, joined, check_exact=True)
    # Not trivially equal: every source, the link, the join and the churn table reach the features.
    for column in ("n_ticket_urgent_90d", "n_usage_90d", "sum_amount_90d", "nps", "sum_count_all"):
        assert multi[column].nunique() > 2, column
    assert 0 < multi["churned"].sum() < len(multi)


@pytest.mark.parametrize("source", ["tickets", "usage", "invoices"])
def test_a_future_event_in_any_source_moves_nothing(tmp_path: Path, source: str) -> None:
    tables = make_tables(tmp_path)
    spec_path = multi_spec(tmp_path)
    before = _frame(spec_path)
    future = tables[source].iloc[[0] * 3].copy()
    time_column = {"tickets": "opened", "usage": "day", "invoices": "at"}[source]
    future[time_column] = [
        "2024-06-01 00:00:00",
        "2024-06-02 10:00:00",
        "2025-01-01 00:00:00",
    ]  # at/after as_of
    future = future.assign(**{c: future[c] for c in future.columns})
    _write(tmp_path, f"{source}.csv", pd.concat([tables[source], future], ignore_index=True))
    after = _frame(spec_path)
    last = pd.Timestamp(AS_OF[-1])
    pd.testing.assert_frame_equal(
        before[before["as_of"] == last].drop(columns="churned"),
        after[after["as_of"] == last].drop(columns="churned"),
        check_exact=True,
    )
    # ...and the stage did see the new rows (it is keyed by the files, not reused stale).
    assert (
        len(load_events(load_spec(spec_path)).frame)
        == sum(len(tables[t]) for t in ("tickets", "usage", "invoices")) + 3
    )


def test_every_unusable_row_is_a_reject_naming_source_file_and_column(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    with open(tmp_path / "tickets.csv", "a") as handle:
        handle.write("A-001,2024-01-05 10:00:00,high,3.5,extra-field\n")  # shifted: one field too many
        handle.write("A-999,2024-01-06 10:00:00,high,1.0\n")  # no such customer
        handle.write("A-002,not a time,low,2.0\n")
        handle.write("A-003,2024-01-07 10:00:00,,2.0\n")  # no type
    with open(tmp_path / "usage.csv", "a") as handle:
        handle.write("S-X404,2024-01-05,3\n")  # a subscription the link table does not know
        handle.write("S-001,2024-01-05,three\n")  # not a number
        handle.write(",2024-01-05,3\n")  # no id
    with open(tmp_path / "churn.csv", "a") as handle:
        handle.write("A-777,2024-02-01\n")
        handle.write("A-004,someday\n")
    with open(tmp_path / "extra.csv", "a") as handle:
        handle.write("A-000,5,us\n")  # A-000 is already there: first kept
    spec = load_spec(multi_spec(tmp_path))
    data = load_data(spec)
    reasons = data.rejects["reason"].tolist()

    def one(*parts: str) -> str:
        found = [r for r in reasons if all(p in r for p in parts)]
        assert len(found) == 1, (parts, reasons)
        return found[0]

    assert "tickets.csv" in one("'tickets'", "row has 5 fields, the header has 4")
    one("'tickets'", "column account_id", "matches no customer")
    one("'tickets'", "column opened", "not a date")
    one("'tickets'", "column priority", "event type is empty")
    assert "usage.csv" in one("'usage'", "column subscription", "not in the link table")
    one("'usage'", "column count", "count is not a number")
    one("'usage'", "column subscription", "id is empty")
    assert "churn.csv" in one("churn", "column acct", "matches no customer")
    one("churn", "column left_on", "not a date")
    assert "extra.csv, row 30, column account" in one("customers.join", "given twice")
    assert len(reasons) == 10
    # Nothing lost: every input row is used or rejected.
    events_in = sum(len(tables[t]) for t in ("tickets", "usage", "invoices")) + 7
    assert len(data.events) + (data.rejects["table"] == "events").sum() == events_in
    assert len(data.customers) == len(tables["accounts"])


def test_overlapping_types_between_sources_are_refused(tmp_path: Path) -> None:
    make_tables(tmp_path)
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    spec["events"][0]["type_prefix"] = ""
    spec["events"][2]["type"] = "high"  # the tickets' priority column also gives "high"
    (tmp_path / "multi.spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DataLoadError, match=r"'tickets' and 'billing' both give event type\(s\) high"):
        load_spec(tmp_path / "multi.spec.yaml")
    spec["events"][0]["type_prefix"] = "ticket_"
    spec["events"][1]["type"] = "high"
    (tmp_path / "multi.spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="sources 'usage' and 'billing' both give type 'high'"):
        load_spec(tmp_path / "multi.spec.yaml")


def test_a_link_key_leading_to_two_customers_is_an_error(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    links = pd.concat([tables["subscriptions"], pd.DataFrame({"sub": ["S-000"], "owner": ["A-005"]})])
    _write(tmp_path, "subscriptions.csv", links)
    with pytest.raises(DataLoadError, match=r"'usage'.*leads sub 'S-000' to more than one owner"):
        load_spec(multi_spec(tmp_path))


def test_spec_shape_errors_name_the_source(tmp_path: Path) -> None:
    make_tables(tmp_path)
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    del spec["events"][1]["type"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"events\.1: .*exactly one of `type`"):
        load_spec(tmp_path / "bad.yaml")
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    spec["events"][2]["path"] = "nowhere.csv"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DataLoadError, match="nowhere.csv"):
        load_spec(tmp_path / "bad.yaml")


def test_an_old_one_table_spec_is_read_as_before(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    spec = load_spec(prejoined_spec(tmp_path, tables))
    assert spec.staged is None and spec.events.path == "joined_events.csv"
    customers = load_customers(spec).frame
    assert customers[CUSTOMER_ID].tolist() == tables["accounts"]["account_id"].tolist()
    assert dt.date.fromisoformat(AS_OF[0]) in spec.labels.as_of_dates()
