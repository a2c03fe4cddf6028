"""Event texts -> what each is about, for the churn features, with the aspect model's identity attached.

The aspect counterpart of `models.text_scoring`: a churn model trained with aspect features records the
`AspectLineage` of the model that labelled its training texts, and serving and batch scoring label texts with
that same model or refuse.

    labeler = CachedAspectLabeler.from_uri("models:/churnsense-aspects@champion")   # pinned, loaded
    train_churn(spec, sentiment_scorer=scorer, aspect_labeler=labeler)           # records labeler.lineage

Answers go through the same content-addressed cache as sentiment scores (`models.sentiment_cache`), under the
lineage's own `scoring_id` (`aspects-...`), stored as the answer's position in `lineage.labels`: a warm cache
labels texts without loading the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.text import normalise_texts
from models.catalog import resolve_model_uri
from models.lineage import AspectLineage, LineageError, check_lineage
from models.text_scoring import default_cache_dir


def load_aspects(lineage: AspectLineage) -> Any:
    """The aspect model a lineage names, checked to be that model (same digest and arithmetic)."""
    from models.aspects import load_aspect_model

    model = load_aspect_model(lineage.model_uri, quantize=lineage.quantized)
    check_lineage(lineage, model, what=f"aspect model {lineage.model_uri}")
    return model


class CachedAspectLabeler:
    """Texts -> aspect (a name of `lineage.labels`; None for a missing or blank text), through the cache.

    Usable as `features.pipeline.AspectLabeler`. Texts are normalised (`features.text`) before lookup.

    Args:
        lineage: the model (`AspectLineage.of`, or as a churn model recorded it).
        cache_dir: cache root (default `models.text_scoring.default_cache_dir()`).
        model: the already loaded model of that lineage (checked), else loaded on the first miss.
    """

    def __init__(
        self, lineage: AspectLineage, cache_dir: str | Path | None = None, model: Any = None
    ) -> None:
        self.lineage = lineage
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if model is not None:
            check_lineage(lineage, model, what="aspect labeler")
        self._model = model

    @classmethod
    def from_uri(cls, uri: str, cache_dir: str | Path | None = None) -> CachedAspectLabeler:
        """The aspect model behind `uri` (a registry alias is pinned to its version now), loaded."""
        from models.aspects import load_aspect_model

        concrete, _ = resolve_model_uri(uri)  # models:/name/N: the lineage reads name and version from it
        model = load_aspect_model(concrete)
        return cls(AspectLineage.of(model, concrete), cache_dir, model)

    @property
    def names(self) -> tuple[str, ...]:
        """The aspects proper (what the churn features count): the labels without the model's "none"."""
        return self.lineage.names

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_aspects(self.lineage)
        return self._model

    def cache(self) -> Any:
        from models.sentiment_cache import open_cache

        return open_cache(self.cache_dir, self.lineage.scoring_id)

    def __call__(self, texts: Sequence[str | None]) -> list[str | None]:
        return self.labels_of(self.cache().score(normalise_texts(texts), self.label_new))

    def labels_of(self, codes: np.ndarray) -> list[str | None]:
        """Cached positions -> names (NaN, no text, -> None)."""
        labels = self.lineage.labels
        bad = [c for c in codes if not np.isnan(c) and not (0 <= c < len(labels) and c == int(c))]
        if bad:
            raise LineageError(
                f"aspect cache {self.lineage.scoring_id}: position {bad[0]!r} is none of the {len(labels)} labels "
                f"of {self.lineage.describe()}; delete that cache folder under {self.cache_dir}"
            )
        return [None if np.isnan(code) else labels[int(code)] for code in codes]

    def label_new(self, texts: Sequence[str]) -> np.ndarray:
        """Label texts with the model: each answer's position in `lineage.labels` (what the cache stores)."""
        position = {label: i for i, label in enumerate(self.lineage.labels)}
        answers = self.model.predict(list(texts)).aspects
        unknown = sorted({a for a in answers if a not in position})
        if unknown:
            raise LineageError(
                f"aspect model {self.lineage.describe()} answered {unknown}, none of its recorded labels "
                f"{list(self.lineage.labels)}"
            )
        return np.array([position[a] for a in answers], dtype="float64")
