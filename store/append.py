"""Append interactions as they happen (the service's `POST /events`): validated, idempotent, committed at once.

An event keeps the id its sender gives it; without one, it is keyed by its content (customer, time, type,
text, values) exactly as `ingest` keys file rows, so sending the same event twice stores it once. Events of
customers the store does not know are refused as a whole request: nothing is half-stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from features.columns import CUSTOMER_ID, EVENT_TYPE, SENTIMENT, TEXT, TIMESTAMP
from store.ingest import Layout, event_keys, event_rows, insert_events, next_seq
from store.schema import customers, write_lock


@dataclasses.dataclass(frozen=True)
class NewEvent:
    customer_id: str
    timestamp_ns: int
    event_type: str
    event_id: str | None = None
    text: str | None = None
    sentiment: float | None = None
    values: dict[str, float | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Appended:
    stored: int
    duplicates: int
    unknown_customers: list[str]


def canonical_events(new: Sequence[NewEvent], layout: Layout) -> pd.DataFrame:
    """The events as `features.io.load_events` would return them (the same keys and rows as an ingest)."""
    columns = {
        CUSTOMER_ID: pd.Categorical([e.customer_id for e in new]),
        TIMESTAMP: np.array([e.timestamp_ns for e in new], dtype=np.int64).view("datetime64[ns]"),
        EVENT_TYPE: pd.Categorical([e.event_type for e in new]),
    }
    for name in layout.value_columns:
        columns[name] = np.array(
            [np.nan if e.values.get(name) is None else float(e.values[name]) for e in new], dtype="float64"
        )
    if layout.has_text:
        columns[TEXT] = pd.array([e.text for e in new], dtype="string")
    if layout.has_sentiment:
        columns[SENTIMENT] = np.array(
            [np.nan if e.sentiment is None else e.sentiment for e in new], dtype="float64"
        )
    return pd.DataFrame(columns)


def append_events(engine: Engine, layout: Layout, new: Sequence[NewEvent]) -> Appended:
    """Store `new` in one transaction, committed before this returns; nothing when a customer is unknown."""
    ids = sorted({e.customer_id for e in new})
    with engine.begin() as connection:
        known = set(
            connection.execute(
                sa.select(customers.c.customer_id).where(customers.c.customer_id.in_(ids))
            ).scalars()
        )
        unknown = [i for i in ids if i not in known]
        if unknown:
            return Appended(0, 0, unknown)
        frame = canonical_events(new, layout)
        given = [e.event_id for e in new]
        if all(given):
            keys = np.array([str(k) for k in given], dtype=object)
        else:  # content keys for those without an id, as ingest computes them
            keys = event_keys(frame, None)
            keys = np.array([str(k) if k else h for k, h in zip(given, keys, strict=True)], dtype=object)
        write_lock(connection)
        stored = insert_events(connection, list(event_rows(frame, keys, layout, next_seq(connection))))
    return Appended(stored, len(new) - stored, [])
