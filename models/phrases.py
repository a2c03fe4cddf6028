"""Which phrase of a text drove its sentiment: occlusion over word windows, by the sentiment model itself.

    finder = PhraseFinder(classifier.labels)           # a `models.sentiment.SentimentClassifier`'s labels
    finder.find(["my bag was lost and nobody called back"], classifier.predict_proba)
    # [{"start": 3, "end": 15, "phrase": "bag was lost", "effect": -0.71}]

For a text of n words, each run of `window` consecutive words (3 by default; the whole text when shorter) is
deleted in turn and the text re-scored. The phrase is the run whose deletion moves P(negative) most, either way
(churn reads the negative side: a complaint's phrase is what made it negative, a compliment's what kept it
from being so). `effect` is P(negative) without the phrase minus P(negative) of the text: negative when the
phrase made the text more negative. `start` and `end` are character offsets into the text as given (normalise it first, as
`features.evidence` does, so they index the text an agent sees).

Occlusion measures what the model does without the phrase, so it is faithful by construction, unlike attention
weights; it costs one forward pass per window, paid once per distinct text (results are cached: the answer is a
function of the text and the model alone, as the sentiment scorer's forward pass is batch invariant).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

WINDOW_WORDS = 3
MAX_WORDS = 96  # words considered per text: the model reads at most `max_length` tokens anyway
_WORD = re.compile(r"\S+")


def word_spans(text: str, window: int = WINDOW_WORDS, max_words: int = MAX_WORDS) -> list[tuple[int, int]]:
    """(start, end) character offsets of every run of `window` consecutive words (all words if fewer)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)][:max_words]
    if not words:
        return []
    k = min(window, len(words))
    return [(words[i][0], words[i + k - 1][1]) for i in range(len(words) - k + 1)]


def without(text: str, start: int, end: int) -> str:
    """`text` with characters [start, end) deleted, the words either side joined by one space."""
    return f"{text[:start].rstrip()} {text[end:].lstrip()}".strip()


class PhraseFinder:
    """Occlusion phrases for one sentiment model's class probabilities (needs a `negative` label), cached.

    Two ways to use it: `find(texts, predict_proba)` scores what it needs itself; a caller that batches model
    calls its own way (the service) asks `to_score(texts)`, scores those texts, hands them back with `learn`,
    and then `find(texts)` answers from the cache.
    """

    def __init__(self, labels: Sequence[str], window: int = WINDOW_WORDS, cache_size: int = 20_000) -> None:
        lowered = [str(label).lower() for label in labels]
        if "negative" not in lowered:
            raise ValueError(f"phrase attribution needs a 'negative' label; the model has {list(labels)}")
        self.labels = list(labels)
        self.window = window
        self._negative = lowered.index("negative")
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size

    def to_score(self, texts: Sequence[str | None]) -> list[str]:
        """What `learn` needs scored for the texts not cached yet: each text, then it without each window."""
        out: list[str] = []
        for text in dict.fromkeys(t for t in texts if t and t.strip() and t not in self._cache):
            out.append(text)
            out.extend(without(text, s, e) for s, e in word_spans(text, self.window))
        return out

    def learn(self, scored: Sequence[str], proba: np.ndarray) -> dict[str, dict[str, Any]]:
        """Caches (and returns) the phrases of the texts `to_score` listed in `scored`, from their class
        probabilities (rows in `scored` order, columns in `labels` order)."""
        proba = np.asarray(proba, dtype=np.float64)
        learned: dict[str, dict[str, Any]] = {}
        i = 0
        while i < len(scored):
            text = scored[i]
            spans = word_spans(text, self.window)
            learned[text] = self._pick(text, spans, proba[i], proba[i + 1 : i + 1 + len(spans)])
            self._store(text, learned[text])
            i += 1 + len(spans)
        return learned

    def find(
        self, texts: Sequence[str | None], predict_proba: Callable[[list[str]], np.ndarray] | None = None
    ) -> list[dict[str, Any] | None]:
        """The driving phrase of each text (None for a missing or blank text), in order. Texts not cached are
        scored with `predict_proba` (texts -> class probabilities in `labels` order) in one call."""
        known = {t: self._cache[t] for t in texts if t in self._cache}
        needed = self.to_score(texts)
        if needed:
            if predict_proba is None:
                raise ValueError(f"phrases of {len(needed)} text(s) are not cached: pass predict_proba")
            known |= self.learn(needed, predict_proba(needed))
        return [dict(known[t]) if t and t.strip() else None for t in texts]

    def _pick(
        self, text: str, spans: list[tuple[int, int]], whole: np.ndarray, deleted: np.ndarray
    ) -> dict[str, Any]:
        change = (
            deleted[:, self._negative] - whole[self._negative]
        )  # P(negative) without the span, minus with it
        best = int(np.argmax(np.abs(change)))  # the first of equals: the earliest span
        start, end = spans[best]
        return {"start": start, "end": end, "phrase": text[start:end], "effect": float(change[best])}

    def _store(self, text: str, found: dict[str, Any]) -> None:
        self._cache[text] = found
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def quotes_scored_text(event: Mapping[str, Any]) -> bool:
    """Whether an evidence event's fields quote a scored text (a `text` and a `sentiment`): phrases and aspects
    belong on these, on every path."""
    return bool(event.get("text")) and event.get("sentiment") is not None


def quoted_texts(evidence: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The evidence events (of `features.evidence` answers) that quote a scored text."""
    return [event for item in evidence if item for event in item["events"] if quotes_scored_text(event)]


def annotate(
    evidence: Iterable[dict[str, Any] | None],
    finder: PhraseFinder,
    predict_proba: Callable[[list[str]], np.ndarray] | None = None,
) -> None:
    """Adds `phrase` (see `PhraseFinder.find`) to every evidence event that quotes a scored text, in place."""
    events = quoted_texts(evidence)
    for event, phrase in zip(events, finder.find([e["text"] for e in events], predict_proba), strict=True):
        event["phrase"] = phrase
