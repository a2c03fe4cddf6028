"""Configuration of the churn trainer: YAML -> frozen pydantic models, validated once, logged whole to MLflow.

Every key has a default (`ChurnConfig()` is the default config; `configs/churn.yaml` spells it out), and an
unknown or wrongly typed key is refused with a message that names it. No I/O happens at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churnsense.errors import UserError, read_yaml_file
from features.labels import MIN_POSITIVES
from models.churn import RiskCutoffs


class ConfigError(UserError):
    """The churn config file is missing, not YAML, or has an unknown key or a bad value (named)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BoosterConfig(_Frozen):
    """`HistGradientBoostingClassifier` hyper-parameters. Small, shallow, regularised trees by default: churn
    tables are small and noisy, and early stopping picks the number of trees."""

    learning_rate: float = Field(0.04, gt=0, le=1)
    max_iter: int = Field(
        1000, ge=1, le=10_000, description="upper bound; early stopping usually stops sooner"
    )
    max_leaf_nodes: int = Field(8, ge=2, le=63)
    max_depth: int | None = Field(
        6, ge=1, le=12, description="also bounds the reasons' lookup tables (2^depth entries per leaf)"
    )
    min_samples_leaf: int = Field(60, ge=1)
    l2_regularization: float = Field(1.0, ge=0)
    max_features: float = Field(1.0, gt=0, le=1, description="share of features each split considers")
    max_bins: int = Field(255, ge=2, le=255)
    early_stopping: bool = True
    validation_fraction: float = Field(
        0.15, gt=0, lt=0.5, description="of the training part, for early stopping"
    )
    n_iter_no_change: int = Field(30, ge=1)
    max_categories: int = Field(
        64, ge=2, le=254, description="categories kept per categorical column; rarer ones share one code"
    )


class BaselineConfig(_Frozen):
    """The logistic-regression baseline trained in the same run (impute + scale + one-hot inside)."""

    C: float = Field(1.0, gt=0)
    max_iter: int = Field(2000, ge=10)
    min_category_frequency: int = Field(5, ge=1, description="rarer categories are grouped as infrequent")


class CalibrationConfig(_Frozen):
    """How raw boosted scores become probabilities.

    `auto` calibrates out-of-fold scores both ways and takes isotonic only when its cross-validated log loss
    beats sigmoid's by `isotonic_margin`: sigmoid keeps the reasons exact Shapley values (see models/churn.py).
    """

    method: Literal["auto", "sigmoid", "isotonic"] = "auto"
    folds: int = Field(3, ge=2, le=10, description="folds (grouped by customer) for the out-of-fold scores")
    isotonic_margin: float = Field(0.002, ge=0)


class SplitConfig(_Frozen):
    """Train / validation split.

    Several snapshots: a `validation_fraction` share of all customers (stratified by "ever churned") is held
    out; their rows at the `validation_snapshots` latest as_of dates are the validation set, and none of their
    rows is trained on; train keeps the snapshots whose label window ends by the first validation date.
    One snapshot or a static label: a stratified split by customer.
    """

    validation_fraction: float = Field(0.2, gt=0, lt=0.9)
    validation_snapshots: int = Field(1, ge=1)


class SearchConfig(_Frozen):
    """Optional small search: each candidate overrides booster keys and is scored by grouped CV ROC AUC on
    the training part (never on the validation set); the best one is trained."""

    enabled: bool = False
    folds: int = Field(3, ge=2, le=10)
    candidates: tuple[dict[str, Any], ...] = (
        {"learning_rate": 0.04, "max_leaf_nodes": 8, "min_samples_leaf": 60},
        {"learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40},
        {"learning_rate": 0.03, "max_leaf_nodes": 8, "min_samples_leaf": 100, "l2_regularization": 5.0},
        {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20},
    )

    @field_validator("candidates")
    @classmethod
    def _known_keys(cls, candidates: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for i, candidate in enumerate(candidates):
            try:
                BoosterConfig(**candidate)
            except ValidationError as error:
                raise ValueError(f"candidate {i}: {_format(error)}") from None
        return candidates


class RiskBandConfig(_Frozen):
    """Lower probability bounds of the medium, high and critical bands."""

    medium: float = 0.2
    high: float = 0.4
    critical: float = 0.6

    @model_validator(mode="after")
    def _ascending(self) -> RiskBandConfig:
        self.cutoffs()  # raises ValueError when not 0 < medium < high < critical < 1
        return self

    def cutoffs(self) -> RiskCutoffs:
        return RiskCutoffs(self.medium, self.high, self.critical)


class PromotionConfig(_Frozen):
    """What `churnsense promote churn` compares, on the challenger's validation data."""

    primary_metric: Literal["roc_auc", "pr_auc", "lift_at_10", "recall_at_10"] = "roc_auc"
    calibration_metric: Literal["brier", "log_loss"] | None = "brier"
    calibration_tolerance: float = Field(0.005, ge=0)


class ChurnConfig(_Frozen):
    """Everything the churn trainer can be told. `ChurnConfig()` is the default."""

    seed: int = 42
    min_positives: int = Field(MIN_POSITIVES, ge=1, description="refuse to train on fewer churned examples")
    booster: BoosterConfig = BoosterConfig()
    baseline: BaselineConfig = BaselineConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    split: SplitConfig = SplitConfig()
    search: SearchConfig = SearchConfig()
    risk_bands: RiskBandConfig = RiskBandConfig()
    promotion: PromotionConfig = PromotionConfig()
    registered_model_name: str = Field("churnsense-churn", min_length=1)
    experiment_name: str = Field("churnsense-churn", min_length=1)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_config(raw: dict[str, Any] | None, source: str = "config") -> ChurnConfig:
    """A `ChurnConfig` from a parsed mapping; `ConfigError` naming every bad key."""
    if raw is None:
        return ChurnConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return ChurnConfig(**raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_format(error)}") from None


def load_config(path: str | Path | None) -> ChurnConfig:
    """Read a churn config YAML file; None gives the default config."""
    if path is None:
        return ChurnConfig()
    raw = read_yaml_file(path, ConfigError, "config file")
    return parse_config(raw, source=str(Path(path).expanduser()))
