"""Fine-tuning the pretrained encoder (and the TF-IDF baseline fitted beside it).

Length-bucketed batches with dynamic padding, AdamW with a separate head learning rate, linear warm-up and decay,
validation every N steps with early stopping on macro-F1, and a step / wall-time budget (`BudgetedSchedule`).
`save_model_dir` writes the Hugging Face folder (weights, config with id2label, tokenizer, churnsense sidecar).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from churnsense.environment import OFFLINE, set_defaults
from features.columns import TEXT
from models.sentiment import (
    SIDECAR,
    SentimentClassifier,
    pad_batch,
    resolve_backbone,
)
from training.checkpoints import Checkpointer, autocast_dtype, kill_hook, precision_name, resolve_device
from training.reviews import LABEL, ReviewSplits
from training.sentiment_config import SentimentConfig

logger = logging.getLogger(__name__)


# --- models ----------------------------------------------------------------------------------------------


def fit_baseline(train: pd.DataFrame, config: SentimentConfig) -> Any:
    """TF-IDF (word 1-2-grams + char_wb 2-5-grams) + logistic regression, as one sklearn `Pipeline` that takes
    a frame with a `text` column and predicts label names, fitted on `train`."""
    pipeline = baseline_pipeline(config, len(train))
    return pipeline.fit(train[[TEXT]].astype({TEXT: object}), train[LABEL].astype(object))


def baseline_pipeline(config: SentimentConfig, n_texts: int) -> Any:
    """The baseline's unfitted pipeline for a training set of `n_texts`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    # Tiny data sets (tests) would lose every n-gram to min_df=2.
    min_df = 2 if n_texts >= 1000 else 1
    features = ColumnTransformer(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True), TEXT),
            (
                "char",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df, sublinear_tf=True),
                TEXT,
            ),
        ],
        # Always sparse: a dense output (a tiny vocabulary) would go through a BLAS product whose rounding
        # depends on the batch, and the aspect model's TF-IDF half must score a text the same in any batch.
        sparse_threshold=1.0,
    )
    pipeline = Pipeline(
        [
            ("tfidf", features),
            (
                "logreg",
                LogisticRegression(
                    C=config.baseline_c,
                    max_iter=2000,
                    class_weight="balanced" if config.class_weight == "balanced" else None,
                ),
            ),
        ]
    )
    return pipeline


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
        set_defaults(OFFLINE)
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
    device: str = "cpu"
    precision: str = "fp32"
    resumed_from_step: int = 0  # 0: a fresh run

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

    def state(self) -> dict[str, Any]:
        return {"total": self.total, "recent": list(self._recent)}

    def restore(self, state: dict[str, Any]) -> None:
        """The plan of a checkpoint; the seconds per step are measured afresh (the killed process's clock
        readings would count the time it was down, or be from before a reboot)."""
        self.total = int(state["total"])
        self._recent.clear()

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
    checkpoints: Checkpointer | None = None,
) -> FineTuneResult:
    """A plain torch loop: bucketed dynamic-padding batches, AdamW with linear warm-up/decay, gradient
    clipping, validation macro-F1 every `eval_every_steps` (or epoch) with early stopping, and a step
    (`max_steps`) and time (`max_minutes`) budget. The best validation weights are restored at the end.

    On `config.device` (CUDA with autocast in `config.precision` when there is one); the returned model is on
    the CPU in fp32 whatever trained it.

    Args:
        on_evaluate: called with (step, validation metrics) after every validation, e.g. to log to MLflow.
        checkpoints: the whole training state is saved there every `checkpoints.every` steps, and a run given
            a folder that holds a checkpoint resumes from it (`training.checkpoints`).
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    dtype = autocast_dtype(config.precision, device)
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
    weights = None
    if config.class_weight == "balanced":  # n / (classes * count), as scikit-learn's class_weight="balanced"
        counts = torch.bincount(targets, minlength=len(labels)).clamp_min(1).float()
        weights = (len(targets) / (len(labels) * counts)).to(device)
    steps_per_epoch = math.ceil(len(encodings) / config.batch_size)
    planned = max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.max_steps:
        planned = min(planned, config.max_steps)
    eval_every = config.eval_every_steps or steps_per_epoch
    model.to(device)
    optimizer = _optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    budget_s = 60 * config.max_minutes if config.max_minutes else math.inf
    schedule = BudgetedSchedule(planned, config.warmup_ratio, time.monotonic() + budget_s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    pad_id = tokenizer.pad_token_id or 0

    best_f1, best_step, best_state, evaluations_without_gain = -1.0, 0, None, 0
    step, seen, stopped_by, history = 0, 0, "", []
    last_evaluated, running_loss, spent, skip = -1, None, 0.0, 0
    epoch_rng = rng.bit_generator.state
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"]:  # empty when the run it came from had no fp16 scaler
            scaler.load_state_dict(saved["scaler"])
        schedule.restore(saved["schedule"])
        step, seen, spent = saved["step"], saved["seen"], saved["train_seconds"]
        best_f1, best_step, best_state = saved["best_f1"], saved["best_step"], saved["best_state"]
        evaluations_without_gain, history = saved["evaluations_without_gain"], saved["history"]
        last_evaluated, running_loss = saved["last_evaluated"], saved["running_loss"]
        epoch_rng, skip = saved["epoch_rng"], saved["position"]
        random.setstate(saved["python_rng"])
        np.random.set_state(saved["numpy_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if (
            device.type == "cuda"
            and saved.get("cuda_rng")
            and len(saved["cuda_rng"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        schedule.deadline = time.monotonic() + budget_s - spent
        logger.info("resuming fine-tuning at step %d from %s", step, checkpoints.path)
    resumed_from = step
    started = time.perf_counter() - spent

    def evaluate_now() -> bool:
        """Validate (on the CPU, as served), keep the best weights; True when patience is exhausted."""
        nonlocal best_f1, best_step, best_state, evaluations_without_gain, last_evaluated
        scored = model if device.type == "cpu" else copy.deepcopy(model).to("cpu").float()
        classifier = SentimentClassifier(
            scored, tokenizer, max_length=config.max_length, batch_size=config.eval_batch_size
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
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
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

    def checkpoint(position: int) -> None:
        """Everything the next step depends on (see `training.checkpoints`)."""
        checkpoints.save(
            {
                "step": step, "seen": seen, "train_seconds": time.perf_counter() - started,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "schedule": schedule.state(),
                "best_f1": best_f1, "best_step": best_step, "best_state": best_state,
                "evaluations_without_gain": evaluations_without_gain, "history": history,
                "last_evaluated": last_evaluated, "running_loss": running_loss,
                "epoch_rng": epoch_rng, "position": position,
                "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            }
        )  # fmt: skip

    model.train()
    bar = tqdm(total=planned, initial=step, desc="fine-tuning", unit="step")
    while not stopped_by:
        rng.bit_generator.state = epoch_rng  # the state this epoch's batch order is drawn from
        for position, index in enumerate(bucketed_batches(lengths, config.batch_size, rng), start=1):
            if position <= skip:
                continue  # done before the checkpoint this run resumed from
            batch = {k: v.to(device) for k, v in pad_batch([encodings[i] for i in index], pad_id).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.float(), targets[index].to(device), weight=weights
                )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
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
            elif step >= schedule.total or time.monotonic() > schedule.deadline:
                if schedule.total < planned or step < schedule.total:
                    stopped_by = "max_minutes"
                elif config.max_steps and planned == config.max_steps:
                    stopped_by = "max_steps"
                else:
                    stopped_by = "epochs"
            if checkpoints is not None and checkpoints.due(step) and not stopped_by:
                checkpoint(position)
            kill_hook(step)
            if stopped_by:
                break
        skip = 0
        epoch_rng = rng.bit_generator.state  # the next epoch draws its order from here
    bar.close()
    if last_evaluated != step:
        evaluate_now()
    train_seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").float()  # exported and served on the CPU in fp32, wherever it trained
    model.eval()
    return FineTuneResult(
        model, tokenizer, step, planned, seen, best_step, best_f1, stopped_by, train_seconds, history,
        device=str(device), precision=precision_name(dtype), resumed_from_step=resumed_from,
    )  # fmt: skip


def save_model_dir(result: FineTuneResult, labels: list[str], config: SentimentConfig, folder: Path) -> Path:
    """Weights, config (with id2label / label2id), tokenizer and the churnsense sidecar, in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder)
    result.tokenizer.model_max_length = config.max_length
    result.tokenizer.save_pretrained(folder)
    sidecar = {"labels": labels, "backbone": config.backbone, "max_length": config.max_length}
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return folder


def metric_key(text: str) -> str:
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
        key = metric_key(label)
        metrics[f"precision_{key}"], metrics[f"recall_{key}"], metrics[f"f1_{key}"] = (
            float(p),
            float(r),
            float(f),
        )
    return metrics
