"""The gaps between a customer's consecutive events (lifetime features): their mean and spread in days."""

from __future__ import annotations

import numpy as np


def sorted_steps(
    customer: np.ndarray, minutes: np.ndarray, n_customers: int
) -> tuple[np.ndarray, np.ndarray]:
    """The events' customers sorted, and beside each the minutes since the customer's previous event (0 at a
    customer's first event).

    One sort of the int64 key customer << bits | minute (bits: enough for the minutes spanned) does it: several
    times faster than a two-key lexsort of 20M events, and shifts and differences instead of divisions to take
    it apart. The lexsort remains for data whose key would not fit (customers x minutes spanned >= 2^62)."""
    if len(minutes) == 0:
        return customer, minutes
    low = int(minutes.min())
    bits = (int(minutes.max()) - low).bit_length()
    if n_customers << bits < 2**62:
        key = (customer.astype(np.int64) << bits) | (minutes - low)
        key.sort()
        by_customer = key >> bits
        step = _steps(key)  # within a customer: the difference of the minutes
    else:
        order = np.lexsort((minutes, customer))
        by_customer = customer[order]
        step = _steps(minutes[order])
    step[1:][by_customer[1:] != by_customer[:-1]] = 0  # a customer's first event
    return by_customer, step


def _steps(values: np.ndarray) -> np.ndarray:
    """values[i] - values[i - 1], and 0 first (np.diff with prepend copies the whole array once more)."""
    out = np.empty_like(values)
    out[0] = 0
    np.subtract(values[1:], values[:-1], out=out[1:])
    return out


def gap_block(customer: np.ndarray, times_ns: np.ndarray, n_customers: int) -> dict[str, np.ndarray]:
    """Mean and standard deviation of the days between a customer's consecutive events.

    Computed from whole minutes (each time floored to its minute) in exact integer arithmetic, then one
    float formula: so the result does not depend on the order events arrive in, nor on any batch. Minutes keep
    the integers small: pandas times span at most 585 years (3.1e8 minutes), whose square fits in int64.
    """
    minutes = times_ns // 60_000_000_000
    by_customer, step = sorted_steps(customer, minutes, n_customers)
    n_gaps = np.zeros(n_customers, dtype=np.int64)
    span = np.zeros(n_customers, dtype=np.int64)
    squares = np.zeros(n_customers, dtype=np.int64)
    if by_customer.size:
        # Each customer's events are one run of the sorted arrays: summed by reduceat (exact integers).
        starts = np.flatnonzero(np.r_[True, by_customer[1:] != by_customer[:-1]])
        owner = by_customer[starts]
        n_gaps[owner] = np.diff(starts, append=len(by_customer)) - 1
        span[owner] = np.add.reduceat(step, starts)
        squares[owner] = np.add.reduceat(step * step, starts)  # at most span^2: no overflow either
    mean = np.divide(span, n_gaps, out=np.full(n_customers, np.nan), where=n_gaps > 0)
    variance = np.divide(squares, n_gaps, out=np.full(n_customers, np.nan), where=n_gaps > 1) - mean * mean
    return {
        "gap_mean_days": mean / 1_440.0,
        "gap_sd_days": np.sqrt(np.maximum(variance, 0.0)) / 1_440.0,
    }
