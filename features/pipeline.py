"""Glue from a dataset spec to feature tables and labelled training frames.

load_data(spec) -> SpecData            # canonical customers / events + rejected rows
schema_for(spec, data) -> FeatureSchema
feature_table(data, schema, as_of)     # one row per customer, via features.engine
training_frame(spec, data, schema)     # features + `churned` + `as_of`, one block per snapshot
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from churnsense.files import atomic_write_parquet
from features.columns import AS_OF, ASPECT, CHURNED, CUSTOMER_ID, SENTIMENT, TEXT
from features.engine import FeatureSchema, build_customer_features, infer_schema
from features.io import empty_rejects, load_customers, load_events
from features.labels import label_snapshots
from features.spec import DatasetSpec, load_spec
from features.text import has_text as has_text_mask
from features.text import normalise_texts

logger = logging.getLogger(__name__)

SentimentScorer = Callable[[Sequence[str]], np.ndarray]  # texts -> scores in [-1, 1]
# texts -> what each is about (a name of the labeler's `names`, or its "none"); `names`: the aspects proper.
AspectLabeler = Callable[[Sequence[str]], list[str | None]]


@dataclass
class SpecData:
    """What a spec's customers and events sections hold, in canonical form."""

    spec: DatasetSpec
    customers: pd.DataFrame | None
    events: pd.DataFrame | None
    rejects: pd.DataFrame
    aspects: tuple[str, ...] = ()  # the aspects the events' `aspect` column names (an aspect labeler's)


def textless_columns(
    n: int, sentiment: bool, aspects: bool
) -> dict[str, np.ndarray | pd.api.extensions.ExtensionArray]:
    """The `sentiment` (NaN) and `aspect` (missing) columns that `add_sentiment` and `add_aspects` give `n`
    events of which none has a text. The service builds them with a request's events, when none has a text
    (most requests): adding them to a finished frame copied it twice, a tenth of a request's scoring."""
    columns: dict[str, np.ndarray | pd.api.extensions.ExtensionArray] = {}
    if sentiment:
        columns[SENTIMENT] = np.full(n, np.nan)
    if aspects:
        columns[ASPECT] = pd.array([None] * n, dtype="str")
    return columns


def add_sentiment(events: pd.DataFrame, scorer: SentimentScorer) -> pd.DataFrame:
    """Fill the `sentiment` column for events with text (NaN elsewhere). The scorer sees each text normalised
    (`features.text.normalise_text`); blank texts are no texts."""
    if TEXT not in events.columns:
        return events
    if events[TEXT].isna().all():  # no text at all: skip the string work
        return events.assign(**textless_columns(len(events), sentiment=True, aspects=False))
    texts = normalise_texts(events[TEXT].to_numpy(dtype=object))
    has_text = has_text_mask(texts)
    scores = np.full(len(events), np.nan)
    if has_text.any():
        present = [t for t in texts if t is not None]
        scores[has_text] = np.asarray(scorer(present), dtype="float64")
    out = events.copy()
    out[SENTIMENT] = scores
    return out


def add_aspects(events: pd.DataFrame, labeler: AspectLabeler) -> pd.DataFrame:
    """Fill the `aspect` column for events with text (missing elsewhere), as `add_sentiment` sees texts."""
    if TEXT not in events.columns or events[TEXT].isna().all():
        return events.assign(**textless_columns(len(events), sentiment=False, aspects=True))
    texts = normalise_texts(events[TEXT].to_numpy(dtype=object))
    has_text = has_text_mask(texts)
    about = np.full(len(events), None, dtype=object)
    if has_text.any():
        about[has_text] = labeler([t for t in texts if t is not None])
    return events.assign(**{ASPECT: pd.array(about, dtype="str")})


def load_data(
    spec: DatasetSpec,
    sentiment_scorer: SentimentScorer | None = None,
    with_text: bool = True,
    numeric_columns: Sequence[str] = (),
    aspect_labeler: AspectLabeler | None = None,
) -> SpecData:
    """Load customers and events (whichever the spec declares); optionally score event texts.

    `numeric_columns`: profile columns a model reads as numbers (its schema's `profile_numeric`); a customer
    whose value there is not a number is rejected, as the service answers 400 for it. `aspect_labeler` (with
    `sentiment_scorer`): each text also gets its aspect, and the data its `aspects` (the labeler's `names`).
    """
    customers = events = None
    rejects = [empty_rejects()]
    if spec.customers is not None:
        customers, bad = load_customers(spec, numeric_columns)
        rejects.append(bad)
    if spec.events is not None:
        known = pd.Index(customers[CUSTOMER_ID]) if customers is not None else None
        events, bad = load_events(spec, with_text=with_text or sentiment_scorer is not None, known_ids=known)
        rejects.append(bad)
        if sentiment_scorer is not None and spec.events.sentiment is None:
            events = add_sentiment(events, sentiment_scorer)
            if aspect_labeler is not None:
                events = add_aspects(events, aspect_labeler)
    rejects = [r for r in rejects if len(r)] or [empty_rejects()]
    aspects = tuple(getattr(aspect_labeler, "names", ())) if events is not None and ASPECT in events else ()
    return SpecData(spec, customers, events, pd.concat(rejects, ignore_index=True), aspects)


def schema_for(spec: DatasetSpec, data: SpecData, windows: tuple[int, ...] = (7, 30, 90)) -> FeatureSchema:
    """The feature schema for this data: event types, value columns and profile columns it has."""
    values = spec.events.values if spec.events else ()
    churn_event = spec.events.churn_event if spec.events else None
    return infer_schema(
        data.customers,
        data.events,
        value_columns=tuple(values),
        windows=windows,
        exclude_event_types=(churn_event,) if churn_event else (),
        aspects=data.aspects,
    )


def feature_table(data: SpecData, schema: FeatureSchema, as_of: dt.date | str) -> pd.DataFrame:
    """Features of every customer as of a date (index `customer_id`)."""
    return build_customer_features(data.events, as_of, schema, customers=data.customers)


def training_frame(data: SpecData, schema: FeatureSchema) -> pd.DataFrame:
    """Labelled snapshots: for each `as_of` date, features of the eligible customers plus `churned`.

    One-table data (static label, no events) gives one snapshot. Returns columns `customer_id`, `as_of`,
    the schema's features in order, then `churned`.
    """
    spec = data.spec
    dates = spec.labels.as_of_dates()
    churn_event = spec.events.churn_event if spec.events else None
    if not dates:
        if data.events is not None:
            raise UserError(
                "labels.as_of: required when the spec has events, so features use only what happened before it "
                "(without it, events after the label horizon would leak into the features)"
            )
        if data.customers is None or CHURNED not in data.customers.columns:
            raise UserError("customers.label: required for a spec without events and labels.as_of")
        features = build_customer_features(None, dt.date.today(), schema, customers=data.customers)
        frame = features.reset_index()
        frame.insert(1, AS_OF, pd.NaT)
        frame[CHURNED] = data.customers[CHURNED].to_numpy()
        return frame
    labels = label_snapshots(
        data.customers, data.events, dates, spec.labels.horizon_days, churn_event, spec.labels.inactivity
    )
    blocks = []
    for as_of, labelled in labels.groupby(AS_OF, sort=True):
        features = build_customer_features(data.events, as_of, schema, customers=data.customers)
        block = features.loc[labelled[CUSTOMER_ID].to_numpy()].reset_index()
        block.insert(1, AS_OF, as_of)
        block[CHURNED] = labelled[CHURNED].to_numpy()
        blocks.append(block)
    return pd.concat(blocks, ignore_index=True)


def write_feature_table(spec_path: Path, as_of: str, out: Path) -> str:
    """CLI body of `churnsense features`: returns a short summary line."""
    try:
        as_of_date = dt.date.fromisoformat(as_of)
    except ValueError:
        raise UserError(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)") from None
    spec = load_spec(spec_path)
    data = load_data(spec, with_text=False)
    schema = schema_for(spec, data)
    table = feature_table(data, schema, as_of_date).reset_index()
    atomic_write_parquet(table, out)
    note = f", {len(data.rejects)} rejected rows" if len(data.rejects) else ""
    return f"wrote {out}: {len(table)} customers x {len(schema.feature_names())} features (v{schema.version}){note}"
