"""The engine's text features: sentiment aggregates and negative texts per aspect, from scored event texts.

`features.engine` calls these with the events it kept (before `as_of`, counted types) already coded per
customer; each returns whole columns, one value per customer, so they are as batch invariant as the rest.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import pandas as pd

from features.columns import ASPECT, SENTIMENT

DAY_NS = 86_400 * 1_000_000_000
NEGATIVE_SENTIMENT = -0.3  # a text with score below this counts as negative in `share_negative`


def aspect_feature_names(aspect: str, window: int) -> tuple[str, str]:
    """(`n_texts_about_<aspect>_<window>d`, `n_negative_about_<aspect>_<window>d`): the aspect's name in lower
    case, accents dropped, with runs of anything but ASCII letters and digits as one `_` ("Late Flight" ->
    `late_flight`, "Frühstück" -> `fruhstuck`)."""
    if not isinstance(aspect, str):
        raise ValueError(f"aspect {aspect!r}: aspect names are text")
    return _aspect_feature_names(aspect, window)


@functools.lru_cache(maxsize=1024, typed=True)  # typed: a window of 90.0 names "90.0d", not 90's "90d"
def _aspect_feature_names(aspect: str, window: int) -> tuple[str, str]:
    """`aspect_feature_names` for a text, once per (aspect, window): each request asks for every aspect's."""
    ascii_name = unicodedata.normalize("NFKD", aspect).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^0-9a-z]+", "_", ascii_name.lower()).strip("_")
    if not slug:
        raise ValueError(
            f"aspect {aspect!r}: a feature name needs a Latin letter or a digit in it; rename the aspect in its "
            "taxonomy (e.g. a romanised name)"
        )
    return f"n_texts_about_{slug}_{window}d", f"n_negative_about_{slug}_{window}d"


def check_aspect_names(aspects: tuple[str, ...]) -> None:
    """Raise `ValueError` unless every aspect names its own features (text, sluggable, no two alike)."""
    if isinstance(aspects, str):
        raise ValueError(f"aspects: a list of names, not the one string {aspects!r}")
    seen: dict[str, str] = {}
    for aspect in aspects:
        name = aspect_feature_names(aspect, 0)[0]
        if name in seen:
            raise ValueError(f"aspects {seen[name]!r} and {aspect!r} would make the same feature names")
        seen[name] = aspect


def sentiment_block(
    events: pd.DataFrame,
    keep: np.ndarray,
    customer: np.ndarray,
    age: np.ndarray,
    longest: int,
    n_customers: int,
) -> dict[str, np.ndarray]:
    """Texts in the longest window, their mean, lowest and share of negative scores, and the newest score."""
    longest_name = f"{longest}d"
    nan = np.full(n_customers, np.nan)
    if SENTIMENT not in events.columns:
        raise ValueError("this feature schema needs a `sentiment` score column on the events")
    score = events[SENTIMENT].to_numpy(dtype="float64")[keep]
    scored = ~np.isnan(score)
    recent = scored & (age <= longest * DAY_NS)
    n_texts = np.bincount(customer[recent], minlength=n_customers).astype("float64")
    total = np.bincount(customer[recent], weights=score[recent], minlength=n_customers)
    negative = np.bincount(customer[recent & (score < NEGATIVE_SENTIMENT)], minlength=n_customers)
    lowest = np.full(n_customers, np.inf)
    np.minimum.at(lowest, customer[recent], score[recent])
    has = n_texts > 0
    # Most recent scored text (any age): order by customer, then newest first (smallest age).
    idx = np.flatnonzero(scored)
    last = nan.copy()
    if idx.size:
        order = idx[np.lexsort((age[idx], customer[idx]))]
        first_of_customer = np.r_[True, customer[order][1:] != customer[order][:-1]]
        chosen = order[first_of_customer]
        last[customer[chosen]] = score[chosen]
    return {
        f"n_texts_{longest_name}": n_texts,
        f"sentiment_mean_{longest_name}": np.divide(total, n_texts, out=nan.copy(), where=has),
        f"sentiment_min_{longest_name}": np.where(has, lowest, np.nan),
        f"sentiment_share_negative_{longest_name}": np.divide(negative, n_texts, out=nan.copy(), where=has),
        "sentiment_last": last,
    }


_FEW_TEXTS = 512  # below this, aspect names are looked up in a dict (~10x faster than pandas' index)


def aspect_block(
    events: pd.DataFrame,
    keep: np.ndarray,
    customer: np.ndarray,
    age: np.ndarray,
    aspects: tuple[str, ...],
    longest: int,
    n_customers: int,
) -> dict[str, np.ndarray]:
    """Per aspect: the customer's negative texts (sentiment below `NEGATIVE_SENTIMENT`) about it in the longest
    window. A text about none of `aspects` (the model's "none", or a name the schema lacks) counts nowhere."""
    if ASPECT not in events.columns:
        raise ValueError(
            "this feature schema needs an `aspect` column on the events (the aspect of each text)"
        )
    named = events[ASPECT]
    if len(named) <= _FEW_TEXTS and isinstance(named.dtype, pd.StringDtype):  # a request's events
        lookup = {aspect: j for j, aspect in enumerate(aspects)}
        code = np.fromiter(
            (lookup.get(v, -1) if type(v) is str else -1 for v in named.to_numpy(dtype=object)),
            dtype=np.int64,
            count=len(named),
        )
    else:
        missing = named.isna().to_numpy()
        code = pd.Index(aspects).get_indexer(named.astype(str)).astype(np.int64)
        code[missing] = -1
    code = code[keep]
    score = events[SENTIMENT].to_numpy(dtype="float64")[keep]
    about = (code >= 0) & ~np.isnan(score) & (age <= longest * DAY_NS)
    out = {}
    for which, counted in enumerate((about, about & (score < NEGATIVE_SENTIMENT))):
        table = np.bincount(
            customer[counted].astype(np.int64) * len(aspects) + code[counted],
            minlength=n_customers * len(aspects),
        ).reshape(n_customers, len(aspects))
        for j, aspect in enumerate(aspects):
            out[aspect_feature_names(aspect, longest)[which]] = table[:, j].astype("float64")
    return out
