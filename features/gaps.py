"""The gaps between a customer's consecutive events (lifetime features): their mean and spread in days."""

from __future__ import annotations

import numpy as np


def sorted_pairs(
    customer: np.ndarray, minutes: np.ndarray, n_customers: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (customer, minute) pairs sorted by customer, then minute.

    Only the sorted values are needed, not which event each was, so one sort of the int64 key customer x
    (minutes spanned) + minute does it, several times faster than a two-key lexsort of 20M events, with the same
    values. The lexsort remains for data whose key would not fit (customers x minutes spanned >= 2^62)."""
    if len(minutes) == 0:
        return customer, minutes
    low = int(minutes.min())
    spread = int(minutes.max()) - low + 1
    if n_customers * spread >= 2**62:
        order = np.lexsort((minutes, customer))
        return customer[order], minutes[order]
    key = np.sort(customer * spread + (minutes - low))
    return key // spread, key % spread + low


def gap_block(customer: np.ndarray, times_ns: np.ndarray, n_customers: int) -> dict[str, np.ndarray]:
    """Mean and standard deviation of the days between a customer's consecutive events.

    Computed from whole minutes (each time floored to its minute) in exact integer arithmetic, then one
    float formula: so the result does not depend on the order events arrive in, nor on any batch. Minutes keep
    the integers small: pandas times span at most 585 years (3.1e8 minutes), whose square fits in int64.
    """
    minutes = times_ns // 60_000_000_000
    by_customer, by_time = sorted_pairs(customer, minutes, n_customers)
    same = by_customer[1:] == by_customer[:-1]
    gaps = (by_time[1:] - by_time[:-1])[same]  # >= 0
    owner = by_customer[1:][same]
    n_gaps = np.bincount(owner, minlength=n_customers)
    # `owner` is sorted: each customer's gaps are one run, summed by reduceat (exact integers, as np.add.at).
    span = np.zeros(n_customers, dtype=np.int64)
    squares = np.zeros(n_customers, dtype=np.int64)
    if owner.size:
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        span[owner[starts]] = np.add.reduceat(gaps, starts)
        squares[owner[starts]] = np.add.reduceat(gaps * gaps, starts)  # at most span^2: no overflow either
    mean = np.divide(span, n_gaps, out=np.full(n_customers, np.nan), where=n_gaps > 0)
    variance = np.divide(squares, n_gaps, out=np.full(n_customers, np.nan), where=n_gaps > 1) - mean * mean
    return {
        "gap_mean_days": mean / 1_440.0,
        "gap_sd_days": np.sqrt(np.maximum(variance, 0.0)) / 1_440.0,
    }
