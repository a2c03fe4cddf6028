"""Event-text sentiment scored once per distinct text and sentiment model, kept in a Parquet cache.

Layout: `<cache_dir>/sentiment/<scoring_id>/part-<uuid>.parquet` (`models.lineage.scoring_id`: the model's file
digest, arithmetic and inference version, so no other model can ever read these scores), columns `text_hash` (hex BLAKE2b-128 of the
UTF-8 text) and `score` (float64 in [-1, 1]). Parts are only ever added, each written to a temporary name and
renamed, so several processes (the nightly batch job, the service, `churnsense predict-sentiment`) can share one
cache without locks; a text scored twice by two processes at once is harmless (same model, same score).

    scores = score_texts_cached(texts, scorer, cache_dir, scoring_id)

calls `scorer` only on texts the cache has never seen for that model. Texts are used exactly as given:
normalise them first (`features.text`; `models.text_scoring.CachedTextScorer` does).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnsense.files import atomic_write_parquet

logger = logging.getLogger(__name__)

CACHE_SCHEMA = pa.schema([("text_hash", pa.string()), ("score", pa.float64())])
TextScorer = Callable[[Sequence[str]], np.ndarray]  # texts -> scores in [-1, 1]

_open_caches: dict[Path, SentimentCache] = {}
_open_lock = threading.Lock()


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """Hex BLAKE2b-128 digest of each text's UTF-8 bytes (object array). Stable across processes and versions."""
    return np.array(
        [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts], dtype=object
    )


def cache_folder(cache_dir: str | Path, model_version: str) -> Path:
    """Where the parts for one sentiment-model version live."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model_version)).strip("._") or "unversioned"
    return Path(cache_dir).expanduser() / "sentiment" / safe


class SentimentCache:
    """The hash -> score table of one model version, loaded once per process and refreshed with new parts.

    Use `open_cache` to share one instance per folder within a process (the service keeps it for its lifetime).
    If two processes scored the same new text at once, its entries in both parts agree up to the scorer's
    rounding; the part read first wins.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._loaded: set[str] = set()
        self._scores: dict[str, float] = {}
        self._by_text: dict[str, float] = {}  # texts this process has looked up: no rehashing
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._scores)

    def refresh(self) -> int:
        """Read parts written since the last call (by this or another process); returns how many entries came."""
        if not self.folder.is_dir():
            return 0
        new = sorted(p for p in self.folder.glob("part-*.parquet") if p.name not in self._loaded)
        if not new:
            return 0
        table = pa.concat_tables([pq.read_table(p, schema=CACHE_SCHEMA) for p in new])
        self._append(table.column("text_hash").to_pylist(), table.column("score").to_pylist())
        self._loaded.update(p.name for p in new)
        return table.num_rows

    def _append(self, hashes: Sequence[str], scores: Sequence[float]) -> None:
        known = self._scores
        for key, value in zip(hashes, scores, strict=True):
            known.setdefault(key, float("nan") if value is None else float(value))

    def contains(self, hashes: Sequence[str]) -> list[bool]:
        """Whether each hash has a cached score."""
        known = self._scores
        return [h in known for h in hashes]

    def lookup(self, hashes: Sequence[str]) -> np.ndarray:
        """Scores for `hashes`, NaN where the cache has none."""
        known = self._scores
        return np.array([known.get(h, np.nan) for h in hashes], dtype="float64")

    def add(self, hashes: Sequence[str], scores: np.ndarray) -> Path | None:
        """Write one new part (temporary name, then rename) and make it visible to this instance."""
        if len(hashes) == 0:
            return None
        name = f"part-{uuid.uuid4().hex}.parquet"
        table = pa.table(
            {"text_hash": pa.array(list(hashes), pa.string()), "score": pa.array(scores, pa.float64())},
            schema=CACHE_SCHEMA,
        )
        atomic_write_parquet(table, self.folder / name)
        self._append(list(hashes), np.asarray(scores, dtype="float64").tolist())
        self._loaded.add(name)
        return self.folder / name

    def score(self, texts: Sequence[str | None], scorer: TextScorer, batch_size: int = 4096) -> np.ndarray:
        """Score `texts`, calling `scorer` only on distinct texts not in the cache; None/NA gives NaN.

        New scores are written in parts of at most `batch_size` texts, so an interrupted run keeps what it did.
        """
        with self._lock:
            self.refresh()
            codes = np.full(len(texts), -1, dtype=np.int64)
            distinct: dict[str, int] = {}
            for i, text in enumerate(texts):
                if isinstance(text, str):
                    codes[i] = distinct.setdefault(text, len(distinct))
                elif text is not None and not pd.isna(text):
                    codes[i] = distinct.setdefault(str(text), len(distinct))
            keys = list(distinct)
            memo = self._by_text
            fresh = [k for k in keys if k not in memo]
            if fresh:
                hashes = text_hashes(fresh)
                known = self._scores
                # Membership, not NaN: a scorer may legitimately return NaN, and that answer is cached too.
                missing = [i for i, h in enumerate(hashes) if h not in known]
                for start in range(0, len(missing), batch_size):
                    chunk = missing[start : start + batch_size]
                    new = np.asarray(scorer([fresh[i] for i in chunk]), dtype="float64").reshape(-1)
                    if len(new) != len(chunk):
                        raise ValueError(
                            f"sentiment scorer returned {len(new)} scores for {len(chunk)} texts"
                        )
                    self.add(hashes[chunk], new)
                if missing:
                    logger.info(
                        "sentiment cache %s: scored %d new texts (%d cached)",
                        self.folder, len(missing), len(keys) - len(missing),
                    )  # fmt: skip
                memo.update(zip(fresh, self.lookup(hashes).tolist(), strict=True))
            scores = np.array([memo[k] for k in keys], dtype="float64")
            out = np.full(len(texts), np.nan)
            present = codes >= 0
            out[present] = scores[codes[present]]
            return out

    def known_texts(self, texts: Sequence[str]) -> list[bool]:
        """Whether each (non-missing) text has a cached score, without scoring anything."""
        with self._lock:
            memo, known = self._by_text, self._scores
            fresh = [t for t in dict.fromkeys(texts) if t not in memo]
            for text, key in zip(fresh, text_hashes(fresh), strict=True):
                if key in known:
                    memo[text] = known[key]
            return [t in memo for t in texts]


def open_cache(cache_dir: str | Path, model_version: str) -> SentimentCache:
    """The process-wide `SentimentCache` for this folder and model version (created on first use)."""
    folder = cache_folder(cache_dir, model_version).resolve()
    with _open_lock:
        cache = _open_caches.get(folder)
        if cache is None:
            cache = _open_caches[folder] = SentimentCache(folder)
        return cache


def score_texts_cached(
    texts: Sequence[str | None], scorer: TextScorer, cache_dir: str | Path, model_version: str
) -> np.ndarray:
    """Sentiment score of each text in [-1, 1], scoring only texts the cache has not seen for `model_version`.

    Args:
        texts: the texts, as the scorer should see them (None/NA gives NaN, the scorer never sees it).
        scorer: texts -> scores, e.g. the sentiment model wrapper's scalar score (P(pos) - P(neg)).
        cache_dir: root folder of the cache, shared by every process that scores texts.
        model_version: the sentiment model's version: a new version starts an empty cache.
    Returns:
        float64 array aligned with `texts`.
    """
    return open_cache(cache_dir, model_version).score(texts, scorer)
