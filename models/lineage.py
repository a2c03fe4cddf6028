"""A text model's identity (sentiment, aspects): what its answers are a function of, and what a churn model
records of it.

Text scores are a function of the normalised text, the model's saved files and the inference arithmetic
(`models.text_encoder`). `artifact_digest` hashes the files, `scoring_id` adds the arithmetic, and
`SentimentLineage` (`AspectLineage`) carries both with the registry name and version. No torch here: batch workers unpickle
lineages without loading a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from churnsense.errors import UserError
from models.catalog import registry_name_version

INFERENCE_VERSION = "bi2"  # bi2: int8 sums by torch._int_mm, fp32 on one thread
"""Bumped whenever the batch-invariant forward's arithmetic changes: cached scores of another version are not
reused (`scoring_id`)."""


def artifact_digest(folder: str | Path) -> str:
    """SHA-256 of a saved model folder's files (relative names and contents, in name order): the model's identity,
    whatever registry, version number or path it is reached by."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def scoring_id(digest: str, quantized: bool) -> str:
    """`<digest[:32]>-<int8|fp32>-<INFERENCE_VERSION>`: the key of a model's scores in caches and lineage."""
    return f"{digest[:32]}-{'int8' if quantized else 'fp32'}-{INFERENCE_VERSION}"


class LineageError(UserError):
    """A churn model and a sentiment model that were not trained together."""


class _Described:
    """What both lineages say of themselves (their dataclass fields: model_uri, artifact_digest, quantized, name,
    version, and a `scoring_id`)."""

    def describe(self) -> str:
        where = f"{self.name} v{self.version}" if self.version else self.model_uri
        return f"{where} ({'int8' if self.quantized else 'fp32'}, digest {self.artifact_digest[:12]})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"scoring_id": self.scoring_id}


@dataclasses.dataclass(frozen=True)
class SentimentLineage(_Described):
    """Which sentiment model scores texts, precisely enough to reproduce its scores bit for bit.

    Attributes:
        model_uri: where to load it: `models:/name/N`, `runs:/...` or a model folder.
        artifact_digest: SHA-256 of its saved files (`models.sentiment.artifact_digest`).
        quantized: int8 (per-token scales) or fp32 inference.
        name / version: the registry entry, when it came from one.
    """

    model_uri: str
    artifact_digest: str
    quantized: bool
    name: str | None = None
    version: str | None = None

    @property
    def scoring_id(self) -> str:
        return scoring_id(self.artifact_digest, self.quantized)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SentimentLineage:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})

    @classmethod
    def of(cls, classifier: Any, model_uri: str | None = None) -> SentimentLineage:
        """The lineage of a loaded classifier (it must have been loaded from files)."""
        if not classifier.digest:
            raise LineageError("sentiment model: loaded from memory, it has no artifact digest to record")
        uri = model_uri or str(classifier.source or "")
        pinned = registry_name_version(uri)
        return cls(
            model_uri=uri,
            artifact_digest=classifier.digest,
            quantized=classifier.quantized,
            name=pinned[0] if pinned else None,
            version=pinned[1] if pinned else None,
        )


def check_lineage(expected: SentimentLineage | AspectLineage, classifier: Any, what: str) -> None:
    """Raise `LineageError` unless `classifier` (a sentiment or an aspect model) answers exactly as the model
    `expected` describes."""
    labels = getattr(expected, "labels", None)  # an aspect model must also answer with the same names
    if labels is not None and tuple(getattr(classifier, "labels", ())) != tuple(labels):
        raise LineageError(
            f"{what}: answers {list(getattr(classifier, 'labels', []))}, but {expected.describe()} answers "
            f"{list(labels)}"
        )
    if classifier.digest != expected.artifact_digest or classifier.quantized != expected.quantized:
        got = (
            f"digest {str(classifier.digest)[:12]}, {'int8' if classifier.quantized else 'fp32'}"
            if classifier.digest
            else "no digest"
        )
        raise LineageError(
            f"{what}: expected {expected.describe()}, found {got}; its text scores would differ from the ones "
            "the churn model was trained on"
        )


@dataclasses.dataclass(frozen=True)
class AspectLineage(_Described):
    """Which aspect model says what texts are about, precisely enough to reproduce its answers bit for bit.

    Attributes:
        model_uri / artifact_digest / quantized / name / version: as in `SentimentLineage`.
        labels: every answer the model gives, in its order (the aspect names, then its "none" for a zero-shot
            model): caches store a text's aspect as its position here, so a warm cache needs no model.
        names: the aspects proper (what the churn features count), a prefix of `labels`.
    """

    model_uri: str
    artifact_digest: str
    quantized: bool
    labels: tuple[str, ...]
    names: tuple[str, ...]
    name: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.labels, str) or isinstance(self.names, str):
            raise LineageError("aspect lineage: labels and names are lists of names, not one string")
        if not self.names or tuple(self.labels[: len(self.names)]) != tuple(self.names):
            raise LineageError(
                f"aspect lineage: names {list(self.names)} must be the first of its labels {list(self.labels)}"
            )

    @property
    def scoring_id(self) -> str:
        return "aspects-" + scoring_id(self.artifact_digest, self.quantized)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AspectLineage:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        return cls(**values | {k: tuple(values[k]) for k in ("labels", "names")})

    @classmethod
    def of(cls, model: Any, model_uri: str | None = None) -> AspectLineage:
        """The lineage of a loaded aspect model (`models.aspects`; it must have been loaded from files)."""
        if not getattr(model, "digest", None):
            raise LineageError("aspect model: loaded from memory, it has no artifact digest to record")
        uri = model_uri or str(model.source or "")
        pinned = registry_name_version(uri)
        return cls(
            model_uri=uri,
            artifact_digest=model.digest,
            quantized=bool(model.quantized),
            labels=tuple(model.labels),
            names=tuple(model.names),
            name=pinned[0] if pinned else None,
            version=pinned[1] if pinned else None,
        )
