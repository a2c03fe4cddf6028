"""Churn labels for snapshot dates: what happens *after* `as_of`, within `horizon_days`.

Three definitions, combined with OR when several are declared:
- `churn_date` (customers table): churned if the customer left in [as_of, as_of + horizon).
- `churn_event` (events table): churned if an event of that type happens in [as_of, as_of + horizon).
- `inactivity: true`: churned if the customer has no event at all in [as_of, as_of + horizon).

Who is in a snapshot: customers who had joined before `as_of` (signup date, or first event), had not already
left (churn date / churn event before `as_of`) and, for inactivity labels, were active (an event in the
`horizon_days` before `as_of`); otherwise "no event" would only restate that they were already gone.

One-table data sets with a static label (`customers.label`) get one snapshot with that label.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from features.columns import AS_OF, CHURN_DATE, CHURNED, CUSTOMER_ID, EVENT_TYPE, SIGNUP_DATE, TIMESTAMP
from features.engine import DAY_NS, to_timestamp_ns


class LabelError(UserError):
    """Labels cannot be made from what the spec declares; the message says what is missing."""


def _seen_codes(keys: pd.Series, mask: np.ndarray) -> np.ndarray:
    """For a categorical `keys`: which categories occur in at least one row where `mask` holds."""
    codes = keys.cat.codes.to_numpy()[mask]
    seen = np.zeros(len(keys.cat.categories), dtype=bool)
    seen[codes[codes >= 0]] = True
    return seen


def _per_customer(ids: pd.Index, keys: pd.Series, mask: np.ndarray) -> np.ndarray:
    """True for each customer in `ids` that has at least one row where `mask` holds."""
    if isinstance(keys.dtype, pd.CategoricalDtype) and ids.is_unique:
        # Mark categories through their integer codes: converting millions of rows to str takes seconds.
        position = ids.get_indexer(keys.cat.categories.astype(str)[_seen_codes(keys, mask)])
        out = np.zeros(len(ids), dtype=bool)
        out[position[position >= 0]] = True
        return out
    hit = pd.Index(keys[mask].astype(str).unique())
    return ids.isin(hit)


def _is_type(types: pd.Series, wanted: str) -> np.ndarray:
    """Rows whose event type is `wanted` (compared as text), via the categories when `types` is categorical."""
    if isinstance(types.dtype, pd.CategoricalDtype):
        codes = types.cat.codes.to_numpy()
        match = np.append(np.asarray(types.cat.categories.astype(str) == wanted, dtype=bool), False)
        return match[codes]  # code -1 (missing) indexes the appended False
    return (types.astype("string") == wanted).to_numpy(dtype=bool, na_value=False)


def label_snapshot(
    customers: pd.DataFrame | None,
    events: pd.DataFrame | None,
    as_of: dt.date | str,
    horizon_days: int,
    churn_event: str | None = None,
    inactivity: bool = False,
) -> pd.DataFrame:
    """Eligible customers at `as_of` with their 0/1 label.

    Returns:
        Columns `customer_id`, `as_of` (datetime64), `churned` (int8), in the customers' (or sorted id) order.
    """
    has_date = customers is not None and CHURN_DATE in customers.columns
    if not (has_date or churn_event or inactivity):
        if customers is not None and CHURNED in customers.columns:
            return pd.DataFrame(
                {
                    CUSTOMER_ID: customers[CUSTOMER_ID].astype(str).to_numpy(),
                    AS_OF: pd.Timestamp(as_of),
                    CHURNED: customers[CHURNED].astype("int8").to_numpy(),
                }
            )
        raise LabelError(
            "no churn definition: declare customers.label, customers.churn_date, events.churn_event "
            "or labels.inactivity: true"
        )
    if (churn_event or inactivity) and events is None:
        raise LabelError("labels from churn_event or inactivity need an `events` section")

    start = to_timestamp_ns(as_of)
    end = start + horizon_days * DAY_NS
    if customers is not None:
        ids = pd.Index(customers[CUSTOMER_ID].astype(str))
    else:
        before = events[TIMESTAMP].to_numpy("datetime64[ns]").view("int64") < start
        keys = events[CUSTOMER_ID]
        if isinstance(keys.dtype, pd.CategoricalDtype):
            ids = pd.Index(sorted(keys.cat.categories[_seen_codes(keys, before)].astype(str)))
        else:
            ids = pd.Index(sorted(keys[before].astype(str).unique()))

    known, gone = _known_and_gone(ids, customers, events, start, churn_event)
    churned = np.zeros(len(ids), dtype=bool)
    inactive_before = np.zeros(len(ids), dtype=bool)
    if events is not None:
        times = events[TIMESTAMP].to_numpy("datetime64[ns]").view("int64")
        keys = events[CUSTOMER_ID]
        if churn_event:
            is_churn = _is_type(events[EVENT_TYPE], churn_event)
            churned |= _per_customer(ids, keys, is_churn & (times >= start) & (times < end))
        if inactivity:
            active = _per_customer(ids, keys, (times < start) & (times >= start - horizon_days * DAY_NS))
            inactive_before = ~active
            churned |= ~_per_customer(ids, keys, (times >= start) & (times < end))
    if has_date:
        left = customers[CHURN_DATE].to_numpy("datetime64[ns]").view("int64")
        has_left = left != np.iinfo(np.int64).min
        churned |= has_left & (left >= start) & (left < end)
    eligible = known & ~gone & ~inactive_before
    return pd.DataFrame(
        {
            CUSTOMER_ID: ids[eligible].to_numpy(),
            AS_OF: pd.Timestamp(as_of),
            CHURNED: churned[eligible].astype("int8"),
        }
    )


def _known_and_gone(
    ids: pd.Index,
    customers: pd.DataFrame | None,
    events: pd.DataFrame | None,
    start: int,
    churn_event: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The one statement of who is a customer at `start` (ns): (known, gone) per id in `ids`.

    Known: a signup date before `start`, or (without one) an event before it. Gone: a churn date, or an event
    of type `churn_event`, before `start`. Training snapshots and batch scoring both use this.
    """
    known = np.zeros(len(ids), dtype=bool)
    gone = np.zeros(len(ids), dtype=bool)
    if events is not None:
        times = events[TIMESTAMP].to_numpy("datetime64[ns]").view("int64")
        keys = events[CUSTOMER_ID]
        known |= _per_customer(ids, keys, times < start)
        if churn_event:
            gone |= _per_customer(ids, keys, _is_type(events[EVENT_TYPE], churn_event) & (times < start))
    if customers is not None:
        if SIGNUP_DATE in customers.columns:
            signup = customers[SIGNUP_DATE].to_numpy("datetime64[ns]").view("int64")
            has_signup = signup != np.iinfo(np.int64).min
            known = np.where(has_signup, signup < start, known)
        elif events is None:
            known[:] = True
        if CHURN_DATE in customers.columns:
            left = customers[CHURN_DATE].to_numpy("datetime64[ns]").view("int64")
            gone |= (left != np.iinfo(np.int64).min) & (left < start)
    return known, gone


MIN_POSITIVES = 50
"""Fewest churned examples the trainer accepts; `churnsense validate` says so before anyone trains."""


def censored_as_of(
    dates: list[dt.date], horizon_days: int, newest: pd.Timestamp
) -> tuple[list[dt.date], dt.date]:
    """(as_of dates whose label window reaches past the data, the latest as_of date that does not).

    The window [as_of, as_of + horizon) is covered when its last day has data (the day of the `newest` event);
    a window past it would call customers churned, or not, only because the data stops. One rule for
    `churnsense validate` and the trainer.
    """
    last_day = pd.Timestamp(newest).normalize()
    latest_ok = (last_day - pd.Timedelta(days=horizon_days - 1)).date()
    return [d for d in dates if d > latest_ok], latest_ok


NOT_YET_A_CUSTOMER = "not a customer yet at as_of (signs up later, or no signup date and no earlier event)"
ALREADY_CHURNED = "churned before as_of"


def ineligible_reasons(
    customers: pd.DataFrame | None, events: pd.DataFrame | None, as_of: dt.date | str, churn_event: str | None
) -> pd.Series:
    """Why each customer cannot be scored as of `as_of` (None when they can): the rule of `label_snapshot`
    (known and not gone), without the training-only inactivity rule.

    Returns:
        A Series indexed by customer id (the customers table's ids, else every id in the events) of reason
        strings or None.
    """
    if customers is not None:
        ids = pd.Index(customers[CUSTOMER_ID].astype(str))
    elif events is not None:
        keys = events[CUSTOMER_ID]
        categories = keys.cat.categories if isinstance(keys.dtype, pd.CategoricalDtype) else keys.unique()
        ids = pd.Index(sorted(pd.Index(categories).dropna().astype(str)))
    else:
        return pd.Series([], dtype=object)
    if customers is not None and events is None and not {SIGNUP_DATE, CHURN_DATE} & set(customers.columns):
        return pd.Series([None] * len(ids), index=ids, dtype=object)  # one-table data: nothing to go by
    known, gone = _known_and_gone(ids, customers, events, to_timestamp_ns(as_of), churn_event)
    reasons = np.full(len(ids), None, dtype=object)
    reasons[~known] = NOT_YET_A_CUSTOMER
    reasons[known & gone] = ALREADY_CHURNED
    return pd.Series(reasons, index=ids, dtype=object)


def label_snapshots(
    customers: pd.DataFrame | None,
    events: pd.DataFrame | None,
    as_of_dates: list[dt.date],
    horizon_days: int,
    churn_event: str | None = None,
    inactivity: bool = False,
) -> pd.DataFrame:
    """`label_snapshot` for each date, stacked (a customer appears once per snapshot it is eligible for)."""
    if not as_of_dates:
        raise LabelError("labels.as_of is not set: give a date, a list of dates or {start, end, every_days}")
    parts = [label_snapshot(customers, events, d, horizon_days, churn_event, inactivity) for d in as_of_dates]
    return pd.concat(parts, ignore_index=True)
