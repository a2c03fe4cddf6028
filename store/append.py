"""Append interactions as they happen (the service's `POST /events`): validated, idempotent, committed at once.

An event keeps the id its sender gives it; without one, it is keyed by its content (customer, time, type,
text, values) exactly as `ingest` keys file rows, so sending the same event twice stores it once. Events of
customers the store does not know are refused as a whole request: nothing is half-stored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from store.ingest import Layout, event_keys, event_rows, insert_events, next_seq
from store.read import events_frame
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
    rows = [
        _Row(e.customer_id, e.timestamp_ns, e.event_type, i, e.text, e.sentiment, json.dumps(e.values))
        for i, e in enumerate(new)
    ]
    return events_frame(rows, layout, ordered=True)


class _Row(NamedTuple):
    """A new event in the shape of a stored row (what `store.read.events_frame` reads)."""

    customer_id: str
    ts_ns: int
    event_type: str
    seq: int
    text: str | None
    sentiment: float | None
    numbers: str


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
