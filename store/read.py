"""Read customers and their events back from the store as the loaders return them (`features.io`).

`history(engine, ids, as_of, lookback_days)` is what a by-id request needs: only the events of the feature
lookback window (all events when `lookback_days` is None: lifetime features), plus a few "anchor" rows that carry the facts older events contribute (the oldest event, the
newest event of each type, the newest text): their times and types are exact, and they fall outside every
window, so the feature engine computes exactly what it would from the whole history. `extract` writes the whole
store as Parquet files and a spec, which both batch engines read like any other data set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection, Engine

from features.columns import (
    CHURN_DATE,
    CHURNED,
    CUSTOMER_ID,
    EVENT_TYPE,
    SENTIMENT,
    SIGNUP_DATE,
    TEXT,
    TIMESTAMP,
)
from store.ingest import Layout
from store.schema import customers, events

DAY_NS = 86_400 * 1_000_000_000
ID_CHUNK = 500  # ids per IN (...) list


class History(NamedTuple):
    customers: pd.DataFrame
    events: pd.DataFrame
    missing: list[str]


def _datetimes(values: list[int | None]) -> np.ndarray:
    return np.array([np.iinfo(np.int64).min if v is None else v for v in values], dtype=np.int64).view(
        "datetime64[ns]"
    )


def customers_frame(rows: Sequence[Any], layout: Layout) -> pd.DataFrame:
    """Canonical customers from store rows (customer_id, signup_ns, churn_ns, churned, profile)."""
    frame = pd.DataFrame(
        {
            CUSTOMER_ID: pd.array([r.customer_id for r in rows], dtype="string"),
            SIGNUP_DATE: _datetimes([r.signup_ns for r in rows]),
            CHURN_DATE: _datetimes([r.churn_ns for r in rows]),
        }
    )
    if rows and rows[0].churned is not None:
        frame[CHURNED] = np.array([r.churned for r in rows], dtype="int8")
    profiles = [json.loads(r.profile) for r in rows]
    for column in layout.profile_columns:
        values = [p.get(column) for p in profiles]
        numbers = all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values)
        if numbers and any(v is not None for v in values):
            frame[column] = np.array([np.nan if v is None else float(v) for v in values], dtype="float64")
        else:
            frame[column] = pd.array([None if v is None else str(v) for v in values], dtype="string")
    return frame


def events_frame(rows: Sequence[Any], layout: Layout, ordered: bool = False) -> pd.DataFrame:
    """Canonical events from store rows, by customer, time and arrival (the order ties are broken in) unless
    `ordered` says the rows already come in the order wanted."""
    if not ordered:
        rows = sorted(rows, key=lambda r: (r.customer_id, r.ts_ns, r.seq))
    numbers = [json.loads(r.numbers) if r.numbers else {} for r in rows]
    columns: dict[str, Any] = {
        CUSTOMER_ID: pd.Categorical([r.customer_id for r in rows]),
        TIMESTAMP: np.array([r.ts_ns for r in rows], dtype=np.int64).view("datetime64[ns]"),
        EVENT_TYPE: pd.Categorical([r.event_type for r in rows]),
    }
    for name in layout.value_columns:
        columns[name] = np.array(
            [np.nan if n.get(name) is None else n[name] for n in numbers], dtype="float64"
        )
    if layout.has_text:
        columns[TEXT] = pd.array([r.text for r in rows], dtype="string")
    if layout.has_sentiment:
        columns[SENTIMENT] = np.array(
            [np.nan if r.sentiment is None else r.sentiment for r in rows], dtype="float64"
        )
    return pd.DataFrame(columns)


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    ids = list(dict.fromkeys(ids))
    return [ids[i : i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]


class HistoryRows(NamedTuple):
    """Store rows: customers, their events (window + anchors, by customer, time and arrival), unknown ids."""

    customers: list[Any]
    events: list[Any]
    missing: list[str]


def history_rows(
    connection: Connection, layout: Layout, ids: Sequence[str], as_of_ns: int, lookback_days: int | None
) -> HistoryRows:
    """What `history` reads, as plain rows (no frames: the service builds its requests from these directly).

    Two round trips per 500 ids: the customers, then one UNION ALL of the window's events and the anchors.
    """
    # No lookback: the window is the whole history (and no older event is left to anchor).
    start = int(np.iinfo(np.int64).min) if lookback_days is None else as_of_ns - lookback_days * DAY_NS
    found, rows = [], []
    for chunk in _chunks(ids):
        found += connection.execute(sa.select(customers).where(customers.c.customer_id.in_(chunk))).all()
        rows += connection.execute(_events_query(layout, chunk, start, as_of_ns)).all()
    present = {r.customer_id for r in found}
    missing = [i for i in dict.fromkeys(ids) if i not in present]
    unique = list(
        {(r.customer_id, r.ts_ns, r.event_type, r.seq): r for r in rows}.values()
    )  # min == max anchors
    return HistoryRows(found, sorted(unique, key=lambda r: (r.customer_id, r.ts_ns, r.seq)), missing)


ANCHOR_SEQ = -1
"""`seq` of anchor rows: no text, no values; only their time and type count (they are outside every window)."""


def _events_query(layout: Layout, ids: list[str], start: int, as_of_ns: int) -> sa.CompoundSelect:
    e = events.c
    columns = (e.customer_id, e.ts_ns, e.event_type, e.seq, e.text, e.sentiment, e.numbers)
    window = sa.select(*columns).where(e.customer_id.in_(ids), e.ts_ns >= start, e.ts_ns < as_of_ns)

    def anchor(time: Any) -> sa.Select:
        """Per customer and type, one older event's time: the oldest, or the newest before the window."""
        return (
            sa.select(
                e.customer_id,
                time.label("ts_ns"),
                e.event_type,
                sa.literal(ANCHOR_SEQ, sa.BigInteger).label("seq"),
                sa.null().label("text"),
                sa.null().label("sentiment"),
                sa.null().label("numbers"),
            )
            .where(e.customer_id.in_(ids), e.ts_ns < start)
            .group_by(e.customer_id, e.event_type)
        )

    parts = [window, anchor(sa.func.min(e.ts_ns)), anchor(sa.func.max(e.ts_ns))]
    if layout.has_text or layout.has_sentiment:
        # Per customer, the newest event before the window with a text (or a score): `sentiment_last`.
        has = e.text.is_not(None) if layout.has_text else e.sentiment.is_not(None)
        ranked = (
            sa.select(
                *columns,
                sa.func.row_number()
                .over(partition_by=e.customer_id, order_by=(e.ts_ns.desc(), e.seq.asc()))
                .label("rank"),
            )
            .where(e.customer_id.in_(ids), e.ts_ns < start, has)
            .subquery()
        )
        r = ranked.c
        parts.append(
            sa.select(
                r.customer_id, r.ts_ns, r.event_type, r.seq, r.text, r.sentiment, sa.null().label("numbers")
            ).where(r.rank == 1)
        )
    return sa.union_all(*parts)


def history(
    connection: Connection, layout: Layout, ids: Sequence[str], as_of_ns: int, lookback_days: int | None
) -> History:
    """Customers `ids` and their events before `as_of_ns`: the lookback window in full, older ones as anchors."""
    rows = history_rows(connection, layout, ids, as_of_ns, lookback_days)
    return History(
        customers_frame(rows.customers, layout), events_frame(rows.events, layout, ordered=True), rows.missing
    )


def extract(engine: Engine, layout: Layout, folder: str | Path, chunk_rows: int = 500_000) -> Path:
    """The whole store as `customers.parquet`, `events.parquet` and `spec.yaml` in `folder`: a data set both
    batch engines read like any other (the same loaders, the same features). Returns the spec's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(customers).order_by(customers.c.customer_id)).all()
        frame = customers_frame(rows, layout)
        frame.to_parquet(folder / "customers.parquet", index=False)
        writer = None
        result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(
            sa.select(events).order_by(events.c.seq)
        )
        for part in result.partitions():
            table = pa.Table.from_pandas(
                _plain(events_frame(part, layout, ordered=True)), preserve_index=False
            )
            writer = writer or pq.ParquetWriter(folder / "events.parquet", table.schema)
            writer.write_table(table)
        if writer is None:
            _plain(events_frame([], layout)).to_parquet(folder / "events.parquet", index=False)
        else:
            writer.close()
    spec: dict[str, Any] = {
        "customers": {
            "path": "customers.parquet",
            "id": CUSTOMER_ID,
            "signup_date": SIGNUP_DATE,
            "churn_date": CHURN_DATE,
            **({"label": CHURNED} if CHURNED in frame.columns else {}),
        },
        "events": {
            "path": "events.parquet",
            "id": CUSTOMER_ID,
            "time": TIMESTAMP,
            "type": EVENT_TYPE,
            "values": list(layout.value_columns),
        },
    }
    if layout.has_text:
        spec["events"]["text"] = TEXT
    if layout.has_sentiment:
        spec["events"]["sentiment"] = SENTIMENT
    if layout.churn_event:
        spec["events"]["churn_event"] = layout.churn_event
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids and types as plain strings (one schema for every part): a file like the user's own."""
    return frame.astype({CUSTOMER_ID: "string", EVENT_TYPE: "string"})
