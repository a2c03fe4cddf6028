"""What a text is about: an aspect from a taxonomy (billing, delivery, a rude agent, ...), zero-shot or trained.

    model = load_aspect_model("models:/churnsense-aspects@champion")
    model.predict(["I was charged twice this month"]).to_dicts()
    # [{"aspect": "billing", "score": 0.61, "scores": {"billing": 0.61, "network": 0.12, ...}}]

Two kinds, one interface (`predict(texts) -> AspectPredictions`):

- **zero-shot** (`ZeroShotAspects`), when there are no labelled reasons: each aspect's description and each text
  are embedded with a sentence encoder (the packaged all-MiniLM-L6-v2: mean-pooled token states, normalised);
  a text's scores are its cosine similarities to the descriptions, and its aspect is the most similar one when
  that similarity reaches `threshold`, else `none_label` ("none of these").
- **trained** (`TrainedAspects`), when there are: a fine-tuned sequence classifier whose classes are the
  aspects (`churnsense train aspects --spec`, the sentiment trainer's fine-tuning with reason labels); scores
  are class probabilities, the most probable class wins. The trainer usually adds a second half: a
  class-balanced TF-IDF + logistic regression, whose probabilities are averaged with the classifier's at a
  weight chosen on validation (`training.aspect_averaging`; it wins on the rare reasons, the classifier on the
  common ones).

Both are batch invariant (`models.text_encoder`): a text's aspect and scores depend on the text and the model
alone, whatever else is scored with it. A zero-shot model is saved as a folder: the encoder's Hugging Face files
plus `aspects.json` (names, descriptions, threshold, none label, max_length, their embeddings are recomputed at
load); a trained one is a sentiment-style classifier folder, with `aspect_average.json` (the weight) and
`aspect_tfidf.skops` (the TF-IDF half) beside its weights when it has one: one folder, so its digest (the cache
key and the churn model's `AspectLineage`) covers every number behind an answer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from churnsense.errors import UserError
from features.columns import TEXT
from features.text import normalise_text

ASPECTS_FILE = "aspects.json"
AVERAGE_FILE = "aspect_average.json"  # a trained model's TF-IDF half: its file and weight
TFIDF_FILE = "aspect_tfidf.skops"
EMBED_BATCH = 64  # texts per forward pass of the sentence encoder
ZERO_SHOT, TRAINED = "zero-shot", "trained"


class AspectModelError(UserError):
    """An aspect model folder or URI that cannot be used (named)."""


@dataclass(frozen=True)
class AspectPredictions:
    """Per text: its aspect (`none_label` when none fits) and its score for every aspect (columns `names`)."""

    aspects: list[str]
    scores: np.ndarray  # float64, (texts, names)
    names: list[str]
    best: np.ndarray  # float64: the score behind each aspect (its similarity or probability)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "aspect": aspect,
                "score": float(best),
                "scores": {name: float(s) for name, s in zip(self.names, row, strict=True)},
            }
            for aspect, best, row in zip(self.aspects, self.best, self.scores, strict=True)
        ]


class ZeroShotAspects:
    """Aspects by cosine similarity of sentence embeddings to the taxonomy's descriptions.

    Args:
        model: a Hugging Face BERT encoder (`AutoModel`), fp32; tokenizer: its tokenizer.
        names, descriptions: the taxonomy, in order.
        threshold: the least similarity that names an aspect; below it, `none_label`.
        quantize: int8 linears with per-token scales (fast) or fp32 (one text per pass); both batch invariant.
    """

    kind = ZERO_SHOT

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        names: list[str],
        descriptions: list[str],
        *,
        threshold: float,
        none_label: str = "none",
        max_length: int = 64,
        quantize: bool = True,
        source: str | None = None,
    ) -> None:
        from models.text_encoder import invariant_encoder

        if not names or len(names) != len(descriptions):
            raise AspectModelError("a taxonomy needs at least one aspect, each with a description")
        if none_label in names:
            raise AspectModelError(f"none_label {none_label!r} is also an aspect name")
        self.tokenizer = tokenizer
        self.names, self.descriptions = list(names), list(descriptions)
        self.threshold, self.none_label = float(threshold), none_label
        self.max_length, self.quantized, self.source = int(max_length), bool(quantize), source
        self.digest: str | None = (
            None  # the saved folder's `models.lineage.artifact_digest`, when loaded from one
        )
        self.labels = [*self.names, self.none_label]
        self.encoder = invariant_encoder(model.eval(), self.quantized)
        self._targets = self.embed(self.descriptions)

    def embed(self, texts: list[str | None]) -> np.ndarray:
        """Unit-length sentence embeddings (float64), one row per text (normalised as every scorer does)."""
        normalised = [normalise_text(t) or "" for t in texts]
        ids = self.tokenizer(normalised, truncation=True, max_length=self.max_length, padding=False)[
            "input_ids"
        ]
        from models.sentiment import length_sorted_batches

        pooled = self.encoder.mean_pooled([]) if not ids else None
        # Passes of similar lengths (the sentiment scorer's batching): a text's row is the same in any batch,
        # and thousands of texts in one pass would hold every token's states at once.
        for index in length_sorted_batches([len(i) for i in ids], EMBED_BATCH):
            rows = self.encoder.mean_pooled([list(ids[i]) for i in index])
            if pooled is None:
                pooled = np.zeros((len(ids), rows.shape[1]))
            pooled[index] = rows
        norms = np.sqrt((pooled * pooled).sum(axis=1, keepdims=True))
        return pooled / np.maximum(norms, 1e-12)

    def predict(self, texts: list[str | None]) -> AspectPredictions:
        embedded = self.embed(list(texts))
        # Row by row (elementwise products summed per row): no matrix product whose rounding could vary with
        # the number of texts.
        scores = (embedded[:, None, :] * self._targets[None, :, :]).sum(axis=2)
        best = scores.max(axis=1) if len(scores) else np.zeros(0)
        index = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=int)
        aspects = [
            self.names[i] if b >= self.threshold else self.none_label
            for i, b in zip(index, best, strict=True)
        ]
        return AspectPredictions(aspects, scores, self.names, best)

    def save(self, folder: Path, encoder_dir: Path) -> Path:
        """The encoder's files from `encoder_dir` and `aspects.json`, into `folder` (which is created)."""
        import shutil

        shutil.copytree(
            encoder_dir, folder, ignore=shutil.ignore_patterns("*.onnx", "onnx", "openvino", ".*")
        )
        spec = {
            "kind": ZERO_SHOT,
            "names": self.names,
            "descriptions": self.descriptions,
            "threshold": self.threshold,
            "none_label": self.none_label,
            "max_length": self.max_length,
        }
        (folder / ASPECTS_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def from_encoder(
        cls, encoder_dir: str | Path, names: list[str], descriptions: list[str], **options: Any
    ) -> ZeroShotAspects:
        """The encoder saved in `encoder_dir` (a Hugging Face folder) over a taxonomy; `options` as `__init__`."""
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(encoder_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
        return cls(model, tokenizer, names, descriptions, **options)

    @classmethod
    def from_folder(cls, folder: Path, quantize: bool = True) -> ZeroShotAspects:
        """A folder `save` wrote."""
        from models.lineage import artifact_digest

        spec = json.loads((folder / ASPECTS_FILE).read_text(encoding="utf-8"))
        model = cls.from_encoder(
            folder,
            list(spec["names"]),
            list(spec["descriptions"]),
            threshold=float(spec["threshold"]),
            none_label=str(spec["none_label"]),
            max_length=int(spec["max_length"]),
            quantize=quantize,
            source=str(folder),
        )
        model.digest = artifact_digest(folder)
        return model


class TrainedAspects:
    """Aspects from a fine-tuned classifier (a `models.sentiment.SentimentClassifier` over the aspect names),
    optionally averaged with a TF-IDF model's probabilities.

    Args:
        classifier: the fine-tuned classifier (its labels are the aspect names).
        tfidf: a fitted scikit-learn pipeline taking a frame with a `text` column (`tfidf_frame`), whose classes
            include every aspect name; None for the classifier alone.
        weight: the classifier's share of the average, in [0, 1] (1 without `tfidf`).
    Both halves are batch invariant: TF-IDF and logistic regression score each row on its own.
    """

    kind = TRAINED

    def __init__(self, classifier: Any, tfidf: Any = None, weight: float = 1.0) -> None:
        self.classifier = classifier
        self.names = list(classifier.labels)
        self.labels = self.names
        self.source = classifier.source
        self.digest, self.quantized = classifier.digest, classifier.quantized
        if not 0.0 <= float(weight) <= 1.0:
            raise AspectModelError(f"weight {weight}: the classifier's share must be between 0 and 1")
        self.tfidf, self.weight = tfidf, float(weight) if tfidf is not None else 1.0
        if tfidf is not None:
            classes = [str(c) for c in getattr(tfidf, "classes_", ())]
            if not hasattr(tfidf, "predict_proba") or sorted(classes) != sorted(self.names):
                raise AspectModelError(
                    f"the TF-IDF half answers {classes}, not the classifier's aspects {sorted(self.names)}"
                )
            self._columns = [classes.index(n) for n in self.names]

    @staticmethod
    def tfidf_frame(texts: list[str | None]) -> Any:
        """What the TF-IDF half reads (and is fitted on): texts normalised as every scorer does, missing -> ""."""
        import pandas as pd

        return pd.DataFrame({TEXT: [normalise_text(t) or "" for t in texts]}, dtype=object)

    def tfidf_proba(self, texts: list[str | None]) -> np.ndarray:
        """The TF-IDF half's probabilities, columns in `names` order."""
        return self.tfidf.predict_proba(self.tfidf_frame(texts))[:, self._columns].astype(np.float64)

    def predict(self, texts: list[str | None]) -> AspectPredictions:
        texts = list(texts)
        proba = self.classifier.predict_proba(texts).astype(np.float64)
        if self.tfidf is not None and texts:
            proba = self.weight * proba + (1.0 - self.weight) * self.tfidf_proba(texts)
        index = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=int)
        best = proba.max(axis=1) if len(proba) else np.zeros(0)
        return AspectPredictions([self.names[i] for i in index], proba, self.names, best)

    @classmethod
    def from_folder(cls, folder: Path, quantize: bool | None = None) -> TrainedAspects:
        """A trained model's folder (its classifier folder, or an MLflow model folder holding it), with the TF-IDF
        half beside the classifier's weights when it has one. `quantize` None: the arithmetic the weight was
        chosen under."""
        from models.sentiment import SentimentClassifier, find_hf_dir

        home, _ = find_hf_dir(folder)  # the classifier folder `SentimentClassifier.load` reads, and digests
        average = home / AVERAGE_FILE
        if not average.is_file():
            return cls(SentimentClassifier.load(folder, quantize=quantize))
        try:
            spec = json.loads(average.read_text(encoding="utf-8"))
            tfidf_file, weight = str(spec["tfidf"]), float(spec["weight"])
            chosen_under = spec.get("quantized")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise AspectModelError(f"{average}: not an aspect average ({error!r})") from None
        if tfidf_file != TFIDF_FILE:  # nothing from outside the digested folder
            raise AspectModelError(f"{average}: tfidf must be {TFIDF_FILE!r}, got {tfidf_file!r}")
        use = bool(chosen_under) if quantize is None and chosen_under is not None else quantize
        classifier = SentimentClassifier.load(folder, quantize=use)
        try:
            return cls(classifier, load_tfidf(home / TFIDF_FILE), weight)
        except AspectModelError as error:
            raise AspectModelError(f"{home}: {error}") from None

    def save_average(self, folder: Path) -> None:
        """The TF-IDF half, the weight and the arithmetic it was chosen under, into the classifier's folder
        `folder` (before its digest is taken)."""
        import skops.io

        if self.tfidf is None:
            return
        (folder / TFIDF_FILE).write_bytes(skops.io.dumps(self.tfidf))
        spec = {"weight": self.weight, "tfidf": TFIDF_FILE, "quantized": self.quantized}
        (folder / AVERAGE_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


def load_tfidf(path: Path) -> Any:
    """A TF-IDF pipeline saved with skops, refused if it holds any type skops does not trust by default (a
    TF-IDF + logistic regression pipeline holds none; skops never runs code of a type it was not told to trust,
    and this is never told)."""
    import skops.io

    if not path.is_file():
        raise AspectModelError(f"{path}: the aspect model's TF-IDF half is missing")
    data = path.read_bytes()
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as error:  # skops raises whatever its zip and JSON readers raise on a damaged file
        raise AspectModelError(f"{path}: not a skops file ({error!r})") from None
    if untrusted:
        raise AspectModelError(f"{path}: refusing to load types skops does not trust by default: {untrusted}")
    return skops.io.loads(data)


AspectModel = ZeroShotAspects | TrainedAspects


class AspectCache:
    """Each distinct text's aspect, computed once (a bounded LRU): evidence quotes the same texts again and
    again. Exact, since a text's aspect depends on the text and the model alone."""

    def __init__(self, model: AspectModel, size: int = 20_000) -> None:
        from collections import OrderedDict

        self.model = model
        self._size = size
        self._known: OrderedDict[str, str] = OrderedDict()

    def aspects(self, texts: list[str]) -> list[str]:
        known = {t: self._known[t] for t in texts if t in self._known}
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            for text, aspect in zip(new, self.model.predict(new).aspects, strict=True):
                known[text] = self._known[text] = aspect
                while len(self._known) > self._size:
                    self._known.popitem(last=False)
        for text in known:
            if text in self._known:
                self._known.move_to_end(text)
        return [known[t] for t in texts]


def annotate_aspects(evidence: Any, cache: AspectCache | Callable[[list[str]], list]) -> None:
    """Adds `aspect` (what the text is about) to every evidence event quoting a scored text, in place (the
    events `models.phrases.quoted_texts` finds). `cache`: an `AspectCache`, or any texts -> aspects function
    of the same model (e.g. `models.aspect_scoring.CachedAspectLabeler`, which reads the on-disk cache)."""
    from models.phrases import quoted_texts

    label = cache.aspects if isinstance(cache, AspectCache) else cache
    events = quoted_texts(evidence)
    if events:
        for event, aspect in zip(events, label([e["text"] for e in events]), strict=True):
            event["aspect"] = aspect


def load_aspect_model(source: str | Path, quantize: bool | None = None) -> AspectModel:
    """An aspect model from a registry or run URI (`models:/churnsense-aspects@champion`) or a local folder (a
    zero-shot folder, a trained classifier folder, or an MLflow model folder holding either)."""
    from models.sentiment import download_model

    text = str(source)
    if text.startswith("models:/"):
        from models.catalog import resolve_model_uri

        text, _ = resolve_model_uri(text)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        with tempfile.TemporaryDirectory(prefix="churnsense-aspects-") as tmp:
            model = load_aspect_model(download_model(text, Path(tmp)), quantize)
        model.source = text
        return model
    folder = Path(text).expanduser()
    if not folder.exists():
        raise AspectModelError(f"{folder}: no such aspect model folder")
    found = sorted(folder.rglob(ASPECTS_FILE))
    if found:
        return ZeroShotAspects.from_folder(found[0].parent, quantize=True if quantize is None else quantize)
    return TrainedAspects.from_folder(folder, quantize=quantize)
