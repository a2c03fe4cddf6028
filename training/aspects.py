"""Aspect models: what a text is about, from a taxonomy in configuration; tracked and registered in MLflow.

    churnsense train aspects                                   # zero-shot from configs/aspects.yaml
    churnsense train aspects --taxonomy T.yaml --spec S.yaml   # zero-shot, evaluated on S's labelled reasons
    churnsense train aspects --spec S.yaml --fine-tune         # trained on S's labelled reasons

Zero-shot (`train_zero_shot`): the taxonomy's descriptions embedded by the packaged sentence encoder, matched by
cosine similarity (`models.aspects.ZeroShotAspects`). With labelled data it is evaluated on the same test split
the trained model would use (`training.reviews.prepare_reviews`, the sentiment config's seed and fractions), and,
with `tune_threshold`, its "none of these" threshold is chosen on the validation split by macro-F1.

Trained (`train_fine_tuned`): the sentiment trainer's fine-tuning (`training.sentiment.train_sentiment`) with
the reasons as classes, averaged with a class-balanced TF-IDF model at a weight chosen on validation
(`training.aspect_averaging`), registered under the aspect model's name.
Both register under `churnsense-aspects` (configurable); a run is tagged `churnsense.model: aspects`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnsense.errors import UserError, read_yaml_file
from features.columns import TEXT
from models.aspects import ZeroShotAspects
from models.catalog import ASPECT_MODEL
from training.reviews import LABEL

logger = logging.getLogger(__name__)

DEFAULT_TAXONOMY = Path(__file__).resolve().parents[1] / "configs" / "aspects.yaml"
ASPECT_MODEL_NAME = ASPECT_MODEL
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 0.61, 0.025))


class AspectConfigError(UserError):
    """The aspect config is missing, not YAML, or has an unknown key or bad value (named)."""


class Aspect(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = Field(
        min_length=1, description="what texts about it say: the zero-shot model reads this"
    )


class AspectConfig(BaseModel):
    """The taxonomy and how the zero-shot model uses it. `configs/aspects.yaml` spells out the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aspects: tuple[Aspect, ...] = Field(min_length=1)
    none_label: str = Field("none", min_length=1, description="a text that fits no aspect")
    threshold: float = Field(0.25, ge=-1, le=1, description="least cosine similarity that names an aspect")
    tune_threshold: bool = Field(True, description="with labelled data: pick the threshold on validation")
    backbone: str = Field("all-MiniLM-L6-v2", description="sentence encoder: the packaged MiniLM or a folder")
    max_length: int = Field(64, ge=8, le=512)
    quantize: bool = Field(True, description="int8 linears with per-token scales (batch invariant)")
    model_name: str = ASPECT_MODEL_NAME
    experiment: str = "churnsense-aspects"
    register_model: bool = True

    @model_validator(mode="after")
    def _distinct(self) -> AspectConfig:
        names = [a.name for a in self.aspects]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"aspect names repeat: {repeated}")
        if self.none_label in names:
            raise ValueError(f"none_label {self.none_label!r} is also an aspect name")
        return self


def load_aspect_config(path: Path | str | None = None) -> AspectConfig:
    """The taxonomy file (default `configs/aspects.yaml`), validated; errors name the file and the key."""
    path = Path(path or DEFAULT_TAXONOMY).expanduser()
    raw = read_yaml_file(path, AspectConfigError, "aspect config") or {}
    if not isinstance(raw, dict):
        raise AspectConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return AspectConfig(**raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "config"
            problems.append(f"{key}: {'unknown key' if item['type'] == 'extra_forbidden' else item['msg']}")
        raise AspectConfigError(f"{path}: " + "; ".join(problems)) from None


def build_zero_shot(config: AspectConfig) -> tuple[ZeroShotAspects, Path]:
    """The zero-shot model of `config` and the encoder folder it was built from."""
    from models.sentiment import resolve_backbone

    encoder_dir, _ = resolve_backbone(config.backbone)
    zero_shot = ZeroShotAspects.from_encoder(
        encoder_dir,
        [a.name for a in config.aspects],
        [a.description for a in config.aspects],
        threshold=config.threshold,
        none_label=config.none_label,
        max_length=config.max_length,
        quantize=config.quantize,
    )
    return zero_shot, Path(encoder_dir)


def aspect_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over `labels` (the taxonomy and, when the data has it, the none label)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def check_labels_fit(labels: list[str], config: AspectConfig) -> list[str]:
    """The labels the evaluation counts; an error names labelled reasons the taxonomy does not have."""
    known = {a.name for a in config.aspects} | {config.none_label}
    unknown = sorted(set(labels) - known)
    if unknown:
        raise AspectConfigError(
            f"labelled reasons {unknown} are neither aspects of the taxonomy nor its none_label "
            f"{config.none_label!r}: add them to `aspects` (or set none_label)"
        )
    return sorted(set(labels))


def best_threshold(curve: dict[float, float], configured: float) -> float:
    """The threshold with the best validation macro-F1; among equals, the one nearest the configured one."""
    return max(curve, key=lambda t: (curve[t], -abs(t - configured)))


def choose_threshold(
    model: ZeroShotAspects, validation: pd.DataFrame, labels: list[str]
) -> dict[float, float]:
    """Macro-F1 on `validation` at each candidate threshold (one embedding pass: only the cut-off moves)."""
    predicted = model.predict(validation[TEXT].tolist())
    best_index = predicted.scores.argmax(axis=1)
    truth = validation[LABEL].astype(str).tolist()
    out = {}
    for threshold in THRESHOLDS:
        names = [
            model.names[i] if b >= threshold else model.none_label
            for i, b in zip(best_index, predicted.best, strict=True)
        ]
        out[threshold] = aspect_metrics(truth, names, labels)["macro_f1"]
    return out


@dataclass
class AspectRunResult:
    run_id: str
    kind: str
    model_uri: str
    version: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None

    def headline(self) -> str:
        where = self.model_uri
        if self.kind == "trained" and "shipped_test_macro_f1" in self.metrics:
            m = self.metrics
            return (
                f"trained aspect model {where} (run {self.run_id}): test accuracy {m['shipped_test_accuracy']:.4f} "
                f"macro-F1 {m['shipped_test_macro_f1']:.4f}, the fine-tuned encoder (alone: "
                f"{m['encoder_test_macro_f1']:.4f}) averaged with a balanced TF-IDF model (alone: "
                f"{m['tfidf_half_test_macro_f1']:.4f}) at encoder weight {m['average_weight']:g}"
            )
        scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(self.metrics.items()) if k.startswith("test_"))
        return f"{self.kind} aspect model {where} (run {self.run_id})" + (f": {scores}" if scores else "")


def train_zero_shot(config: AspectConfig, spec: Any = None) -> AspectRunResult:
    """Build, evaluate (when `spec` has labelled reasons), log and register the zero-shot aspect model."""
    import mlflow

    from training.tracking import code_version, configure_mlflow

    started = time.perf_counter()
    model, encoder_dir = build_zero_shot(config)
    metrics: dict[str, float] = {}
    threshold = config.threshold
    curve: dict[float, float] = {}
    splits = None
    if spec is not None:
        from training.reviews import prepare_reviews
        from training.sentiment_config import load_sentiment_config

        # The trained model's split: the same seed and fractions, so both are judged on the same test texts.
        _, _, data_labels, splits = prepare_reviews(spec, load_sentiment_config(None))
        labels = check_labels_fit(data_labels, config)
        if config.tune_threshold:
            curve = choose_threshold(model, splits.validation, labels)
            threshold = best_threshold(curve, config.threshold)
            model.threshold = threshold
        for part, frame in (("validation", splits.validation), ("test", splits.test)):
            predicted = model.predict(frame[TEXT].tolist()).aspects
            for key, value in aspect_metrics(frame[LABEL].astype(str).tolist(), predicted, labels).items():
                metrics[f"{part}_{key}"] = value
        majority = splits.train[LABEL].astype(str).mode()[0]
        metrics["test_majority_accuracy"] = float((splits.test[LABEL].astype(str) == majority).mean())
    configure_mlflow(config.experiment)
    with mlflow.start_run(run_name="aspects-zero-shot") as run:
        mlflow.set_tags(
            {"churnsense.model": "aspects", "aspects.kind": "zero-shot", "code_version": code_version()}
        )
        mlflow.log_params(
            {k: str(v)[:6000] for k, v in config.model_dump(mode="json").items() if k != "aspects"}
        )
        mlflow.log_param("chosen_threshold", threshold)
        mlflow.log_dict(config.model_dump(mode="json"), "config/aspects.yaml")
        if curve:
            figure = curve_figure(curve, threshold, "threshold (cosine similarity)")
            mlflow.log_figure(figure, "plots/threshold_macro_f1.png")
        if metrics:
            mlflow.log_metrics(metrics)
        if splits is not None:  # the threshold's texts, and what `promote aspects` compares versions on
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp, "validation.parquet")
                splits.validation.to_parquet(path, index=False)
                mlflow.log_artifact(str(path), artifact_path="validation")
            log_promotion_split(splits.test)
        with tempfile.TemporaryDirectory() as tmp:
            folder = model.save(Path(tmp) / "aspect_model", encoder_dir)
            info = _log_model(folder, model, config)
        metrics["build_s"] = time.perf_counter() - started
        mlflow.log_metric("build_s", metrics["build_s"])
    version = getattr(info, "registered_model_version", None)
    uri = f"models:/{config.model_name}/{version}" if version else info.model_uri
    result = AspectRunResult(
        run.info.run_id, "zero-shot", uri, str(version) if version else None, metrics, threshold
    )
    logger.info("%s", result.headline())
    return result


def _log_model(folder: Path, model: ZeroShotAspects, config: AspectConfig) -> Any:
    from models.aspects_pyfunc import ASPECT_ARTIFACT, AspectsPyfunc
    from training.text_logging import log_text_pyfunc

    example = pd.DataFrame({TEXT: ["I was charged twice this month", "thanks, all sorted"]}).astype(
        {TEXT: object}
    )
    output = AspectsPyfunc.frame(model.predict(example[TEXT].tolist()))
    return log_text_pyfunc(
        AspectsPyfunc(),
        {ASPECT_ARTIFACT: str(folder)},
        example,
        output,
        metadata={"aspects": model.names, "none_label": model.none_label, "kind": model.kind},
        model_config={"quantize": config.quantize},
        registered_model_name=config.model_name if config.register_model else None,
    )


def curve_figure(curve: dict[float, float], chosen: float, xlabel: str) -> Any:
    """Validation macro-F1 against a setting (the zero-shot threshold, the averaged model's weight), the chosen
    value marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.plot(list(curve), list(curve.values()), marker="o")
    axes.axvline(chosen, color="grey", linestyle="--", label=f"chosen {chosen:g}")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("validation macro-F1")
    axes.legend()
    figure.tight_layout()
    return figure


def train_fine_tuned(
    spec: Any, config_path: Path | str | None = None, resume: str | None = None, **overrides: Any
) -> AspectRunResult:
    """The sentiment trainer on the spec's reasons, averaged with a balanced TF-IDF model at a weight chosen on
    validation (`training.aspect_averaging`), registered as the aspect model (unless the config names another).
    `resume`: the id of a stopped aspect run, continued from its checkpoint with its own config."""
    from mlflow import MlflowClient

    from training.aspect_averaging import package_aspects
    from training.sentiment import train_sentiment
    from training.sentiment_config import read_config_file

    if resume is not None:
        if config_path is not None or overrides:
            raise UserError("--resume continues a run with its own config: give no --config with it")
        result = train_sentiment(spec, None, resume=resume, package=package_aspects)
    else:
        values = read_config_file(Path(config_path)) if config_path else {}
        values.setdefault("model_name", ASPECT_MODEL_NAME)
        values.setdefault("experiment", "churnsense-aspects")
        values.update(overrides)
        result = train_sentiment(spec, None, package=package_aspects, **values)
    MlflowClient().set_tag(result.run_id, "churnsense.model", "aspects")
    MlflowClient().set_tag(result.run_id, "aspects.kind", "trained")
    trained = AspectRunResult(result.run_id, "trained", result.model_uri, result.version, result.metrics)
    logger.info("%s", trained.headline())
    return trained


PROMOTION_ARTIFACT = "promotion/test.parquet"
"""The labelled texts versions are compared on: the run's test split. Not its validation split, which chose the
zero-shot threshold and the trained model's weight, and would favour the challenger."""


def log_promotion_split(test: pd.DataFrame) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, Path(PROMOTION_ARTIFACT).name)
        test.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=str(Path(PROMOTION_ARTIFACT).parent))


def evaluate_for_promotion(model_uri: str, challenger_version: Any) -> dict[str, float]:
    """`training.registry.Evaluator`: macro-F1 and accuracy of `model_uri` on the challenger's labelled test
    split (runs from before it was logged: their validation split; none: no metrics, so only --force promotes)."""
    from training.sentiment import load_validation_split

    frame = None
    for artifact in (PROMOTION_ARTIFACT, "validation/validation.parquet"):
        try:
            frame = load_validation_split(challenger_version.run_id, artifact)
            break
        except UserError:
            continue
    if frame is None:
        return {}
    from models.aspects import load_aspect_model

    truth = frame[LABEL].astype(str).tolist()
    predicted = load_aspect_model(model_uri).predict(frame[TEXT].astype(str).tolist()).aspects
    return aspect_metrics(truth, predicted, sorted(set(truth)))


def promote_aspects(force: bool = False, model_name: str = ASPECT_MODEL_NAME) -> Any:
    """The newest aspect version becomes champion if it is the first, or beats the champion's macro-F1 on its
    own labelled test split (`PROMOTION_ARTIFACT`); `force` overrides. Returns the `PromotionDecision`."""
    from training.registry import PromotionPolicy, promote_newest
    from training.tracking import configure_mlflow

    configure_mlflow("churnsense-aspects")
    policy = PromotionPolicy(primary_metric="macro_f1", calibration_metric=None)
    return promote_newest(model_name, evaluate_for_promotion, policy, force=force)
