"""Sentiment training: fine-tune a pretrained encoder (and a TF-IDF baseline), track it in MLflow, register it.

    load_labelled_reviews -> clean_reviews -> check_labels -> split_reviews
        -> fit_baseline, load_backbone -> fine_tune -> evaluate_models (val, test, int8) -> log_sentiment_model

`train_sentiment(spec, config)` runs the whole chain and returns a `SentimentRunResult`; the CLI command
`churnsense train sentiment` and the demo call it. Promotion (`promote_sentiment`) scores the newest version
and the champion on the challenger run's logged validation split (`validation/validation.parquet`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from churnsense.errors import UserError
from churnsense.files import atomic_write_text
from features.columns import TEXT
from features.io import available_columns, load_reviews
from features.spec import DatasetSpec, load_spec
from features.text import normalise_text_series
from models.sentiment import (
    SIDECAR,
    SentimentClassifier,
    artifact_digest,
    pad_batch,
    resolve_backbone,
)
from training.sentiment_config import SentimentConfig, load_sentiment_config

logger = logging.getLogger(__name__)

LABEL = "label"
REVIEW_ID = "review_id"
VALIDATION_ARTIFACT = "validation/validation.parquet"
THROUGHPUT_BATCH = 32


class SentimentDataError(UserError):
    """The reviews cannot train a classifier: missing column, unknown labels, one class, too few rows."""


# --- data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleaningReport:
    """How many rows each cleaning rule removed (all counts are rows)."""

    rows_in: int
    empty_texts: int
    id_duplicates: int
    id_conflicts: int
    text_duplicates: int
    text_conflicts: int
    rows_out: int

    def as_metrics(self) -> dict[str, float]:
        return {f"clean_{key}": float(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class ReviewSplits:
    """Disjoint stratified splits, each a frame with `text` and `label`."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train), "n_validation": len(self.validation), "n_test": len(self.test)}


def load_labelled_reviews(spec: DatasetSpec) -> pd.DataFrame:
    """The spec's `reviews` as `text`, `label` (string) and `review_id` (when `reviews.id` is given).

    Raises:
        SentimentDataError: no `reviews` section, or the text / label / id column is not in the file.
    """
    reviews = spec.reviews
    if reviews is None:
        raise SentimentDataError(f"{spec.source or 'spec'}: no `reviews` section (text + label or rating)")
    present = available_columns(spec, reviews)
    for key in ("text", "label", "rating", "id"):
        column = getattr(reviews, key)
        if column is not None and column not in present:
            shown = ", ".join(present[:30])
            raise SentimentDataError(
                f"reviews.{key}: column {column!r} not found in {spec.resolve(reviews.path)} (has: {shown})"
            )
    loaded = load_reviews(spec)
    if len(loaded.rejects):
        logger.info("reviews: %d rows without a usable label were left out", len(loaded.rejects))
    return loaded.frame


def _drop_duplicate_keys(frame: pd.DataFrame, key: pd.Series) -> tuple[pd.DataFrame, int, int]:
    """Keep one row per key; drop every row of a key whose rows disagree on the label.

    Returns (frame, duplicate rows dropped, rows dropped for conflicting labels).
    """
    labels_per_key = frame.groupby(key.to_numpy(), sort=False)[LABEL].transform("nunique")
    conflicting = (labels_per_key > 1).to_numpy()
    kept = frame[~conflicting]
    deduplicated = kept[~key[~conflicting].duplicated(keep="first").to_numpy()]
    return deduplicated, len(kept) - len(deduplicated), int(conflicting.sum())


def clean_reviews(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Normalise texts (`features.text`), drop empty texts, then de-duplicate by `review_id` (when present) and by text.

    Duplicates are matched on the case-folded text (the default backbone is uncased), so "Great!" and
    "great!" can never land on both sides of a split. A key whose copies carry different labels is dropped
    entirely: there is no way to tell which label is right. All of this happens before splitting.

    Args:
        frame: `text`, `label` and optionally `review_id`, as from `load_labelled_reviews`.
    Returns:
        (clean frame with a fresh index, counts of what each rule removed).
    """
    rows_in = len(frame)
    out = frame.copy()
    out[TEXT] = normalise_text_series(out[TEXT])  # the one normaliser every scoring path uses
    out[LABEL] = out[LABEL].astype("string").str.strip()
    non_empty = (out[TEXT].notna() & (out[TEXT] != "") & out[LABEL].notna()).to_numpy(dtype=bool)
    out = out[non_empty]
    empty = rows_in - len(out)
    id_dups = id_conflicts = 0
    if REVIEW_ID in out.columns:
        ids = out[REVIEW_ID].astype("string").str.strip()
        with_id = ids.notna().to_numpy(dtype=bool)
        by_id, id_dups, id_conflicts = _drop_duplicate_keys(out[with_id], ids[with_id])
        out = pd.concat([by_id, out[~with_id]]).sort_index()
    out, text_dups, text_conflicts = _drop_duplicate_keys(out, out[TEXT].str.casefold())
    out = out.reset_index(drop=True)
    report = CleaningReport(rows_in, empty, id_dups, id_conflicts, text_dups, text_conflicts, len(out))
    logger.info("cleaning: %s", report)
    return out, report


def check_labels(
    frame: pd.DataFrame, spec: DatasetSpec, config: SentimentConfig
) -> tuple[pd.DataFrame, list[str]]:
    """Apply `config.label_map`, check labels against the allowed classes, and return the sorted label list.

    Raises:
        SentimentDataError: a label outside `classes` (config or spec), or fewer than two classes.
    """
    reviews = spec.reviews
    field_name = f"reviews.{'label' if reviews and reviews.label else 'rating'}"
    column = (reviews.label or reviews.rating) if reviews else LABEL
    out = frame.copy()
    if config.label_map:
        out[LABEL] = out[LABEL].map(lambda v: config.label_map.get(v, v)).astype("string")
    present = sorted(out[LABEL].dropna().unique().tolist())
    for source, allowed in (
        ("config classes", config.classes),
        ("spec reviews.classes", reviews and reviews.classes),
    ):
        if allowed:
            unknown = [label for label in present if label not in allowed]
            if unknown:
                raise SentimentDataError(
                    f"{field_name} ({column!r}): unknown label(s) {', '.join(map(repr, unknown))}; "
                    f"{source} allow {', '.join(map(repr, allowed))}"
                )
    if len(present) < 2:
        found = repr(present[0]) if present else "none"
        raise SentimentDataError(
            f"{field_name} ({column!r}): only one class ({found}) after cleaning; need at least two to train"
        )
    return out, present


def split_reviews(frame: pd.DataFrame, config: SentimentConfig) -> ReviewSplits:
    """Stratified train / validation / test split (seeded); optionally subsample the training split.

    Raises:
        SentimentDataError: a class has too few rows to appear in every split.
    """
    from sklearn.model_selection import train_test_split

    counts = frame[LABEL].value_counts()
    scarce = counts[counts < 3]
    if len(scarce):
        raise SentimentDataError(
            f"reviews.label: class(es) {', '.join(f'{k!r} ({v} rows)' for k, v in scarce.items())} have fewer "
            "than 3 texts after cleaning; every class needs one in train, validation and test"
        )
    columns = [TEXT, LABEL]
    holdout = config.val_fraction + config.test_fraction
    try:
        train, rest = train_test_split(
            frame[columns], test_size=holdout, stratify=frame[LABEL], random_state=config.seed
        )
        validation, test = train_test_split(
            rest,
            test_size=config.test_fraction / holdout,
            stratify=rest[LABEL],
            random_state=config.seed,
        )
    except ValueError as error:
        raise SentimentDataError(f"reviews: cannot split {len(frame)} texts stratified ({error})") from None
    if config.max_train_examples and len(train) > config.max_train_examples:
        train, _ = train_test_split(
            train, train_size=config.max_train_examples, stratify=train[LABEL], random_state=config.seed
        )
    return ReviewSplits(*(part.reset_index(drop=True) for part in (train, validation, test)))


# --- models ----------------------------------------------------------------------------------------------


def fit_baseline(train: pd.DataFrame, config: SentimentConfig) -> Any:
    """TF-IDF (word 1-2-grams + char_wb 2-5-grams) + logistic regression, as one sklearn `Pipeline` that takes
    a frame with a `text` column and predicts label names."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    # Tiny data sets (tests) would lose every n-gram to min_df=2.
    min_df = 2 if len(train) >= 1000 else 1
    features = ColumnTransformer(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True), TEXT),
            (
                "char",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df, sublinear_tf=True),
                TEXT,
            ),
        ]
    )
    pipeline = Pipeline(
        [("tfidf", features), ("logreg", LogisticRegression(C=config.baseline_c, max_iter=2000))]
    )
    return pipeline.fit(train[[TEXT]].astype({TEXT: object}), train[LABEL].astype(object))


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs (the classifier head's initialisation and dropout use torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_backbone(config: SentimentConfig, labels: list[str]) -> tuple[Any, Any]:
    """The pretrained encoder with a fresh classification head for `labels`, and its tokenizer.

    A local folder is read with `local_files_only` (and HF_HUB_OFFLINE=1); only a hub id may download.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    location, is_local = resolve_backbone(config.backbone)
    if is_local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seed_everything(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=is_local)
    model = AutoModelForSequenceClassification.from_pretrained(
        location,
        local_files_only=is_local,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return model, tokenizer


@dataclass
class FineTuneResult:
    """What the training loop did; `model` holds the weights of the best validation macro-F1."""

    model: Any
    tokenizer: Any
    steps: int
    planned_steps: int
    examples_seen: int
    best_step: int
    best_val_macro_f1: float
    stopped_by: str
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def seconds_per_1k_examples(self) -> float:
        return 1000.0 * self.train_seconds / max(self.examples_seen, 1)


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket_batches: int = 50
) -> Iterator[np.ndarray]:
    """One epoch of shuffled batches whose texts have similar lengths (less padding than random batches).

    The order is shuffled, cut into buckets of `bucket_batches` batches, each bucket sorted by length and cut
    into batches, and the batches shuffled again, so the model never sees a length-ordered curriculum.
    """
    order = rng.permutation(len(lengths))
    bucket = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    for index in rng.permutation(len(batches)):
        yield batches[index]


def _optimizer(model: Any, config: SentimentConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm; the head (pooler + classifier) may get its own lr."""
    head_lr = config.head_learning_rate or config.learning_rate
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_head = name.startswith(("classifier", "pre_classifier")) or ".pooler." in f".{name}"
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((is_head, no_decay), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": head_lr if is_head else config.learning_rate,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
            }
            for (is_head, no_decay), params in groups.items()
        ]
    )


class BudgetedSchedule:
    """Linear warm-up, then linear decay to zero at `total` steps.

    With a time budget, `total` is re-estimated every few steps from the recent seconds per step (evaluations
    included) so that the decay reaches zero when the time runs out, instead of the run being cut off at a
    high learning rate; it never exceeds the planned steps. On a shared machine the estimate follows the load.
    """

    def __init__(self, planned: int, warmup_ratio: float, deadline: float = math.inf, window: int = 200):
        self.planned = self.total = planned
        self.warmup_ratio = warmup_ratio
        self.deadline = deadline
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)

    def factor(self, step: int) -> float:
        """Learning-rate multiplier for optimiser step `step` (0-based)."""
        warmup = int(self.warmup_ratio * self.total)
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (self.total - step) / max(self.total - warmup, 1))

    def observe(self, step: int, now: float, every: int = 10, min_steps: int = 20) -> None:
        """Record that `step` steps were done at monotonic time `now`; re-plan `total` within the deadline."""
        self._recent.append((step, now))
        if math.isinf(self.deadline) or step % every or len(self._recent) < min_steps:
            return
        first_step, first_time = self._recent[0]
        seconds_per_step = (now - first_time) / max(step - first_step, 1)
        affordable = int(max(self.deadline - now, 0.0) / max(seconds_per_step, 1e-9))
        self.total = max(step + 1, min(self.planned, step + affordable))


def fine_tune(
    model: Any,
    tokenizer: Any,
    splits: ReviewSplits,
    labels: list[str],
    config: SentimentConfig,
    on_evaluate: Callable[[int, dict[str, float]], None] | None = None,
) -> FineTuneResult:
    """A plain torch loop: bucketed dynamic-padding batches, AdamW with linear warm-up/decay, gradient
    clipping, validation macro-F1 every `eval_every_steps` (or epoch) with early stopping, and a step
    (`max_steps`) and time (`max_minutes`) budget. The best validation weights are restored at the end.

    Args:
        on_evaluate: called with (step, validation metrics) after every validation, e.g. to log to MLflow.
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    label_ids = {label: i for i, label in enumerate(labels)}
    encoded = tokenizer(
        splits.train[TEXT].tolist(), truncation=True, max_length=config.max_length, padding=False
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    encodings = [{k: encoded[k][i] for k in keys} for i in range(len(splits.train))]
    lengths = np.array([len(e["input_ids"]) for e in encodings])
    targets = torch.tensor([label_ids[label] for label in splits.train[LABEL]], dtype=torch.long)
    steps_per_epoch = math.ceil(len(encodings) / config.batch_size)
    planned = max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.max_steps:
        planned = min(planned, config.max_steps)
    eval_every = config.eval_every_steps or steps_per_epoch
    optimizer = _optimizer(model, config)
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else math.inf
    schedule = BudgetedSchedule(planned, config.warmup_ratio, deadline)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    pad_id = tokenizer.pad_token_id or 0

    best_f1, best_step, best_state, evaluations_without_gain = -1.0, 0, None, 0
    step, seen, stopped_by, history = 0, 0, "", []
    last_evaluated = -1
    started = time.perf_counter()

    def evaluate_now() -> bool:
        """Validate, keep the best weights; True when patience is exhausted."""
        nonlocal best_f1, best_step, best_state, evaluations_without_gain, last_evaluated
        classifier = SentimentClassifier(
            model, tokenizer, max_length=config.max_length, batch_size=config.eval_batch_size
        )
        metrics = classification_metrics(
            splits.validation[LABEL].tolist(),
            classifier.predict_proba(splits.validation[TEXT].tolist()),
            labels,
        )
        model.train()
        last_evaluated = step
        history.append({"step": step, **{k: metrics[k] for k in ("accuracy", "macro_f1", "log_loss")}})
        if on_evaluate:
            on_evaluate(step, metrics)
        if metrics["macro_f1"] > best_f1:
            best_f1, best_step, evaluations_without_gain = metrics["macro_f1"], step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            evaluations_without_gain += 1
        logger.info(
            "step %d/%d: validation macro-F1 %.4f (best %.4f at %d)",
            step,
            schedule.total,
            metrics["macro_f1"],
            best_f1,
            best_step,
        )
        return evaluations_without_gain >= config.patience

    model.train()
    bar = tqdm(total=planned, desc="fine-tuning", unit="step")
    running_loss = None
    while not stopped_by:
        for index in bucketed_batches(lengths, config.batch_size, rng):
            batch = pad_batch([encodings[i] for i in index], pad_id)
            loss = model(**batch, labels=targets[index]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(index)
            schedule.observe(step, time.monotonic())
            if bar.total != schedule.total:
                bar.total = schedule.total
            running_loss = loss.item() if running_loss is None else 0.9 * running_loss + 0.1 * loss.item()
            bar.set_postfix(loss=f"{running_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}", refresh=False)
            bar.update(1)
            if (step % eval_every == 0 or step >= schedule.total) and evaluate_now():
                stopped_by = "early_stopping"
            elif step >= schedule.total or time.monotonic() > deadline:
                if schedule.total < planned or step < schedule.total:
                    stopped_by = "max_minutes"
                elif config.max_steps and planned == config.max_steps:
                    stopped_by = "max_steps"
                else:
                    stopped_by = "epochs"
            if stopped_by:
                break
    bar.close()
    if last_evaluated != step:
        evaluate_now()
    train_seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FineTuneResult(
        model, tokenizer, step, planned, seen, best_step, best_f1, stopped_by, train_seconds, history
    )


def save_model_dir(result: FineTuneResult, labels: list[str], config: SentimentConfig, folder: Path) -> Path:
    """Weights, config (with id2label / label2id), tokenizer and the churnsense sidecar, in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder)
    result.tokenizer.model_max_length = config.max_length
    result.tokenizer.save_pretrained(folder)
    sidecar = {"labels": labels, "backbone": config.backbone, "max_length": config.max_length}
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return folder


# --- evaluation ------------------------------------------------------------------------------------------


def _metric_key(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def classification_metrics(y_true: list[str], proba: np.ndarray, labels: list[str]) -> dict[str, float]:
    """accuracy, macro_f1, log_loss and per-class precision / recall / f1 (`precision_<label>` ...).

    `proba` columns follow `labels`; a true label outside `labels` counts as an error (and no log loss).
    """
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support

    predicted = [labels[i] for i in proba.argmax(axis=1)]
    classes = sorted(set(labels) | set(y_true))
    metrics = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "macro_f1": float(
            f1_score(y_true, predicted, labels=sorted(set(y_true)), average="macro", zero_division=0)
        ),
    }
    if set(y_true) <= set(labels):
        clipped = np.clip(proba, 1e-7, 1.0)
        metrics["log_loss"] = float(
            log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)
        )
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, predicted, labels=classes, zero_division=0
    )
    for label, p, r, f in zip(classes, precision, recall, f1, strict=True):
        key = _metric_key(label)
        metrics[f"precision_{key}"], metrics[f"recall_{key}"], metrics[f"f1_{key}"] = (
            float(p),
            float(r),
            float(f),
        )
    return metrics


def confusion_figure(y_true: list[str], y_pred: list[str], labels: list[str], title: str) -> Any:
    """A labelled confusion-matrix figure (counts), drawn without pyplot so no GUI backend is touched."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    figure = Figure(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(
            col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black"
        )
    figure.tight_layout()
    return figure


def timed_proba(classifier: SentimentClassifier, texts: list[str]) -> tuple[np.ndarray, float]:
    """(probabilities, texts per second) for one pass over `texts`."""
    started = time.perf_counter()
    proba = classifier.predict_proba(texts)
    return proba, len(texts) / max(time.perf_counter() - started, 1e-9)


@dataclass
class SentimentEvaluation:
    """Every metric of a run (flat, prefixed) and the predictions behind the plots."""

    metrics: dict[str, float]
    predictions: dict[str, list[str]]


def evaluate_models(
    classifier: SentimentClassifier, baseline: Any | None, splits: ReviewSplits, labels: list[str]
) -> SentimentEvaluation:
    """Transformer metrics on validation and test (`val_*`, `test_*`), the baseline's (`baseline_val_*`,
    `baseline_test_*`), and the int8 variant on test: `int8_accuracy`, `int8_accuracy_delta` (int8 - fp32,
    in accuracy points as a fraction), `int8_macro_f1`, and texts/second at batch 32 for both."""
    metrics: dict[str, float] = {}
    predictions: dict[str, list[str]] = {}
    fp32 = SentimentClassifier(
        classifier.model, classifier.tokenizer, max_length=classifier.max_length, batch_size=THROUGHPUT_BATCH
    )
    for name, part in (("val", splits.validation), ("test", splits.test)):
        texts, truth = part[TEXT].tolist(), part[LABEL].tolist()
        proba, speed = timed_proba(fp32, texts)
        metrics.update({f"{name}_{k}": v for k, v in classification_metrics(truth, proba, labels).items()})
        predictions[name] = [labels[i] for i in proba.argmax(axis=1)]
        if name == "test":
            metrics["fp32_texts_per_second"] = speed
        if baseline is not None:
            base_proba = baseline.predict_proba(part[[TEXT]].astype({TEXT: object}))
            base_labels = [str(c) for c in baseline.classes_]
            base = classification_metrics(truth, base_proba, base_labels)
            metrics.update({f"baseline_{name}_{k}": v for k, v in base.items()})
            predictions[f"baseline_{name}"] = [base_labels[i] for i in base_proba.argmax(axis=1)]
    int8 = fp32.to_int8()
    test_texts, test_truth = splits.test[TEXT].tolist(), splits.test[LABEL].tolist()
    int8_proba, int8_speed = timed_proba(int8, test_texts)
    int8_metrics = classification_metrics(test_truth, int8_proba, labels)
    metrics["int8_accuracy"] = int8_metrics["accuracy"]
    metrics["int8_macro_f1"] = int8_metrics["macro_f1"]
    metrics["int8_accuracy_delta"] = int8_metrics["accuracy"] - metrics["test_accuracy"]
    metrics["int8_label_agreement"] = float(
        np.mean(np.array([labels[i] for i in int8_proba.argmax(axis=1)]) == np.array(predictions["test"]))
    )
    metrics["int8_texts_per_second"] = int8_speed
    metrics["int8_throughput_ratio"] = int8_speed / metrics["fp32_texts_per_second"]
    return SentimentEvaluation(metrics, predictions)


# --- tracking --------------------------------------------------------------------------------------------


@dataclass
class SentimentRunResult:
    """What `train_sentiment` produced: where it is tracked and how good it is."""

    run_id: str
    model_uri: str
    model_name: str | None
    version: str | None
    labels: list[str]
    metrics: dict[str, float]
    timings: dict[str, float]
    cleaning: dict[str, int]
    sizes: dict[str, int]
    training: dict[str, Any]
    classifier: SentimentClassifier | None = field(default=None, repr=False, compare=False)
    """The fine-tuned fp32 model, in memory (not part of the JSON summary)."""

    def to_json(self) -> str:
        """Everything but the in-memory classifier, as indented JSON."""
        fields = {k: v for k, v in vars(self).items() if k != "classifier"}
        return json.dumps(fields, indent=2, sort_keys=True, default=str)

    def headline(self) -> str:
        """One line for the terminal."""
        m = self.metrics
        baseline = (
            f"; baseline accuracy {m['baseline_test_accuracy']:.4f} macro-F1 {m['baseline_test_macro_f1']:.4f}"
            if "baseline_test_accuracy" in m
            else ""
        )
        version = f"{self.model_name} v{self.version}" if self.version else self.model_uri
        return (
            f"{version} (run {self.run_id}): test accuracy {m['test_accuracy']:.4f} macro-F1 "
            f"{m['test_macro_f1']:.4f}{baseline}; int8 accuracy delta {m['int8_accuracy_delta']:+.4f} at "
            f"{m['int8_throughput_ratio']:.2f}x fp32 speed; trained {self.timings['train_s']:.0f}s"
        )


def pip_requirements() -> list[str]:
    """Pinned to what trained the model, passed explicitly so MLflow never guesses them."""
    from importlib.metadata import version

    return [
        f"{name}=={version(name).split('+')[0]}"
        for name in (
            "mlflow",
            "torch",
            "transformers",
            "tokenizers",
            "safetensors",
            "pandas",
            "numpy",
            "pyarrow",
        )
    ]


def log_sentiment_model(
    hf_dir: Path, classifier: SentimentClassifier, labels: list[str], config: SentimentConfig
) -> Any:
    """Log the fine-tuned model as a pyfunc (artifact = the HF folder) with signature, input example and
    metadata; register it under `config.model_name` when `config.register_model`. Returns the `ModelInfo`."""
    import mlflow
    from mlflow.models import infer_signature

    from models.sentiment_pyfunc import HF_ARTIFACT, SentimentPyfunc

    example = pd.DataFrame(
        {TEXT: ["the flight was great, thank you", "lost my bag and nobody answers"]}
    ).astype({TEXT: object})
    output = classifier.predict_frame(example[TEXT].tolist())
    output = output.astype({"label": object})
    with warnings.catch_warnings():
        # The explicit signature below is the contract; MLflow's type-hint nag does not apply.
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=SentimentPyfunc(),
            artifacts={HF_ARTIFACT: str(hf_dir)},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={
                "labels": labels,
                "backbone": config.backbone,
                "max_length": config.max_length,
                # The model's identity for caches and lineage (`models.sentiment.artifact_digest` of hf_model).
                "artifact_digest": artifact_digest(hf_dir),
            },
            # MLflow also logs model_config as run params: keys must not clash with the config's own params.
            model_config={
                "quantize": config.quantize,
                "num_threads": config.num_threads,
                "inference_batch_size": 32,
            },
            registered_model_name=config.model_name if config.register_model else None,
        )


def log_baseline_model(baseline: Any, splits: ReviewSplits) -> Any:
    """Log the TF-IDF baseline as a second model (`baseline`), not registered."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = splits.train[[TEXT]].head(2).astype({TEXT: object})
    from importlib.metadata import version

    return mlflow.sklearn.log_model(
        baseline,
        name="baseline",
        signature=infer_signature(example, np.asarray(baseline.predict(example), dtype=object)),
        input_example=example,
        pip_requirements=[f"scikit-learn=={version('scikit-learn')}", f"mlflow=={version('mlflow')}"],
    )


# --- the whole run ---------------------------------------------------------------------------------------


def prepare_reviews(
    spec: DatasetSpec, config: SentimentConfig
) -> tuple[pd.DataFrame, CleaningReport, list[str], ReviewSplits]:
    """load -> clean -> check labels -> split; every user-fixable problem raises before a run is started."""
    raw = load_labelled_reviews(spec)
    if not len(raw):
        raise SentimentDataError(f"reviews ({spec.resolve(spec.reviews.path)}): no labelled rows")
    clean, report = clean_reviews(raw)
    if not len(clean):
        raise SentimentDataError(f"reviews.text ({spec.reviews.text!r}): every text is empty")
    clean, labels = check_labels(clean, spec, config)
    return clean, report, labels, split_reviews(clean, config)


def train_sentiment(
    spec: DatasetSpec | Path | str, config: SentimentConfig | Path | str | None = None, **overrides: Any
) -> SentimentRunResult:
    """Train, evaluate, log and register the sentiment model (and its baseline) in one MLflow run.

    Args:
        spec: a `DatasetSpec` or the path of a spec YAML with a `reviews` section.
        config: a `SentimentConfig`, a config YAML path, or None for `configs/sentiment.yaml`.
        **overrides: config keys to change, e.g. ``max_steps=40`` for a one-minute demo.
    Returns:
        The run id, registered version, metrics, timings, cleaning counts and split sizes.
    """
    import mlflow

    from training.tracking import code_version, configure_mlflow, data_fingerprint

    total_started = time.perf_counter()
    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    if not isinstance(config, SentimentConfig):
        config = load_sentiment_config(config, **overrides)
    elif overrides:
        config = load_sentiment_config(None, **{**config.model_dump(), **overrides})
    torch.set_num_threads(config.num_threads)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    clean, report, labels, splits = prepare_reviews(spec, config)
    timings["prepare_s"] = time.perf_counter() - started
    logger.info("labels %s; split %s", labels, splits.sizes())

    configure_mlflow(config.experiment)
    with mlflow.start_run(run_name=f"sentiment-{Path(config.backbone).name}") as run:
        mlflow.set_tags(
            {
                "churnsense.model": "sentiment",
                "code_version": code_version(),
                "backbone": config.backbone,
                "labels": json.dumps(labels),
            }
        )
        mlflow.log_params(config.as_params())
        mlflow.log_params({f"data_{k}": v for k, v in data_fingerprint(clean[[TEXT, LABEL]]).items()})
        mlflow.log_dict(config.model_dump(mode="json"), "config/sentiment_config.yaml")
        if spec.reviews is not None:
            mlflow.log_dict(spec.reviews.model_dump(mode="json"), "config/spec_reviews.yaml")
        mlflow.log_metrics({**report.as_metrics(), **{k: float(v) for k, v in splits.sizes().items()}})
        with tempfile.TemporaryDirectory() as tmp:
            validation_path = Path(tmp, "validation.parquet")
            splits.validation.to_parquet(validation_path, index=False)
            mlflow.log_artifact(str(validation_path), artifact_path="validation")

        baseline = None
        if config.baseline:
            started = time.perf_counter()
            baseline = fit_baseline(splits.train, config)
            timings["baseline_s"] = time.perf_counter() - started

        started = time.perf_counter()
        model, tokenizer = load_backbone(config, labels)
        timings["load_backbone_s"] = time.perf_counter() - started

        def log_validation(step: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({f"step_val_{k}": metrics[k] for k in ("accuracy", "macro_f1")}, step=step)

        fit = fine_tune(model, tokenizer, splits, labels, config, on_evaluate=log_validation)
        timings["train_s"] = fit.train_seconds
        training = {
            "steps": fit.steps,
            "planned_steps": fit.planned_steps,
            "best_step": fit.best_step,
            "stopped_by": fit.stopped_by,
            "examples_seen": fit.examples_seen,
            "seconds_per_1k_examples": fit.seconds_per_1k_examples,
        }
        mlflow.log_metrics({k: float(v) for k, v in training.items() if k != "stopped_by"})
        mlflow.set_tag("stopped_by", fit.stopped_by)
        mlflow.log_dict({"history": fit.history}, "training/history.json")

        started = time.perf_counter()
        classifier = SentimentClassifier(
            fit.model, tokenizer, max_length=config.max_length, batch_size=config.eval_batch_size
        )
        evaluation = evaluate_models(classifier, baseline, splits, labels)
        timings["evaluate_s"] = time.perf_counter() - started
        mlflow.log_metrics(evaluation.metrics)
        for name, part in (("val", splits.validation), ("test", splits.test)):
            truth = part[LABEL].tolist()
            mlflow.log_figure(
                confusion_figure(truth, evaluation.predictions[name], labels, f"{config.backbone}: {name}"),
                f"plots/confusion_{name}.png",
            )
        if baseline is not None:
            mlflow.log_figure(
                confusion_figure(
                    splits.test[LABEL].tolist(),
                    evaluation.predictions["baseline_test"],
                    labels,
                    "TF-IDF baseline: test",
                ),
                "plots/confusion_baseline_test.png",
            )

        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = save_model_dir(fit, labels, config, Path(tmp, "hf_model"))
            info = log_sentiment_model(hf_dir, classifier, labels, config)
            classifier.digest = artifact_digest(hf_dir)
        mlflow.set_tag("artifact_digest", classifier.digest)
        if baseline is not None:
            log_baseline_model(baseline, splits)
        timings["log_model_s"] = time.perf_counter() - started
        timings["total_s"] = time.perf_counter() - total_started
        mlflow.log_metrics({f"time_{k}": v for k, v in timings.items()})

    version = getattr(info, "registered_model_version", None)
    if version:
        from mlflow import MlflowClient

        MlflowClient().set_model_version_tag(
            config.model_name, str(version), "artifact_digest", classifier.digest
        )
    result = SentimentRunResult(
        run_id=run.info.run_id,
        model_uri=f"models:/{config.model_name}/{version}" if version else info.model_uri,
        model_name=config.model_name if version else None,
        version=str(version) if version else None,
        labels=labels,
        metrics=evaluation.metrics,
        timings=timings,
        cleaning=asdict(report),
        sizes=splits.sizes(),
        training=training,
        classifier=classifier,
    )
    logger.info("%s", result.headline())
    return result


def write_summary(result: SentimentRunResult, path: Path) -> None:
    """The run summary as JSON (metrics, run id, version, timings), written atomically."""
    atomic_write_text(result.to_json(), path)


# --- promotion -------------------------------------------------------------------------------------------


def load_validation_split(run_id: str) -> pd.DataFrame:
    """The validation split a sentiment run logged (`validation/validation.parquet`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=VALIDATION_ARTIFACT, dst_path=tmp
            )
        except (MlflowException, OSError) as error:
            raise UserError(
                f"run {run_id} has no {VALIDATION_ARTIFACT} to compare versions on; was it trained by "
                f"`churnsense train sentiment`? ({error})"
            ) from None
        return pd.read_parquet(local)


def evaluate_for_promotion(model_uri: str, challenger_version: Any) -> dict[str, float]:
    """`training.registry.Evaluator`: score `model_uri` (fp32) on the challenger run's validation split."""
    frame = load_validation_split(challenger_version.run_id)
    classifier = SentimentClassifier.load(model_uri, quantize=False)
    metrics = classification_metrics(
        frame[LABEL].astype(str).tolist(),
        classifier.predict_proba(frame[TEXT].astype(str).tolist()),
        classifier.labels,
    )
    return {k: metrics[k] for k in ("macro_f1", "accuracy", "log_loss") if k in metrics}


SENTIMENT_POLICY_TOLERANCE = 0.05
"""Log loss may worsen by this much: fine-tuned encoders that win on macro-F1 are often a little less
calibrated, and 0.005 (the churn default for Brier) would refuse nearly every better classifier."""


def promote_sentiment(
    force: bool = False, model_name: str = "churnsense-sentiment", dry_run: bool = False
) -> Any:
    """Move `champion` to the newest sentiment version if it beats the champion on validation macro-F1
    without worsening log loss by more than `SENTIMENT_POLICY_TOLERANCE`. Returns the `PromotionDecision`.
    With `dry_run` only decide (see `training.coupled` for promoting it together with the churn model)."""
    import mlflow

    from training.registry import PromotionPolicy, promote_newest
    from training.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    policy = PromotionPolicy(
        primary_metric="macro_f1",
        calibration_metric="log_loss",
        calibration_tolerance=SENTIMENT_POLICY_TOLERANCE,
    )
    return promote_newest(model_name, evaluate_for_promotion, policy, force=force, dry_run=dry_run)
