"""Sentiment training: fine-tune a pretrained encoder (and a TF-IDF baseline), track it in MLflow, register it.

    load_labelled_reviews -> clean_reviews -> check_labels -> split_reviews
        -> fit_baseline, load_backbone -> fine_tune -> evaluate_models (val, test, int8) -> package (`training.text_logging`)

`train_sentiment(spec, config)` runs the whole chain and returns a `SentimentRunResult`; the CLI command
`churnsense train sentiment` and the demo call it. Promotion (`promote_sentiment`) scores the newest version
and the champion on the challenger run's logged validation split (`validation/validation.parquet`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from churnsense.errors import UserError
from churnsense.files import atomic_write_text
from features.columns import TEXT
from features.spec import DatasetSpec, load_spec
from models.sentiment import (
    SentimentClassifier,
    artifact_digest,
)
from training.checkpoints import Checkpointer, checkpoint_folder, resumable_run
from training.finetune import classification_metrics, fine_tune, fit_baseline, load_backbone, save_model_dir
from training.reference import REFERENCE_ARTIFACT, text_reference
from training.reviews import LABEL, ReviewSplits, prepare_reviews
from training.sentiment_config import SentimentConfig, load_sentiment_config
from training.text_logging import Packager, log_baseline_model, package_sentiment

logger = logging.getLogger(__name__)


VALIDATION_ARTIFACT = "validation/validation.parquet"
THROUGHPUT_BATCH = 32


# --- evaluation ------------------------------------------------------------------------------------------


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
    in accuracy points as a fraction), `int8_macro_f1`, and texts/second for both on the served, batch-invariant
    paths: int8 in packed batches of 32, fp32 one text per pass (`int8_throughput_ratio` is therefore large;
    `benchmarks/sentiment.py` compares with padded fp32 batches)."""
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


def log_run_start(
    spec: DatasetSpec,
    config: SentimentConfig,
    clean: pd.DataFrame,
    report: Any,
    splits: ReviewSplits,
    labels: list[str],
    fingerprint: dict[str, Any],
) -> None:
    """What a new run logs before training: tags, params, config, spec, cleaning counts, the validation split."""
    import mlflow

    from training.tracking import code_version

    mlflow.set_tags(
        {"churnsense.model": "sentiment", "code_version": code_version(), "backbone": config.backbone,
         "labels": json.dumps(labels)}
    )  # fmt: skip
    mlflow.log_params(config.as_params())
    mlflow.log_params({f"data_{k}": v for k, v in fingerprint.items()})
    mlflow.log_dict(config.model_dump(mode="json"), "config/sentiment_config.yaml")
    if spec.reviews is not None:
        mlflow.log_dict(spec.reviews.model_dump(mode="json"), "config/spec_reviews.yaml")
    mlflow.log_metrics({**report.as_metrics(), **{k: float(v) for k, v in splits.sizes().items()}})
    with tempfile.TemporaryDirectory() as tmp:
        validation_path = Path(tmp, "validation.parquet")
        splits.validation.to_parquet(validation_path, index=False)
        mlflow.log_artifact(str(validation_path), artifact_path="validation")


PACKAGE_TAG = (
    "churnsense.package"  # which packaging step a run ends with: a resumed run must end the same way
)


def package_name(package: Packager) -> str:
    return f"{package.__module__}.{package.__qualname__}"


def check_resumed_package(run_id: str, package: Packager) -> None:
    """Refuse to resume a run with another packaging step than it started with (an aspect run resumed as a
    sentiment run would register a model without its TF-IDF half, under the aspect name)."""
    from mlflow import MlflowClient

    started = MlflowClient().get_run(run_id).data.tags.get(PACKAGE_TAG)
    if started is not None and started != package_name(package):
        command = (
            "churnsense train aspects --fine-tune"
            if started.startswith("training.aspect")
            else "churnsense train sentiment"
        )
        raise UserError(
            f"--resume {run_id}: that run was started by `{command}`; resume it with that command"
        )


def train_sentiment(
    spec: DatasetSpec | Path | str,
    config: SentimentConfig | Path | str | None = None,
    resume: str | None = None,
    package: Packager = package_sentiment,
    **overrides: Any,
) -> SentimentRunResult:
    """Train, evaluate, log and register the sentiment model (and its baseline) in one MLflow run.

    Args:
        spec: a `DatasetSpec` or the path of a spec YAML with a `reviews` section.
        config: a `SentimentConfig`, a config YAML path, or None for `configs/sentiment.yaml`.
        resume: the id of a run that was stopped (killed, crashed): it continues from its checkpoint, in that
            run, with that run's config (`training.checkpoints`); give no `config` or overrides with it.
        package: how the fine-tuned folder is logged (`Packager`; the aspect trainer passes its own).
        **overrides: config keys to change, e.g. ``max_steps=40`` for a one-minute demo.
    Returns: the run id, registered version, metrics, timings, cleaning counts and split sizes.
    """
    import mlflow

    from training.tracking import code_version, configure_mlflow, data_fingerprint

    total_started = time.perf_counter()
    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    if resume is not None and (config is not None or overrides):
        raise UserError("--resume continues a run with its own config: give no --config with it")
    checkpoints = stopped = None
    if resume is not None:
        logged, checkpoints, stopped = resumable_run(resume)
        check_resumed_package(resume, package)
        config = SentimentConfig(**logged)
    elif not isinstance(config, SentimentConfig):
        config = load_sentiment_config(config, **overrides)
    elif overrides:
        config = load_sentiment_config(None, **{**config.model_dump(), **overrides})
    torch.set_num_threads(config.num_threads)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    clean, report, labels, splits = prepare_reviews(spec, config)
    timings["prepare_s"] = time.perf_counter() - started
    logger.info("labels %s; split %s", labels, splits.sizes())

    fingerprint = data_fingerprint(clean[[TEXT, LABEL]])
    if stopped is not None:
        stopped.continue_with(str(fingerprint["sha256"]))
    else:
        configure_mlflow(config.experiment)
    with mlflow.start_run(
        run_id=resume, run_name=None if resume else f"sentiment-{Path(config.backbone).name}"
    ) as run:
        if checkpoints is None:
            checkpoints = Checkpointer(checkpoint_folder(run.info.run_id), config.checkpoint_every_steps)
            log_run_start(spec, config, clean, report, splits, labels, fingerprint)
            mlflow.set_tag(PACKAGE_TAG, package_name(package))
        checkpoints.claim()

        baseline = None
        if config.baseline:
            started = time.perf_counter()
            baseline = fit_baseline(splits.train, config)
            timings["baseline_s"] = time.perf_counter() - started

        started = time.perf_counter()
        model, tokenizer = load_backbone(config, labels)
        timings["load_backbone_s"] = time.perf_counter() - started

        def log_validation(step: int, metrics: dict[str, float]) -> None:
            if (
                stopped is None or step not in stopped.logged_steps
            ):  # a resumed run validates some steps again
                mlflow.log_metrics({f"step_val_{k}": metrics[k] for k in ("accuracy", "macro_f1")}, step=step)

        fit = fine_tune(model, tokenizer, splits, labels, config, log_validation, checkpoints)
        where = {
            "device": fit.device,
            "precision": fit.precision,
            "resumed_from_step": str(fit.resumed_from_step),
        }
        mlflow.set_tags(where | ({"resumed_code_version": code_version()} if stopped else {}))
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
        # What its texts looked like (lengths, predicted label mix, vocabulary): the reference for later texts.
        mlflow.log_dict(
            text_reference(splits.train[TEXT], splits.test[TEXT], evaluation.predictions["test"]),
            REFERENCE_ARTIFACT,
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
            info, packaged = package(hf_dir, classifier, splits, labels, config)
            classifier.digest = artifact_digest(hf_dir)  # after packaging: every file the model loads
        mlflow.set_tag("artifact_digest", classifier.digest)
        if packaged:
            mlflow.log_metrics(packaged)
            evaluation.metrics.update(packaged)
        if baseline is not None:
            log_baseline_model(baseline, splits)
        timings["log_model_s"] = time.perf_counter() - started
        timings["total_s"] = time.perf_counter() - total_started
        mlflow.log_metrics({f"time_{k}": v for k, v in timings.items()})
    checkpoints.discard()  # the run is complete

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


def load_validation_split(run_id: str, artifact: str = VALIDATION_ARTIFACT) -> pd.DataFrame:
    """The validation split a sentiment run logged (`validation/validation.parquet`), or another split it logged
    (`artifact`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        except (MlflowException, OSError) as error:
            raise UserError(
                f"run {run_id} has no {artifact} to compare versions on; was it trained by "
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

    from models.catalog import tracking_uri
    from training.registry import PromotionPolicy, promote_newest

    mlflow.set_tracking_uri(tracking_uri())
    policy = PromotionPolicy(
        primary_metric="macro_f1",
        calibration_metric="log_loss",
        calibration_tolerance=SENTIMENT_POLICY_TOLERANCE,
    )
    return promote_newest(model_name, evaluate_for_promotion, policy, force=force, dry_run=dry_run)
