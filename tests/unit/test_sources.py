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
from features.spec import SpecError, load_spec, parse_spec

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


def _spec_file(folder: Path, spec: dict, name: str) -> Path:
    """`spec` written as a YAML file in `folder`."""
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
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
    with pytest.raises(DataLoadError, match=r"'tickets' and 'billing' both give event type\(s\) high"):
        load_spec(_spec_file(tmp_path, spec, "multi.spec.yaml"))
    spec["events"][0]["type_prefix"] = "ticket_"
    spec["events"][1]["type"] = "high"
    with pytest.raises(SpecError, match="sources 'usage' and 'billing' both give type 'high'"):
        load_spec(_spec_file(tmp_path, spec, "multi.spec.yaml"))


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
    with pytest.raises(SpecError, match=r"events\.1: .*exactly one of `type`"):
        load_spec(_spec_file(tmp_path, spec, "bad.yaml"))
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    spec["events"][2]["path"] = "nowhere.csv"
    with pytest.raises(DataLoadError, match="nowhere.csv"):
        load_spec(_spec_file(tmp_path, spec, "bad.yaml"))


def test_an_old_one_table_spec_is_read_as_before(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    spec = load_spec(prejoined_spec(tmp_path, tables))
    assert spec.staged is None and spec.events.path == "joined_events.csv"
    customers = load_customers(spec).frame
    assert customers[CUSTOMER_ID].tolist() == tables["accounts"]["account_id"].tolist()
    assert dt.date.fromisoformat(AS_OF[0]) in spec.labels.as_of_dates()


# --- what an adversarial review found (each failed before its fix) --------------------------------------------


def _small(folder: Path, link_rows: str, **source) -> Path:
    (folder / "accounts.csv").write_text("account_id,plan\nC1,pro\nC7,basic\n")
    (folder / "subs.csv").write_text("sub,note,account_id\n" + link_rows)
    (folder / "usage.csv").write_text(
        "sub,day,minutes\nS1,2024-01-05,10\nS1,2024-01-06,10\nS2,2024-01-07,5\n"
    )
    usage = {
        "name": "usage",
        "path": "usage.csv",
        "id": "sub",
        "time": "day",
        "type": "usage",
        "values": ["minutes"],
    }
    usage["via"] = {"path": "subs.csv", "key": "sub", "customer": "account_id"}
    usage.update(source)
    spec = {"customers": {"path": "accounts.csv", "id": "account_id"}, "events": [usage]}
    (folder / "s.yaml").write_text(yaml.safe_dump({**spec, "labels": {"as_of": ["2024-03-01"]}}))
    return folder / "s.yaml"


def test_a_link_row_with_a_problem_rejects_its_events_instead_of_leading_them_astray(tmp_path: Path) -> None:
    # S1's link row has a field too many (a comma in the note): its customer would read " C7".
    data = load_data(load_spec(_small(tmp_path, "S1,moved from, C7,C1\nS2,fine,\n")))
    assert len(data.events) == 0
    reasons = data.rejects["reason"].tolist()
    assert len(reasons) == 3
    assert all("subs.csv" in r for r in reasons), reasons
    assert (
        sum("row has 4 fields" in r for r in reasons) == 2
    )  # S1's two events, naming the link row's problem
    assert sum("no customer" in r for r in reasons) == 1  # S2's link row has a blank customer


def test_a_staged_table_with_integer_ids_and_a_bad_join_row_is_written(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"account_id": [1, 2], "plan": ["a", "b"]}), tmp_path / "accounts.parquet")
    (tmp_path / "nps.csv").write_text("acct,nps\n1,5\n2,7\n99,1\n")
    (tmp_path / "ev.csv").write_text("acct,at\n1,2024-01-05\n2,2024-01-06\n")
    (tmp_path / "acc").mkdir()
    (tmp_path / "acc" / "1.csv").write_text("account_id,tier\n1,10\n")
    (tmp_path / "acc" / "2.csv").write_text("account_id,tier\n2,gold\n")
    (tmp_path / "churn.csv").write_text("acct,left\n1,2024-02-01\n")
    events = [{"name": "app", "path": "ev.csv", "id": "acct", "time": "at", "type": "login"}]
    join = [{"path": "nps.csv", "id": "acct", "columns": ["nps"]}]
    specs = {
        "a.yaml": {
            "customers": {"path": "accounts.parquet", "id": "account_id", "join": join},
            "events": events,
        },
        "b.yaml": {
            "customers": {"path": "acc/*.csv", "id": "account_id"},
            "churn": {"path": "churn.csv", "id": "acct", "date": "left"},
            "events": events,
        },
    }
    for name, spec in specs.items():
        (tmp_path / name).write_text(yaml.safe_dump(spec))
        data = load_data(load_spec(tmp_path / name))
        assert sorted(data.customers[CUSTOMER_ID]) == ["1", "2"] and len(data.events) == 2
    assert len(load_data(load_spec(tmp_path / "a.yaml")).rejects) == 1  # the nps row of customer 99


def test_a_file_rewritten_with_its_old_size_and_time_is_staged_again(tmp_path: Path) -> None:
    import os

    events = tmp_path / "ev.csv"
    (tmp_path / "accounts.csv").write_text("account_id\nC1\nC2\n")
    source = {"name": "a", "path": "ev.csv", "id": "acct", "time": "at", "type": "x", "values": ["amount"]}
    spec = {"customers": {"path": "accounts.csv", "id": "account_id"}, "events": [source]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    events.write_text("acct,at,amount\nC1,2024-01-05,10\n")
    assert load_events(load_spec(tmp_path / "s.yaml")).frame["amount"].tolist() == [10.0]
    before = events.stat()
    events.write_text("acct,at,amount\nC2,2024-01-05,99\n")  # same size; then the old time, as cp -p does
    os.utime(events, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_events(load_spec(tmp_path / "s.yaml")).frame["amount"].tolist() == [99.0]


@pytest.mark.parametrize("name", ["customer_id", "timestamp", "event_type", "text", "sentiment", "event_id"])
def test_value_columns_named_like_canonical_columns_are_refused(tmp_path: Path, name: str) -> None:
    one_table = {"events": {"path": "e.csv", "id": "a", "time": "t", "type": "k", "values": [name]}}
    several = {
        "events": [{"name": "s", "path": "e.csv", "id": "a", "time": "t", "type": "k", "values": [name]}]
    }
    for raw in (one_table, several):
        with pytest.raises(SpecError, match=f"values: {name!r} is the name churnsense gives"):
            parse_spec(raw, tmp_path)


def test_types_that_differ_only_by_whitespace_overlap(tmp_path: Path) -> None:
    sources = [
        {"name": "a", "path": "e.csv", "id": "a", "time": "t", "type": " ticket"},
        {"name": "b", "path": "e.csv", "id": "a", "time": "t", "type": "ticket "},
    ]
    with pytest.raises(SpecError, match="both give type 'ticket'"):
        parse_spec({"events": sources}, tmp_path)
    make_tables(tmp_path)
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    spec["events"][0]["type_prefix"] = " "  # " high" is "high" once stripped
    spec["events"][2]["type"] = "high"
    with pytest.raises(DataLoadError, match="both give event type"):
        load_spec(_spec_file(tmp_path, spec, "multi.spec.yaml"))


def test_a_fixed_type_that_is_a_column_of_its_source_is_refused(tmp_path: Path) -> None:
    make_tables(tmp_path)
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    spec["events"][2]["type"] = "amount"  # meant as a column of types? that is `type_column`
    with pytest.raises(DataLoadError, match="'billing'.*type 'amount' is also a column.*type_column"):
        load_spec(_spec_file(tmp_path, spec, "multi.spec.yaml"))


def test_rejects_of_staged_tables_name_the_users_files(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    with open(tmp_path / "accounts.csv", "a") as handle:
        handle.write("A-001,pro,3,2023-07-01\n")  # a duplicate id in the customers table itself
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    for source in spec["events"]:
        source["event_id"] = "eid"
    tickets = tables["tickets"].assign(eid=[f"T{i}" for i in range(len(tables["tickets"]))])
    tickets.loc[3, "eid"] = " "
    tickets.to_csv(tmp_path / "tickets.csv", index=False)
    for name in ("usage", "invoices"):
        tables[name].assign(eid=range(len(tables[name]))).to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "multi.spec.yaml").write_text(yaml.safe_dump(spec))
    rejects = load_data(load_spec(tmp_path / "multi.spec.yaml")).rejects
    reasons = rejects["reason"].tolist()
    assert any("accounts.csv, row 60" in r and "duplicate customer id" in r for r in reasons), reasons
    assert any("'tickets'" in r and "row 3, column eid: event id is empty" in r for r in reasons), reasons
    assert not any("sources/" in f and "staged" not in f for f in rejects["file"]), rejects["file"].tolist()


def test_a_customers_file_without_its_id_column_is_an_error_naming_it(tmp_path: Path) -> None:
    make_tables(tmp_path)
    spec = yaml.safe_load(multi_spec(tmp_path).read_text())
    spec["customers"]["id"] = "acct_no"
    with pytest.raises(DataLoadError, match="accounts.csv: customers.id column 'acct_no' not found"):
        load_spec(_spec_file(tmp_path, spec, "multi.spec.yaml"))
    del spec["customers"]["id"], spec["customers"]["join"], spec["churn"]
    with pytest.raises(SpecError, match="several sources need customers.id"):
        load_spec(_spec_file(tmp_path, spec, "multi.spec.yaml"))


def test_a_spec_keeps_its_two_newest_stages(tmp_path: Path) -> None:
    tables = make_tables(tmp_path)
    spec_path = multi_spec(tmp_path)
    made = []
    for extra in range(4):  # the data change four times, as a nightly export does
        tables["invoices"].iloc[: 10 + extra].to_csv(tmp_path / "invoices.csv", index=False)
        made.append(load_spec(spec_path).staged)
    assert len(set(made)) == 4
    left = sorted(p for p in made[-1].parent.iterdir() if p.is_dir())
    assert left == sorted(made[-2:])
    assert len(load_events(load_spec(spec_path)).frame) > 0  # the newest still reads
