"""The service's door to the event store: by-id requests made whole, and new interactions stored.

Requests for customers given by id alone: their profile and interaction history come from the event store.

A support tool knows the customer's id, not their profile and two years of interactions. `resolve` turns
`{"customer_id": ..., "as_of"?: ...}` into the same `ChurnRiskRequest` a caller could have sent in full, so it
is scored by the very same code. Only the feature lookback window is read, plus the few older events whose
times the features need (`store.read.history`): the features equal those of the whole history, bit for bit.

Times come back as Python datetimes (microseconds), as in a request sent in full.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from bentoml.exceptions import NotFound
from sqlalchemy.engine import Engine

from features.columns import CUSTOMER_ID, EVENT_TYPE, SENTIMENT, SIGNUP_DATE, TEXT, TIMESTAMP
from features.engine import FeatureSchema, to_timestamp_ns
from serving.schemas import ChurnRiskRequest, Customer, Event, StoredEvent
from serving.scoring import request_error
from store.append import NewEvent, append_events
from store.ingest import Layout, store_layout
from store.read import history
from store.schema import open_store, safe_url

logger = logging.getLogger(__name__)


class EventStore:
    """The store at CHURNSENSE_STORE_URL: a reading engine (never waits for writers) and a writing one."""

    def __init__(self, url: str) -> None:
        self.url = safe_url(url)
        self.reader = open_store(url)
        self.writer = open_store(url, writer=True)

    @classmethod
    def from_environment(cls) -> EventStore | None:
        from churnsense.environment import paths

        url = paths().store_url
        if not url:
            return None
        store = cls(url)
        logger.info("event store: %s", store.url)  # the password never reaches the log
        return store

    def layout(self) -> Layout | None:
        return store_layout(self.reader)

    def requests(
        self, wanted: Sequence[tuple[str, dt.datetime]], schema: FeatureSchema
    ) -> dict[tuple[str, dt.datetime], ChurnRiskRequest]:
        """Full requests for (customer id, as_of) pairs; `NotFound` (404) naming the ids the store lacks."""
        built, missing = resolve(self.reader, wanted, schema)
        if missing:
            raise NotFound(f"customer_id: not in the event store: {_listed(missing)}")
        return {
            (request.customer.customer_id, as_of): request
            for request, (_, as_of) in zip(built, wanted, strict=True)
        }

    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        """Store events (all or none); returns (new, already stored). `NotFound` for unknown customers."""
        layout = self.layout()
        if layout is None:
            raise NotFound(
                f"customer_id: not in the event store: {_listed(sorted({e.customer_id for e in events}))}"
            )
        problems = []
        for i, event in enumerate(events):
            for name in layout.value_columns:
                value = (event.model_extra or {}).get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    problems.append((("events", i, name), "must be a number or null"))
        if problems:
            raise request_error("EventsRequest", problems)
        new = [
            NewEvent(
                customer_id=event.customer_id,
                timestamp_ns=to_timestamp_ns(event.timestamp),
                event_type=event.type,
                event_id=event.event_id,
                text=event.text,
                values={name: _number((event.model_extra or {}).get(name)) for name in layout.value_columns},
            )
            for event in events
        ]
        done = append_events(self.writer, layout, new)
        if done.unknown_customers:
            raise NotFound(f"customer_id: not in the event store: {_listed(done.unknown_customers)}")
        return done.stored, done.duplicates


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _listed(ids: Sequence[str], shown: int = 5) -> str:
    """A few ids for a message, each cut short and without line breaks (they come from the client)."""
    parts = [repr(str(i)[:40]) for i in ids[:shown]]
    return ", ".join(parts) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def lookback_days(schema: FeatureSchema) -> int:
    """Days of history the features read in full: the longest window, or the two trend windows."""
    return max(schema.windows[-1], 2 * schema.trend_window)


def _utc(value: Any) -> dt.datetime | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).tz_localize("UTC").to_pydatetime()


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def resolve(
    engine: Engine,
    requests: Sequence[tuple[str, dt.datetime]],
    schema: FeatureSchema,
    layout: Layout | None = None,
) -> tuple[list[ChurnRiskRequest], list[str]]:
    """Full requests for (customer id, as_of) pairs, and the ids the store does not know.

    Pairs sharing an as_of are read together (one set of queries per as_of).
    """
    layout = layout or store_layout(engine)
    if layout is None:  # nothing ingested yet: every id is unknown
        return [], list(dict.fromkeys(i for i, _ in requests))
    built: dict[tuple[str, dt.datetime], ChurnRiskRequest] = {}
    missing: list[str] = []
    by_date: dict[dt.datetime, list[str]] = {}
    for customer_id, as_of in requests:
        by_date.setdefault(as_of, []).append(customer_id)
    with engine.connect() as connection:
        for as_of, ids in by_date.items():
            found = history(connection, layout, ids, to_timestamp_ns(as_of), lookback_days(schema))
            missing += found.missing
            for request in _requests(found.customers, found.events, layout, as_of):
                built[(request.customer.customer_id, as_of)] = request
    return [built[pair] for pair in requests if pair in built], list(dict.fromkeys(missing))


def _requests(
    customers: pd.DataFrame, events: pd.DataFrame, layout: Layout, as_of: dt.datetime
) -> list[ChurnRiskRequest]:
    grouped = {key: frame for key, frame in events.groupby(CUSTOMER_ID, observed=True, sort=False)}
    out = []
    for row in customers.itertuples(index=False):
        record = row._asdict()
        profile = {name: _plain(record[name]) for name in layout.profile_columns}
        customer = Customer.model_construct(
            customer_id=str(record[CUSTOMER_ID]), signup_date=_utc(record[SIGNUP_DATE]), **profile
        )
        mine = grouped.get(record[CUSTOMER_ID])
        items = [] if mine is None else _events(mine, layout)
        out.append(ChurnRiskRequest.model_construct(customer=customer, events=items, as_of=as_of))
    return out


def _events(frame: pd.DataFrame, layout: Layout) -> list[Event]:
    stamps = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    types = frame[EVENT_TYPE].astype(str).tolist()
    texts = frame[TEXT].tolist() if layout.has_text else [None] * len(frame)
    values = {name: frame[name].to_numpy(dtype="float64") for name in layout.value_columns}
    if layout.has_sentiment:
        values[SENTIMENT] = frame[SENTIMENT].to_numpy(dtype="float64")
    items = []
    for i, stamp in enumerate(stamps):
        fields = {name: (None if np.isnan(v[i]) else float(v[i])) for name, v in values.items()}
        text = texts[i]
        items.append(
            Event.model_construct(
                timestamp=dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
                + dt.timedelta(microseconds=int(stamp) // 1000),
                type=types[i],
                text=None if text is None or text is pd.NA else str(text),
                **fields,
            )
        )
    return items
