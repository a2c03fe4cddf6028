"""Load a spec's customers and events into the store: idempotent, incremental, with rejects and progress.

    summary = ingest_spec("data/spec.yaml", "sqlite:///store.db")

- Rows are read by the same loaders as training and batch scoring (`features.io`): a row they reject (no id,
  a bad date, a shifted CSV row, an event of a customer neither in the file nor in the store) goes to the
  rejects file with its reason, and nothing else is lost.
- Customers are upserted (a newer file's profile or churn date wins). Events are keyed by the data's event id
  column (`events.event_id` in the spec) or, without one, by a hash of customer, time, type, text and values
  plus the row's occurrence among identical rows of the file: re-ingesting a file adds nothing, a new file
  appends.
- Texts are stored normalised (`features.text`), blank ones as missing, as every scoring path reads them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from tqdm import tqdm

from churnsense.files import atomic_write_parquet
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
from features.io import empty_rejects, load_customers, load_events, read_table
from features.spec import DatasetSpec, load_spec
from features.text import normalise_texts
from store.schema import (
    StoreError,
    customers,
    events,
    get_meta,
    open_store,
    placeholders,
    safe_url,
    set_meta,
    write_lock,
)

logger = logging.getLogger(__name__)

INSERT_ROWS = 20_000
"""Rows per INSERT statement batch: large enough to amortise round trips, small enough for steady progress."""

CANONICAL_CUSTOMER_COLUMNS = (CUSTOMER_ID, SIGNUP_DATE, CHURN_DATE, CHURNED)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the store's rows hold: fixed by the first ingest, checked by every later one."""

    profile_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    has_text: bool
    has_sentiment: bool
    churn_event: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Layout:
        return cls(
            profile_columns=tuple(raw["profile_columns"]),
            value_columns=tuple(raw["value_columns"]),
            has_text=bool(raw["has_text"]),
            has_sentiment=bool(raw["has_sentiment"]),
            churn_event=raw.get("churn_event"),
        )


@dataclasses.dataclass
class IngestSummary:
    store: str
    customer_rows: int = 0
    customers_new: int = 0
    event_rows: int = 0
    events_new: int = 0
    events_already_stored: int = 0
    rejected: int = 0
    rejects_path: Path | None = None
    seconds: float = 0.0

    def render(self) -> str:
        rate = (self.customer_rows + self.event_rows) / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"ingested into {self.store} in {self.seconds:.1f}s ({rate:,.0f} rows/s)",
            f"  customers: {self.customer_rows:,} rows read, {self.customers_new:,} new"
            f" ({self.customer_rows - self.customers_new:,} updated or unchanged)",
            f"  events:    {self.event_rows:,} rows read, {self.events_new:,} new, "
            f"{self.events_already_stored:,} already stored",
            f"  rejected input rows: {self.rejected:,}"
            + (f" -> {self.rejects_path}" if self.rejected else ""),
        ]
        return "\n".join(lines)


def layout_of(spec: DatasetSpec, customer_frame: pd.DataFrame | None) -> Layout:
    es = spec.events
    profile = (
        tuple(c for c in customer_frame.columns if c not in CANONICAL_CUSTOMER_COLUMNS)
        if customer_frame is not None
        else ()
    )
    return Layout(
        profile_columns=profile,
        value_columns=tuple(es.values) if es else (),
        has_text=bool(es and es.text),
        has_sentiment=bool(es and es.sentiment),
        churn_event=es.churn_event if es else None,
    )


def check_layout(connection: Connection, layout: Layout, url: str) -> Layout:
    """The store's layout; set on first ingest, and a different one later is an error naming the difference."""
    stored = get_meta(connection, "layout")
    if stored is None:
        set_meta(connection, "layout", layout.to_json())
        return layout
    known = Layout.from_json(stored)
    if known != layout:
        changed = [
            f"{name}: store has {getattr(known, name)!r}, this spec gives {getattr(layout, name)!r}"
            for name in Layout.__dataclass_fields__
            if getattr(known, name) != getattr(layout, name)
        ]
        raise StoreError(f"store {url} holds data of another layout: {'; '.join(changed)}")
    return known


def store_layout(engine: Engine) -> Layout | None:
    with engine.connect() as connection:
        raw = get_meta(connection, "layout")
    return Layout.from_json(raw) if raw is not None else None


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _ns(values: pd.Series) -> list[int | None]:
    stamps = values.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    missing = values.isna().to_numpy()
    return [None if gone else int(v) for v, gone in zip(stamps, missing, strict=True)]


def customer_rows(frame: pd.DataFrame, layout: Layout) -> list[dict[str, Any]]:
    """Store rows of canonical customers (`features.io.load_customers`)."""
    n = len(frame)
    signup = _ns(frame[SIGNUP_DATE]) if SIGNUP_DATE in frame.columns else [None] * n
    churn = _ns(frame[CHURN_DATE]) if CHURN_DATE in frame.columns else [None] * n
    churned = frame[CHURNED].astype("int64").tolist() if CHURNED in frame.columns else [None] * n
    profiles = [frame[c].tolist() for c in layout.profile_columns]
    ids = frame[CUSTOMER_ID].astype(str).tolist()
    return [
        {
            "customer_id": ids[i],
            "signup_ns": signup[i],
            "churn_ns": churn[i],
            "churned": churned[i],
            "profile": json.dumps(
                {
                    c: _json_value(values[i])
                    for c, values in zip(layout.profile_columns, profiles, strict=True)
                }
            ),
        }
        for i in range(n)
    ]


def event_keys(frame: pd.DataFrame, ids: pd.Series | None) -> np.ndarray:
    """The data's event ids, else a 128-bit content hash plus the occurrence among identical rows."""
    if ids is not None:
        return ids.astype(str).to_numpy(dtype=object)
    content = frame.reset_index(drop=True).copy()
    for column in content.columns:
        if isinstance(content[column].dtype, pd.CategoricalDtype):
            content[column] = content[column].astype(str)
    content["occurrence"] = content.groupby(list(content.columns), dropna=False, sort=False).cumcount()
    low = pd.util.hash_pandas_object(content, index=False, hash_key="churnsense-evt-0").to_numpy()
    high = pd.util.hash_pandas_object(content, index=False, hash_key="churnsense-evt-1").to_numpy()
    return np.array([f"h{a:016x}{b:016x}" for a, b in zip(high, low, strict=True)], dtype=object)


EVENT_COLUMNS = ("event_key", "customer_id", "ts_ns", "event_type", "seq", "text", "sentiment", "numbers")
CUSTOMER_COLUMNS = ("customer_id", "signup_ns", "churn_ns", "churned", "profile")


def event_rows(
    frame: pd.DataFrame, keys: np.ndarray, layout: Layout, first_seq: int
) -> Iterator[tuple[Any, ...]]:
    """Store rows (`EVENT_COLUMNS`) of canonical events (`features.io.load_events`), in file order."""
    ids = frame[CUSTOMER_ID].astype(str).tolist()
    times = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64).tolist()
    types = frame[EVENT_TYPE].astype(str).tolist()
    if layout.has_text:
        raw = frame[TEXT].astype(object)
        texts = normalise_texts(raw.where(raw.notna(), None).tolist())
    else:
        texts = [None] * len(frame)
    sentiment = frame[SENTIMENT].to_numpy(dtype="float64") if layout.has_sentiment else None
    values = [frame[c].to_numpy(dtype="float64").tolist() for c in layout.value_columns]
    names = layout.value_columns
    for i in range(len(frame)):
        numbers = {name: (None if math.isnan(v[i]) else v[i]) for name, v in zip(names, values, strict=True)}
        score = None if sentiment is None or math.isnan(sentiment[i]) else float(sentiment[i])
        yield (keys[i], ids[i], times[i], types[i], first_seq + i, texts[i], score, json.dumps(numbers))


def upsert_customers(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert customers; an id already stored takes the new row's dates and profile."""
    sql = (
        f"INSERT INTO customers ({', '.join(CUSTOMER_COLUMNS)}) "
        f"VALUES ({placeholders(connection.engine, len(CUSTOMER_COLUMNS))}) ON CONFLICT (customer_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS[1:])
    )
    tuples = [tuple(row[c] for c in CUSTOMER_COLUMNS) for row in rows]
    for start in range(0, len(tuples), INSERT_ROWS):
        connection.exec_driver_sql(sql, tuples[start : start + INSERT_ROWS])


def insert_events(connection: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert events whose key is not stored yet (the rest are skipped, not updated); returns how many were new."""
    sql = (
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
        f"VALUES ({placeholders(connection.engine, len(EVENT_COLUMNS))}) ON CONFLICT (event_key) DO NOTHING"
    )
    if not rows:
        return 0
    return int(connection.exec_driver_sql(sql, list(rows)).rowcount)


def count(connection: Connection, table: sa.Table) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def next_seq(connection: Connection) -> int:
    return (
        int(connection.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), -1))).scalar_one()) + 1
    )


def known_customer_ids(connection: Connection) -> pd.Index:
    return pd.Index(connection.execute(sa.select(customers.c.customer_id)).scalars().all(), dtype=object)


def ingest_spec(
    spec_path: str | Path,
    url: str,
    rejects_path: str | Path | None = None,
    progress: bool = False,
) -> IngestSummary:
    """Load the spec's customers and events into the store at `url` (created on first use), in one
    transaction: a failed ingest leaves the store as it was. Rejected rows go to `rejects_path`
    (default `ingest.rejects.parquet`), written even when empty so an old file never misleads."""
    started = time.perf_counter()
    spec = load_spec(spec_path)
    engine = open_store(url, writer=True)
    shown = safe_url(url)
    summary = IngestSummary(store=shown)
    rejects: list[pd.DataFrame] = []
    customer_frame = None
    if spec.customers is not None:
        customer_frame, bad = load_customers(spec)
        rejects.append(bad)
        summary.customer_rows = len(customer_frame) + len(bad)
    layout = layout_of(spec, customer_frame)
    with engine.begin() as connection:
        layout = check_layout(connection, layout, shown)
        if customer_frame is not None:
            before = count(connection, customers)
            upsert_customers(connection, customer_rows(customer_frame, layout))
            summary.customers_new = count(connection, customers) - before
        if spec.events is not None:
            known = known_customer_ids(connection)
            event_frame, bad = load_events(spec, with_text=True, known_ids=known)
            rejects.append(bad)
            summary.event_rows = len(event_frame) + len(bad)
            event_frame, ids, blank = _event_ids(spec, event_frame, bad)
            rejects.append(blank)
            keys = event_keys(event_frame, ids)
            write_lock(connection)
            rows = event_rows(event_frame, keys, layout, next_seq(connection))
            with tqdm(
                total=len(event_frame), unit="event", disable=not progress, desc="ingest events"
            ) as bar:
                while chunk := list(itertools.islice(rows, INSERT_ROWS)):
                    summary.events_new += insert_events(connection, chunk)
                    bar.update(len(chunk))
            summary.events_already_stored = len(event_frame) - summary.events_new
    if engine.dialect.name == "sqlite":  # fold the ingest's write-ahead log into the file (it can be GBs)
        raw = engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    found = [r for r in rejects if len(r)]
    frame = pd.concat(found, ignore_index=True) if found else empty_rejects()
    summary.rejected = len(frame)
    summary.rejects_path = Path(rejects_path) if rejects_path else Path("ingest.rejects.parquet")
    atomic_write_parquet(frame, summary.rejects_path)
    summary.seconds = time.perf_counter() - started
    logger.info(
        "ingested %s into %s: %d new events, %d rejected rows",
        spec_path,
        shown,
        summary.events_new,
        summary.rejected,
    )
    return summary


def _event_ids(
    spec: DatasetSpec, frame: pd.DataFrame, rejected: pd.DataFrame
) -> tuple[pd.DataFrame, pd.Series | None, pd.DataFrame]:
    """The data's event ids for the loaded rows (None without an `events.event_id` column); rows with an empty
    id are taken out of `frame` and returned as rejects."""
    column = spec.events.event_id if spec.events else None
    if not column:
        return frame, None, empty_rejects()
    raw = read_table(spec, spec.events, columns=[column], string_columns=(column,))[column]
    kept = np.setdiff1d(np.arange(len(raw)), rejected["row"].to_numpy(dtype=np.int64))
    ids = raw.iloc[kept].astype("string").str.strip().reset_index(drop=True)
    blank = (ids.isna() | (ids == "")).to_numpy(dtype=bool, na_value=True)
    if not blank.any():
        return frame, ids, empty_rejects()
    bad = pd.DataFrame(
        {
            "table": "events",
            "file": spec.shown_file(str(spec.resolve(spec.events.path))),
            "row": kept[blank],
            "customer_id": frame[CUSTOMER_ID].astype(str).to_numpy()[blank],
            "column": column,
            "reason": "event id is empty",
        }
    )
    return frame[~blank].reset_index(drop=True), ids[~blank].reset_index(drop=True), bad
