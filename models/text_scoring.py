"""Event texts -> sentiment polarity for the churn features, with the sentiment model's identity attached.

A churn model's text features are only meaningful with the sentiment model that built its training features. So
the scorer that feeds `features.pipeline.add_sentiment` carries a `SentimentLineage` (registry name and version,
artifact digest, int8 or fp32), training records it in the churn model, and serving and batch scoring load that
same model or refuse (`ChurnModel.sentiment_lineage`, `check_lineage`).

    lineage = sentiment_lineage("models:/churnsense-sentiment@champion")   # pinned, no weights loaded
    scorer = CachedTextScorer(lineage)                                        # texts -> P(pos) - P(neg)
    train_churn(spec, sentiment_scorer=scorer)                                # the churn run records `lineage`

Scores go through the content-addressed cache (`models.sentiment_cache`), keyed by the lineage's `scoring_id`
and the normalised text: another store's "v1", a retrained folder or a new inference version never shares
entries. The model's weights load only when the cache lacks a text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from churnsense.environment import paths
from churnsense.errors import UserError
from features.text import normalise_texts
from models.catalog import registry_name_version, resolve_model_uri
from models.lineage import SentimentLineage, check_lineage

logger = logging.getLogger(__name__)


def sentiment_lineage(uri: str, quantize: bool | None = None) -> SentimentLineage:
    """The lineage of the model behind `uri` (an alias is pinned to its version now).

    Reads the digest and the int8 setting that training logged in the MLmodel file, so no weights are loaded;
    a model without them (a plain folder) is hashed from its files.
    """
    concrete, version = resolve_model_uri(uri)
    pinned = registry_name_version(concrete)
    metadata, config = _logged_model_info(concrete)
    digest = metadata.get("artifact_digest")
    int8 = bool(config.get("quantize", False)) if quantize is None else bool(quantize)
    if not digest:
        from models.sentiment import SentimentClassifier

        classifier = SentimentClassifier.load(concrete, quantize=int8)
        digest = classifier.digest
    return SentimentLineage(
        model_uri=concrete,
        artifact_digest=str(digest),
        quantized=int8,
        name=pinned[0] if pinned else None,
        version=version,
    )


def _logged_model_info(uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(MLmodel metadata, pyfunc model_config) of a logged model; empty for a plain Hugging Face folder."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model, get_model_info

    folder = Path(uri).expanduser()
    if folder.exists() and not (folder / "MLmodel").is_file():
        return {}, {}
    try:
        info = Model.load(str(folder)) if folder.exists() else get_model_info(uri)
    except (MlflowException, OSError) as error:
        raise UserError(f"sentiment model {uri}: cannot read it ({error})") from None
    return dict(info.metadata or {}), dict(info.flavors.get("python_function", {}).get("config") or {})


def load_sentiment(lineage: SentimentLineage, num_threads: int | None = None, batch_size: int = 32) -> Any:
    """Load the `SentimentClassifier` a lineage names and check that it is that model (same digest)."""
    from models.sentiment import SentimentClassifier

    classifier = SentimentClassifier.load(
        lineage.model_uri, quantize=lineage.quantized, num_threads=num_threads, batch_size=batch_size
    )
    check_lineage(lineage, classifier, what=f"sentiment model {lineage.model_uri}")
    return classifier


def default_cache_dir() -> Path:
    """`CHURNSENSE_CACHE_DIR`, else `~/.cache/churnsense`."""
    return paths().cache_dir


class CachedTextScorer:
    """Texts -> polarity (P(positive) - P(negative)) of one sentiment model, through the shared cache.

    Usable as `features.pipeline.SentimentScorer`; `lineage` says which model made the scores. Texts are
    normalised (`features.text`) before lookup and scoring; missing or blank texts give NaN.

    Args:
        lineage: the model (see `sentiment_lineage`).
        cache_dir: cache root (default `default_cache_dir()`).
        classifier: an already loaded classifier for that lineage (checked), else loaded on the first miss.
    """

    def __init__(
        self,
        lineage: SentimentLineage,
        cache_dir: str | Path | None = None,
        classifier: Any = None,
        num_threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self.lineage = lineage
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if classifier is not None:
            check_lineage(lineage, classifier, what="text scorer")
        self._classifier = classifier
        self._num_threads, self._batch_size = num_threads, batch_size

    @property
    def classifier(self) -> Any:
        if self._classifier is None:
            self._classifier = load_sentiment(self.lineage, self._num_threads, self._batch_size)
        return self._classifier

    def cache(self) -> Any:
        from models.sentiment_cache import open_cache

        return open_cache(self.cache_dir, self.lineage.scoring_id)

    def __call__(self, texts: Sequence[str | None]) -> np.ndarray:
        return self.cache().score(normalise_texts(texts), self._score_new)

    def _score_new(self, texts: Sequence[str]) -> np.ndarray:
        return self.classifier.sentiment_scores(texts)


def lineage_of_scorer(scorer: Any) -> SentimentLineage | None:
    """The lineage a text scorer carries (`CachedTextScorer`, or a `SentimentClassifier` loaded from files);
    None for an anonymous function, whose scores nobody could reproduce."""
    lineage = getattr(scorer, "lineage", None)
    if isinstance(lineage, SentimentLineage):
        return lineage
    if getattr(scorer, "digest", None) and hasattr(scorer, "quantized"):  # a SentimentClassifier from files
        return SentimentLineage.of(scorer)
    return None
