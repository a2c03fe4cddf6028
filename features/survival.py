"""Time to churn for the labelled snapshots: right-censored durations beside the horizon labels.

    durations = survival_snapshots(data_customers, data_events, dates, churn_event, labels)

For each eligible customer at each `as_of` (the rows `features.labels.label_snapshots` labels): the days from
`as_of` to the customer's first churn at or after it (its churn date, or its first churn event), `event` 1; a
customer who has not churned by the end of the data is **censored** there (`event` 0, the days from `as_of` to
the newest event or churn date). Days are whole: day k is [k - 1, k) days after `as_of` (a churn in the first
day is day 1, one exactly 60 days on is day 61), so a label of the half-open horizon [as_of, as_of + H) is
exactly `event == 1 and duration_days <= H`, and survival models see few distinct times (a random survival
forest stores a curve over them in every leaf). Features still read only what happened before `as_of`; durations read only
what happened from it on, exactly as labels do.

One-table data (no events, a static label) gives durations from a tenure column instead
(`customers.duration`, in `customers.duration_unit`), with the label as the event.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from features.columns import AS_OF, CHURN_DATE, CHURNED, CUSTOMER_ID, EVENT_TYPE, TIMESTAMP
from features.engine import to_timestamp_ns
from features.pipeline import SpecData
from features.spec import DatasetSpec
from features.text_features import DAY_NS

DURATION, EVENT = "duration_days", "event"
UNIT_DAYS = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12}


class SurvivalDataError(UserError):
    """The spec cannot give durations (named)."""


def end_of_data(customers: pd.DataFrame | None, events: pd.DataFrame | None) -> int:
    """The newest time the data knows about (ns): its newest event or churn date. Censoring happens there."""
    newest = []
    if events is not None and len(events):
        newest.append(int(events[TIMESTAMP].to_numpy("datetime64[ns]").view("int64").max()))
    if customers is not None and CHURN_DATE in customers.columns:
        left = customers[CHURN_DATE].to_numpy("datetime64[ns]").view("int64")
        left = left[left != np.iinfo(np.int64).min]
        if left.size:
            newest.append(int(left.max()))
    if not newest:
        raise SurvivalDataError("durations: the data has no event times or churn dates to censor at")
    return max(newest)


def first_churn_ns(
    ids: pd.Index,
    customers: pd.DataFrame | None,
    events: pd.DataFrame | None,
    start_ns: int,
    churn_event: str | None,
) -> np.ndarray:
    """Per customer of `ids`: the first churn at or after `start_ns` (int64 ns; int64 max when none)."""
    never = np.iinfo(np.int64).max
    first = np.full(len(ids), never, dtype=np.int64)

    def earliest(owners: np.ndarray, times: np.ndarray) -> np.ndarray:
        found = pd.Series(times, index=owners, dtype="Int64").groupby(level=0).min().reindex(ids)
        return found.to_numpy(dtype=np.int64, na_value=never)

    if customers is not None and CHURN_DATE in customers.columns:
        left = customers[CHURN_DATE].to_numpy("datetime64[ns]").view("int64")
        chosen = (left != np.iinfo(np.int64).min) & (left >= start_ns)
        first = np.minimum(
            first, earliest(customers[CUSTOMER_ID].astype(str).to_numpy()[chosen], left[chosen])
        )
    if churn_event and events is not None and len(events):
        times = events[TIMESTAMP].to_numpy("datetime64[ns]").view("int64")
        chosen = (events[EVENT_TYPE].astype(str).to_numpy() == churn_event) & (times >= start_ns)
        first = np.minimum(first, earliest(events[CUSTOMER_ID].astype(str).to_numpy()[chosen], times[chosen]))
    return first


def survival_snapshots(
    customers: pd.DataFrame | None,
    events: pd.DataFrame | None,
    labels: pd.DataFrame,
    churn_event: str | None,
    inactivity: bool = False,
) -> pd.DataFrame:
    """Durations and events for labelled snapshots (`customer_id`, `as_of` rows, as
    `features.labels.label_snapshots` gives them), in their order: `customer_id`, `as_of`, `duration_days`,
    `event`.

    Raises:
        SurvivalDataError: a churn defined by inactivity (no single moment of churn to time).
    """
    if inactivity:
        raise SurvivalDataError(
            "labels.inactivity: churn by inactivity has no moment of churn to time; time to churn needs "
            "customers.churn_date or events.churn_event"
        )
    if not ((customers is not None and CHURN_DATE in customers.columns) or churn_event):
        raise SurvivalDataError(
            "time to churn needs customers.churn_date or events.churn_event (or, for one-table data, "
            "customers.duration with customers.label)"
        )
    end_ns = end_of_data(customers, events)
    out = []
    for as_of, block in labels.groupby(AS_OF, sort=False):
        start = to_timestamp_ns(as_of)
        ids = pd.Index(block[CUSTOMER_ID].astype(str))
        first = first_churn_ns(ids, customers, events, start, churn_event)
        event = first <= end_ns
        stop = np.where(event, first, end_ns)
        days = np.maximum((stop - start) // DAY_NS + 1, 1).astype("float64")  # day k is [k - 1, k)
        out.append(
            pd.DataFrame(
                {CUSTOMER_ID: ids.to_numpy(), AS_OF: as_of, DURATION: days, EVENT: event.astype("int8")},
                index=block.index,
            )
        )
    return pd.concat(out).loc[labels.index].reset_index(drop=True)


def tenure_durations(customers: pd.DataFrame, column: str, unit: str) -> pd.DataFrame:
    """One-table data: `duration_days` from a tenure column (in `unit`), `event` from the static label."""
    if column not in customers.columns:
        raise SurvivalDataError(f"customers.duration: column {column!r} is not in the customers table")
    if CHURNED not in customers.columns:
        raise SurvivalDataError("customers.duration: needs customers.label (whether each customer churned)")
    raw = pd.to_numeric(customers[column], errors="coerce").to_numpy(dtype="float64")
    bad = np.flatnonzero(~np.isfinite(raw) | (raw < 0))
    if bad.size:
        raise SurvivalDataError(
            f"customers.duration: {bad.size} customer(s) without a finite non-negative number in {column!r} (first: "
            f"{customers[CUSTOMER_ID].iloc[bad[0]]})"
        )
    return pd.DataFrame(
        {
            CUSTOMER_ID: customers[CUSTOMER_ID].astype(str).to_numpy(),
            DURATION: np.maximum(np.ceil(raw * UNIT_DAYS[unit]), 1.0),
            EVENT: customers[CHURNED].astype("int8").to_numpy(),
        }
    )


def survival_columns(spec: DatasetSpec) -> tuple[str, ...]:
    """Customer columns a survival model must not read: the duration itself (its target) on one-table data."""
    return (spec.customers.duration,) if spec.customers is not None and spec.customers.duration else ()


def survival_frame(data: SpecData, frame: pd.DataFrame) -> pd.DataFrame:
    """The labelled training frame (`features.pipeline.training_frame`) with `duration_days` and `event` beside
    `churned`, row for row."""
    spec = data.spec
    if spec.labels.as_of_dates():
        if spec.customers is not None and spec.customers.duration:
            raise SurvivalDataError(
                "customers.duration: for one-table data without labels.as_of; with snapshots, durations come "
                "from churn dates or churn events"
            )
        durations = survival_snapshots(
            data.customers,
            data.events,
            frame[[CUSTOMER_ID, AS_OF]],
            spec.events.churn_event if spec.events else None,
            spec.labels.inactivity,
        )
        values = durations[[DURATION, EVENT]].to_numpy()
    else:
        cs = spec.customers
        if cs is None or not cs.duration:
            raise SurvivalDataError(
                "time to churn on one-table data needs customers.duration (each customer's tenure) and "
                "customers.label"
            )
        durations = tenure_durations(data.customers, cs.duration, cs.duration_unit).set_index(CUSTOMER_ID)
        values = durations.loc[frame[CUSTOMER_ID].astype(str), [DURATION, EVENT]].to_numpy()
    out = frame.copy()
    out[DURATION] = values[:, 0].astype("float64")
    out[EVENT] = values[:, 1].astype("int8")
    return out


def censor_at(frame: pd.DataFrame, when: pd.Timestamp) -> pd.DataFrame:
    """The rows as if the data ended at `when` (midnight): a churn on or after it, or a follow-up past it, is
    censored there, in `survival_snapshots`' days. The trainer censors its training rows at the first
    validation date, so no training outcome reaches into the period it is judged on."""
    if frame[AS_OF].isna().all():
        return frame  # one-table data: no dates to censor at
    limit = to_timestamp_ns(when) - pd.to_datetime(frame[AS_OF]).to_numpy("datetime64[ns]").view("int64")
    limit = limit // DAY_NS  # whole days from as_of to `when`
    past = frame[DURATION].to_numpy() > limit
    out = frame.copy()
    out.loc[past, DURATION] = (limit[past] + 1).astype("float64")
    out.loc[past, EVENT] = 0
    return out
