"""Event texts -> sentiment (and, for a churn model with aspect features, aspects) through the shared cache,
each distinct normalised text scored once.

Both engines first collect the texts the caches lack (`unscored_texts`), score them in one place
(`score_new_texts`), and then every read finds its texts in the caches (`text_sentiment`, `text_aspects`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from batch.plan import EVENTS, READ_BATCH_ROWS, BatchPlan, SentimentSource
from batch.read import read_file_batches
from batch.workers import aspect_labeler, sentiment_scorer
from features.text import normalise_texts

if TYPE_CHECKING:
    from batch.buckets import Split

logger = logging.getLogger(__name__)


def _distinct_texts(texts: pa.ChunkedArray | pa.Array) -> tuple[list[str | None], np.ndarray]:
    """(distinct values normalised (`features.text`), None for missing or blank; each row's index into them,
    -1 for null)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_encode()
    codes = texts.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    # Only the values rows use: a file's dictionary may be shared by row groups and list many more.
    used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(texts.dictionary)))
    remap = np.full(len(texts.dictionary) + 1, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    values = normalise_texts(texts.dictionary.take(pa.array(used)).to_pylist())
    return values, remap[codes]


def text_sentiment(plan: BatchPlan, texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Sentiment of each event text (NaN without text), as `features.pipeline.add_sentiment` would give it:
    normalised texts, blanks skipped, scored through the shared cache so each distinct text is scored once.

    Works on the distinct values (dictionary encoding): event texts repeat, and most events have none.
    """
    assert plan.sentiment is not None
    values, codes = _distinct_texts(texts)
    per_value = plan.sentiment.cache().score(values, _LazyScorer(plan.sentiment, plan.tracking_uri))
    out = np.full(len(codes), np.nan)
    valid = codes >= 0
    out[valid] = per_value[codes[valid]]
    return out


def text_aspects(plan: BatchPlan, texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """What each event text is about (None without text), as `features.pipeline.add_aspects` would say it:
    normalised texts, blanks skipped, through the aspect cache (each distinct text labelled once)."""
    assert plan.aspects is not None
    values, codes = _distinct_texts(texts)
    labeler = aspect_labeler(plan.aspects, plan.tracking_uri)
    per_value = np.array(
        labeler.labels_of(plan.aspects.cache().score(values, labeler.label_new)), dtype=object
    )
    out = np.full(len(codes), None, dtype=object)
    valid = codes >= 0
    out[valid] = per_value[codes[valid]]
    return out


class _LazyScorer:
    """Loads the sentiment model only when the cache misses: a warm cache never loads torch weights."""

    def __init__(self, source: SentimentSource, tracking_uri: str) -> None:
        self.source, self.tracking_uri = source, tracking_uri

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        scorer = sentiment_scorer(self.source, self.tracking_uri)
        return np.asarray(getattr(scorer, "sentiment_scores", scorer)(texts), dtype="float64")


def unscored_texts(plan: BatchPlan, split: Split) -> list[str]:
    """Distinct event texts of a split (normalised, as `add_sentiment` scores them) that the cache lacks.

    Reads only the text column. Both engines collect these first and score them in one place, so each new
    text is scored exactly once even when several tasks meet it.
    """
    if plan.sentiment is None or split.kind != EVENTS:
        return []
    caches = [source.cache() for source in (plan.sentiment, plan.aspects) if source is not None]
    for cache in caches:
        cache.refresh()
    table_spec = plan.spec.events
    missing: dict[str, None] = {}
    for batch in read_file_batches(
        plan.events_files[split.file_index], table_spec.read_options, [plan.text_column], split.row_groups,
        READ_BATCH_ROWS,
    ):  # fmt: skip
        texts = [t for t in _distinct_texts(batch.column(plan.text_column))[0] if t is not None]
        for cache in caches:
            for text, known in zip(texts, cache.known_texts(texts), strict=True):
                if not known:
                    missing[text] = None
    return list(missing)


def score_new_texts(plan: BatchPlan, texts: Sequence[str]) -> int:
    """Score texts (in this process) into the sentiment cache, and label them into the aspect cache when the
    churn model counts aspects; returns how many were new to either."""
    if plan.sentiment is None or not texts:
        return 0
    cache = plan.sentiment.cache()
    before = len(cache)
    cache.score(list(texts), _LazyScorer(plan.sentiment, plan.tracking_uri))
    new = len(cache) - before
    if plan.aspects is not None:
        labels = plan.aspects.cache()
        before = len(labels)
        labels.score(list(texts), aspect_labeler(plan.aspects, plan.tracking_uri).label_new)
        new = max(new, len(labels) - before)
    return new
