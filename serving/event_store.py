"""The service's door to the event store: by-id requests made whole, and new interactions stored.

Requests for customers given by id alone: their profile and interaction history come from the event store.

A support tool knows the customer's id, not their profile and two years of interactions. `resolve` turns
`{"customer_id": ..., "as_of"?: ...}` into the same `ChurnRiskRequest` a caller could have sent in full, so it
is scored by the very same code. Only the feature lookback window is read, plus the few older events whose
times the features need (`store.read.history`): the features equal those of the whole history, bit for bit.
A model with lifetime features (all-time counts and sums, gaps between events) reads the whole history.

Times come back as Python datetimes (microseconds), as in a request sent in full.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

from bentoml.exceptions import NotFound
from sqlalchemy.engine import Engine

from features.engine import FeatureSchema, to_timestamp_ns
from serving.schemas import ChurnRiskRequest, Customer, Event, StoredEvent
from serving.scoring import event_value_problems, request_error
from store.append import NewEvent, append_events
from store.ingest import Layout, store_layout
from store.read import history_rows
from store.schema import open_store, safe_url

logger = logging.getLogger(__name__)


class EventStore:
    """The store at CHURNSENSE_STORE_URL: a reading engine (never waits for writers) and a writing one."""

    def __init__(self, url: str) -> None:
        self.url = safe_url(url)
        self.reader = open_store(url)
        self.writer = open_store(url, writer=True)
        self._layout: Layout | None = None

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
        """The store's layout, read until there is one, then kept (an ingest never changes it)."""
        if self._layout is None:
            self._layout = store_layout(self.reader)
        return self._layout

    def requests(
        self, wanted: Sequence[tuple[str, dt.datetime]], schema: FeatureSchema
    ) -> dict[tuple[str, dt.datetime], ChurnRiskRequest]:
        """Full requests for (customer id, as_of) pairs; `NotFound` (404) naming the ids the store lacks."""
        built, missing = resolve(self.reader, wanted, schema, self.layout())
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
        problems = event_value_problems(events, layout.value_columns)  # the rule of /churn_risk's events
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


def lookback_days(schema: FeatureSchema) -> int | None:
    """Days of history the features read in full: the longest window, or the two trend windows; None (all of
    it) when the schema has lifetime features."""
    if schema.lifetime:
        return None
    return max(schema.windows[-1], 2 * schema.trend_window)


def resolve(
    engine: Engine,
    requests: Sequence[tuple[str, dt.datetime]],
    schema: FeatureSchema,
    layout: Layout | None = None,
) -> tuple[list[ChurnRiskRequest], list[str]]:
    """Full requests for (customer id, as_of) pairs, and the ids the store does not know.

    Pairs sharing an as_of are read together (one set of queries per as_of). Built straight from the store's
    rows: no data frames on the way (a request's own path builds those).
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
            found = history_rows(connection, layout, ids, to_timestamp_ns(as_of), lookback_days(schema))
            missing += found.missing
            mine: dict[str, list[Event]] = {}
            for row in found.events:
                mine.setdefault(row.customer_id, []).append(_event(row, layout))
            for row in found.customers:
                built[(row.customer_id, as_of)] = ChurnRiskRequest.model_construct(
                    customer=_customer(row, layout), events=mine.get(row.customer_id, []), as_of=as_of
                )
    return [built[pair] for pair in requests if pair in built], list(dict.fromkeys(missing))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utc(ns: int | None) -> dt.datetime | None:
    """Nanoseconds since the epoch as an aware datetime (microseconds, as a request carries them)."""
    return None if ns is None else _EPOCH + dt.timedelta(microseconds=ns // 1000)


def _customer(row: Any, layout: Layout) -> Customer:
    profile = json.loads(row.profile)
    fields = {name: profile.get(name) for name in layout.profile_columns}
    return Customer.model_construct(customer_id=row.customer_id, signup_date=_utc(row.signup_ns), **fields)


def _event(row: Any, layout: Layout) -> Event:
    numbers = json.loads(row.numbers) if row.numbers else {}
    fields = {name: numbers.get(name) for name in layout.value_columns}
    return Event.model_construct(timestamp=_utc(row.ts_ns), type=row.event_type, text=row.text, **fields)
