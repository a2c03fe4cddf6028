"""What a table of features looks like (a profile), and how far another table has moved from it (drift).

    reference = profile_frame(frame, numeric=[...], categorical=[...])   # at training, logged with the run
    table = drift_table(reference, current_frame)                       # when monitoring: PSI per column

A numeric column is cut at the deciles of its reference values (ties collapse bins: a count that is mostly 0
gets few); a categorical one keeps its 20 most frequent values and pools the rest as "(other)". Missing values
are one more bin in both, so a column that starts arriving empty drifts too. Drift is the population stability
index, PSI = sum((now - then) * ln(now / then)) over bins (shares floored at 1e-4): under 0.1 usually means no
change worth a look, above 0.25 a shift (the thresholds live in the monitor's config).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.columns import EVENT_TYPE, TEXT, TIMESTAMP
from features.text import normalise_texts

N_BINS = 10
MAX_CATEGORIES = 20
OTHER = "(other)"
FLOOR = 1e-4  # an empty bin on one side would make PSI infinite


@dataclass(frozen=True)
class ColumnProfile:
    """One column's reference distribution: bins and the share of rows in each, the last bin being missing."""

    name: str
    kind: str  # "numeric" or "categorical"
    edges: tuple[float, ...]  # numeric: inner cut points, ascending (bin i holds edges[i-1] <= x < edges[i])
    categories: tuple[str, ...]  # categorical: the values kept (others pool into OTHER)
    shares: tuple[float, ...]  # per bin, then (other), then missing; sums to 1
    n: int

    def labels(self) -> list[str]:
        """A readable name per bin, in `shares` order."""
        if self.kind == "numeric":
            bounds = ["-inf", *(f"{e:.4g}" for e in self.edges), "inf"]
            names = [f"[{lo}, {hi})" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        else:
            names = [*self.categories, OTHER]
        return [*names, "(missing)"]

    def counts(self, values: Any) -> np.ndarray:
        """Rows of `values` per bin of this profile (the same bins, whatever the values)."""
        series = pd.Series(values)
        missing = series.isna().to_numpy()
        present = series[~missing]
        if self.kind == "numeric":
            numbers = pd.to_numeric(present, errors="coerce").to_numpy(dtype="float64")
            # A value that is not a number counts as missing: drift in what arrives, not a crash.
            bad = np.isnan(numbers)
            index = np.searchsorted(np.asarray(self.edges, dtype="float64"), numbers[~bad], side="right")
            inner = np.bincount(index, minlength=len(self.edges) + 1)
            return np.append(inner, int(missing.sum() + bad.sum())).astype("int64")
        position = {c: i for i, c in enumerate(self.categories)}
        index = np.array([position.get(str(v), len(self.categories)) for v in present], dtype="int64")
        inner = np.bincount(index, minlength=len(self.categories) + 1)
        return np.append(inner, int(missing.sum())).astype("int64")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ColumnProfile:
        return cls(
            name=str(raw["name"]),
            kind=str(raw["kind"]),
            edges=tuple(float(e) for e in raw["edges"]),
            categories=tuple(str(c) for c in raw["categories"]),
            shares=tuple(float(s) for s in raw["shares"]),
            n=int(raw["n"]),
        )


def column_profile(name: str, values: Any, kind: str) -> ColumnProfile:
    """The reference bins of one column and its shares in them."""
    series = pd.Series(values)
    present = series.dropna()
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    if kind == "numeric":
        numbers = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype="float64")
        if numbers.size:
            quantiles = np.quantile(numbers, np.linspace(0, 1, N_BINS + 1)[1:-1])
            edges = tuple(float(q) for q in np.unique(quantiles))
    elif kind == "categorical":
        top = present.astype(str).value_counts(sort=True)
        categories = tuple(sorted(top.index[:MAX_CATEGORIES].tolist()))
    else:
        raise ValueError(f"column kind {kind!r}: numeric or categorical")
    profile = ColumnProfile(name, kind, edges, categories, (), len(series))
    counts = profile.counts(series)
    total = max(int(counts.sum()), 1)
    return ColumnProfile(name, kind, edges, categories, tuple(float(c) / total for c in counts), len(series))


def profile_frame(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> dict[str, ColumnProfile]:
    """Profiles of the named columns of `frame`, by name."""
    out = {name: column_profile(name, frame[name], "numeric") for name in numeric}
    out |= {name: column_profile(name, frame[name], "categorical") for name in categorical}
    return out


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype="float64"), FLOOR)
    a = np.maximum(np.asarray(actual, dtype="float64"), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_table(reference: dict[str, ColumnProfile], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per profiled column that `frame` has: `psi`, the reference and current missing shares, rows then
    and now; sorted by PSI, largest first. Columns absent from `frame` are listed with PSI NaN."""
    rows = []
    for name, profile in reference.items():
        if name not in frame.columns:
            rows.append({"feature": name, "psi": np.nan, "missing_then": profile.shares[-1], "missing_now": np.nan,
                         "n_then": profile.n, "n_now": 0})  # fmt: skip
            continue
        counts = profile.counts(frame[name])
        shares = counts / max(int(counts.sum()), 1)
        rows.append(
            {
                "feature": name,
                "psi": psi(profile.shares, shares),
                "missing_then": profile.shares[-1],
                "missing_now": float(shares[-1]),
                "n_then": profile.n,
                "n_now": int(counts.sum()),
            }
        )
    table = pd.DataFrame(rows, columns=["feature", "psi", "missing_then", "missing_now", "n_then", "n_now"])
    return table.sort_values(["psi", "feature"], ascending=[False, True], na_position="last").reset_index(
        drop=True
    )


def profiles_to_json(profiles: dict[str, ColumnProfile]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in profiles.values()]


def profiles_from_json(raw: list[dict[str, Any]]) -> dict[str, ColumnProfile]:
    return {p.name: p for p in (ColumnProfile.from_dict(item) for item in raw)}


# --- what the events and texts look like: the event-type mix, text lengths, vocabulary ----------------------

WINDOW_DAYS = 90  # the events a profile of the event mix reads: those of the 90 days before `as_of`
VOCABULARY_SIZE = 20_000
_WORD = re.compile(r"[^\W\d_]+")


def recent_events(events: pd.DataFrame | None, as_of: Any, days: int = WINDOW_DAYS) -> pd.DataFrame:
    """`event_type` and `text_length` (characters of the normalised text; missing without a text) of the events
    in the `days` before `as_of` (canonical events table)."""
    if events is None or len(events) == 0:
        return pd.DataFrame(
            {EVENT_TYPE: pd.Series([], dtype="string"), "text_length": pd.Series([], dtype="float64"),
             TEXT: pd.Series([], dtype="string")}
        )  # fmt: skip
    end = pd.Timestamp(as_of)
    window = events[(events[TIMESTAMP] >= end - pd.Timedelta(days=days)) & (events[TIMESTAMP] < end)]
    texts = normalise_texts(window[TEXT]) if TEXT in window.columns else [None] * len(window)
    return pd.DataFrame(
        {
            EVENT_TYPE: window[EVENT_TYPE].astype("string").to_numpy(),
            "text_length": np.array([np.nan if t is None else len(t) for t in texts], dtype="float64"),
            TEXT: pd.array(texts, dtype="string"),
        }
    )


def words(texts: Any) -> list[str]:
    return [w for text in texts if isinstance(text, str) for w in _WORD.findall(text.lower())]


def vocabulary(texts: Any, size: int = VOCABULARY_SIZE) -> list[str]:
    """The `size` most frequent words of `texts` (lower case, letters only), most frequent first, ties in
    alphabetical order (the same texts give the same list)."""
    counts = Counter(words(texts))
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]]


def unseen_share(texts: Any, known: Any) -> float:
    """The share of the words of `texts` that are not in `known` (NaN without words)."""
    found = words(texts)
    if not found:
        return float("nan")
    known = set(known)
    return sum(w not in known for w in found) / len(found)
