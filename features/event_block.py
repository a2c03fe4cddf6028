"""The event features of the one engine: counts, recency and trends per window and event type, value sums,
lifetime and text aggregates, for every customer at once from integer codes (`np.bincount`).

`features.engine.build_customer_features` calls `event_block`; this is its arithmetic. For millions of events it
splits the customers between threads (`feature_threads`, Arrow's CPU count: one in a batch worker).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from features.columns import CUSTOMER_ID, EVENT_TYPE, TIMESTAMP
from features.gaps import gap_block
from features.text_features import DAY_NS, aspect_block, sentiment_block

if TYPE_CHECKING:
    from features.engine import FeatureSchema

PARALLEL_MIN_EVENTS = 1_000_000  # below this, one thread: splitting costs more than it saves


def feature_threads() -> int:
    """Threads the engine may use: Arrow's CPU count (the machine's cores; `batch.workers.limit_threads` sets
    it to one in each worker process)."""
    return max(1, pa.cpu_count())


def event_block(
    events: pd.DataFrame,
    as_of_ns: int,
    schema: FeatureSchema,
    ids: pd.Index,
    signup_ns: np.ndarray | None,
    customer_codes: np.ndarray | None = None,
) -> dict[str, np.ndarray | tuple[np.ndarray, ...]]:
    """The event features of `ids` from `events` before `as_of`: per feature, its values in `ids` order (an
    array, or a tuple of consecutive parts when threads computed it).

    `customer_codes`: each event's position in `ids` (-1: none), when the caller has it. Events that count
    are found once; for many events the customers are then split into `feature_threads()` ranges, each
    computed in its own thread (numpy releases the GIL) from that range's events, in their order. A customer's
    features depend on its own events alone, summed in the same order, so the split changes no bit."""
    n_customers = len(ids)
    times = events[TIMESTAMP].to_numpy("datetime64[ns]").view("int64")
    customer = _codes(events[CUSTOMER_ID], ids) if customer_codes is None else customer_codes
    # One lookup gives both the counted type and whether the type is excluded (e.g. the churn event).
    kind_code = _codes(
        events[EVENT_TYPE], _kinds(tuple(schema.event_types), tuple(schema.excluded_event_types))
    )
    keep = times < as_of_ns
    keep &= customer >= 0
    keep &= kind_code < len(
        schema.event_types
    )  # unseen types (-1) count as "other"; excluded ones not at all
    threads = feature_threads()
    if threads < 2 or len(events) < PARALLEL_MIN_EVENTS or n_customers < threads:
        out = _kept_block(events, keep, customer, kind_code, times, as_of_ns, schema, 0, n_customers)
    else:
        bounds = np.linspace(0, n_customers, threads + 1).astype(np.int64)

        def part(k: int) -> dict[str, np.ndarray]:
            low, high = int(bounds[k]), int(bounds[k + 1])
            mine = keep & (customer >= low)
            mine &= customer < high
            # A frame of its own per thread (the same arrays): pandas objects are not shared across threads.
            own = events.copy(deep=False)
            return _kept_block(own, mine, customer, kind_code, times, as_of_ns, schema, low, high - low)

        with cf.ThreadPoolExecutor(threads, thread_name_prefix="features") as pool:
            parts = list(pool.map(part, range(threads)))
        # Kept as parts: the feature frame copies each into its rows (a concatenation would copy twice).
        out = {name: tuple(p[name] for p in parts) for name in parts[0]}
        out["days_since_first_event"] = np.concatenate(out["days_since_first_event"])
    if signup_ns is not None:
        tenure = np.where(signup_ns == np.iinfo(np.int64).min, np.nan, (as_of_ns - signup_ns) / DAY_NS)
        fallback = out["days_since_first_event"]
        out["tenure_days"] = np.where(np.isnan(tenure), fallback, tenure)
    else:
        out["tenure_days"] = out["days_since_first_event"]
    return out


@functools.lru_cache(maxsize=64)
def _kinds(counted: tuple[str, ...], excluded: tuple[str, ...]) -> pd.Index:
    """The counted types, then the excluded ones (one lookup tells both), once per schema (an Index is
    immutable)."""
    return pd.Index([*counted, *excluded])


def _kept_block(
    events: pd.DataFrame,
    keep: np.ndarray,
    customer: np.ndarray,
    kind_code: np.ndarray,
    times: np.ndarray,
    as_of_ns: int,
    schema: FeatureSchema,
    first: int,
    n_customers: int,
) -> dict[str, np.ndarray]:
    """The features of the customers `first` .. `first + n_customers - 1` from the events `keep` selects
    (all of theirs that count). Counts stay int64 here (their float64 copy is the feature frame's): for a
    million customers the per-type table alone is 45M cells."""
    customer = customer[keep]
    if first:
        customer -= first
    kept_times = times[keep]
    age = as_of_ns - kept_times  # > 0 ns
    type_code = kind_code[keep]
    n_types = len(schema.counted_types)
    type_code[type_code < 0] = n_types - 1  # unseen types count as "other"

    # Each event falls in one age bucket; cumulative sums over buckets give every window (and the window
    # before the trend window) from a single bincount pass.
    trend = schema.trend_window
    edges = sorted({*schema.windows, 2 * trend})
    n_buckets = len(edges) + 1
    bucket = np.zeros(len(age), dtype=np.int8)  # how many edges the age is past: searchsorted(side="left")
    for edge in edges:
        bucket += age > edge * DAY_NS
    window_at = {w: edges.index(w) for w in edges}

    def windowed(cells: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
        """Per key and window: the count (or sum of `weights`) of events, from their (key, bucket) cells."""
        table = np.bincount(cells, weights=weights, minlength=size * n_buckets).reshape(size, n_buckets)
        # In place, column by column: np.cumsum along a 5-wide axis is slower.
        for j in range(1, n_buckets):
            table[:, j] += table[:, j - 1]
        return table

    # Cells in int64 (customers x types x buckets can pass 2^31); computed once: counts and value sums use it.
    customer_cell = np.multiply(customer, n_buckets, dtype=np.int64)
    customer_cell += bucket
    out: dict[str, np.ndarray] = {}
    totals = windowed(customer_cell, n_customers)
    for w in schema.windows:
        out[f"n_events_{w}d"] = totals[:, window_at[w]]
    newest_age = _group_min(customer, age, n_customers, np.iinfo(np.int64).max)
    oldest_age = _group_max(customer, age, n_customers, -1)
    never = newest_age == np.iinfo(np.int64).max
    out["days_since_last_event"] = np.where(never, np.nan, newest_age / DAY_NS)
    out["days_since_first_event"] = np.where(never, np.nan, oldest_age / DAY_NS)
    recent, doubled = window_at[trend], window_at[2 * trend]
    out[f"trend_events_{trend}d"] = _trend(totals[:, recent], totals[:, doubled] - totals[:, recent])

    pair = np.multiply(customer, n_types, dtype=np.int64)
    pair += type_code
    pair_cell = pair * n_buckets
    pair_cell += bucket
    by_type = windowed(pair_cell, n_customers * n_types).reshape(n_customers, n_types, n_buckets)
    del pair_cell
    type_newest = _group_min(pair, age, n_customers * n_types, np.iinfo(np.int64).max).reshape(
        n_customers, n_types
    )
    for t, kind in enumerate(schema.counted_types):
        for w in schema.windows:
            out[f"n_{kind}_{w}d"] = by_type[:, t, window_at[w]]
        newest = type_newest[:, t]
        out[f"days_since_{kind}"] = np.where(newest == np.iinfo(np.int64).max, np.nan, newest / DAY_NS)
        out[f"trend_{kind}_{trend}d"] = _trend(
            by_type[:, t, recent], by_type[:, t, doubled] - by_type[:, t, recent]
        )

    longest = schema.windows[-1]
    in_longest = age <= longest * DAY_NS
    all_time_sums: dict[str, np.ndarray] = {}
    for value in schema.value_columns:
        raw = events[value].to_numpy(dtype="float64")[keep]
        present = ~np.isnan(raw)
        # astype: np.bincount returns int64 when no event is left (one customer without history, online).
        sums = windowed(customer_cell, n_customers, np.where(present, raw, 0.0)).astype("float64", copy=False)
        for w in schema.windows:
            out[f"sum_{value}_{w}d"] = sums[:, window_at[w]]
        all_time_sums[value] = sums[:, -1]
        mask = in_longest & present
        n_longest = np.bincount(customer[mask], minlength=n_customers)
        out[f"mean_{value}_{longest}d"] = np.divide(
            sums[:, window_at[longest]], n_longest, out=np.full(n_customers, np.nan), where=n_longest > 0
        )
        peak = _group_max(customer[mask], raw[mask], n_customers, -np.inf)
        out[f"max_{value}_{longest}d"] = np.where(np.isneginf(peak), np.nan, peak)
        out[f"trend_{value}_{trend}d"] = _trend(sums[:, recent], sums[:, doubled] - sums[:, recent])

    if schema.lifetime:
        out["n_events_all"] = totals[:, -1]
        for t, kind in enumerate(schema.counted_types):
            out[f"n_{kind}_all"] = by_type[:, t, -1]
        for value in schema.value_columns:
            out[f"sum_{value}_all"] = all_time_sums[value]
        first = out["days_since_first_event"]
        out["events_per_30d"] = totals[:, -1] / np.maximum(first, 1.0) * 30.0  # NaN without events
        out.update(gap_block(customer, kept_times, n_customers))

    if schema.use_sentiment:
        out.update(sentiment_block(events, keep, customer, age, longest, n_customers))
        if schema.aspects:
            out.update(aspect_block(events, keep, customer, age, schema.aspects, longest, n_customers))

    return out


def _codes(values: pd.Series, categories: pd.Index) -> np.ndarray:
    """Position of each value in `categories` (-1 if absent), using categorical codes when available."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        # int32: half the memory of int64 for 20M events (a schema has far fewer than 2^31 ids or types).
        lookup = np.append(categories.get_indexer(values.cat.categories.astype(str)), -1).astype(np.int32)
        return lookup[values.cat.codes.to_numpy()]  # code -1 (missing) takes the appended -1
    if len(values) <= _FEW_VALUES and isinstance(values.dtype, pd.StringDtype):
        return few_codes(values, categories)
    return categories.get_indexer(values.astype(str)).astype(np.int32)


_FEW_VALUES = 512  # a request's events: a dict lookup beats pandas' index machinery (~20 vs ~160 us)


def few_codes(values: pd.Series, categories: pd.Index) -> np.ndarray:
    """`categories.get_indexer(values.astype(str))` for a few text values (a `StringDtype` column) and unique
    text categories: a missing value, as every value the categories lack, is -1."""
    lookup = {name: i for i, name in enumerate(categories.tolist())}
    if len(lookup) < len(categories):  # repeated categories: pandas refuses them, as it always did
        return categories.get_indexer(values.astype(str)).astype(np.int32)
    texts = values.to_numpy(dtype=object)
    return np.fromiter(
        (lookup.get(v, -1) if type(v) is str else -1 for v in texts), dtype=np.int32, count=len(texts)
    )


def _group_max(keys: np.ndarray, values: np.ndarray, size: int, fill: float | int) -> np.ndarray:
    out = np.full(size, fill, dtype=values.dtype)
    np.maximum.at(out, keys, values)
    return out


def _group_min(keys: np.ndarray, values: np.ndarray, size: int, fill: float | int) -> np.ndarray:
    out = np.full(size, fill, dtype=values.dtype)
    np.minimum.at(out, keys, values)
    return out


def _trend(recent: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Relative change of the recent window against the one before it; 0 when both are empty."""
    return (recent - earlier) / (np.abs(earlier) + 1.0)
