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
from training.survival_config import SurvivalConfig


class ConfigError(UserError):
    """The churn config file is missing, not YAML, or has an unknown key or a bad value (named)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BoosterConfig(_Frozen):
    """LightGBM hyper-parameters: the trained model's when search is off, the search's second candidate (after
    LightGBM's own defaults) when it is on. Cross-validation with early stopping picks the number of trees."""

    learning_rate: float = Field(0.05, gt=0, le=1)
    max_rounds: int = Field(
        2000, ge=1, le=20_000, description="upper bound on trees; early stopping in CV picks the number"
    )
    early_stopping_rounds: int = Field(50, ge=1, description="rounds without a better CV log loss")
    num_leaves: int = Field(4, ge=2, le=1024, description="small: near-additive trees suit noisy churn data")
    max_depth: int = Field(-1, ge=-1, le=32, description="-1: no limit (num_leaves bounds the trees)")
    min_child_samples: int = Field(50, ge=1, description="rows per leaf, at least")
    reg_lambda: float = Field(1.0, ge=0, description="L2 penalty on leaf values")
    reg_alpha: float = Field(0.0, ge=0, description="L1 penalty on leaf values")
    colsample_bytree: float = Field(0.8, gt=0, le=1, description="share of features each tree may use")
    subsample: float = Field(1.0, gt=0, le=1, description="share of rows each tree is fitted on (bagging)")
    min_split_gain: float = Field(0.0, ge=0)
    cat_smooth: float = Field(10.0, ge=0, description="smoothing of categorical splits")
    max_bin: int = Field(255, ge=2, le=1023)
    max_categories: int = Field(
        64, ge=2, le=254, description="categories kept per categorical column; rarer ones share one code"
    )
    threads: int = Field(
        2, ge=1, le=256, description="training threads; a seed and a thread count give the same model"
    )

    def lightgbm_params(self, seed: int) -> dict[str, Any]:
        """The LightGBM parameter dict (native names) for training with this config."""
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "reg_lambda": self.reg_lambda,
            "reg_alpha": self.reg_alpha,
            "colsample_bytree": self.colsample_bytree,
            "subsample": self.subsample,
            "subsample_freq": 1 if self.subsample < 1 else 0,
            "min_split_gain": self.min_split_gain,
            "cat_smooth": self.cat_smooth,
            "max_bin": self.max_bin,
            "random_state": seed,
            "n_jobs": self.threads,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }


# LightGBM's own defaults for the keys the search varies: the search always tries them first.
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_child_samples": 20,
    "reg_lambda": 0.0,
    "colsample_bytree": 1.0,
    "subsample": 1.0,
}


class BlendConfig(_Frozen):
    """The churn model blends a logistic regression's log-odds with the trees' (`models.blend`):
    w * linear + (1 - w) * trees. Grouped CV picks w among `linear_weights`: the most linear one whose
    out-of-fold ROC AUC is within one paired standard error of the best (`training.churn_fit.
    choose_linear_weight`). 0 is the trees alone, 1 the logistic regression alone (C, max_iter from `baseline`)."""

    linear_weights: tuple[float, ...] = Field((0.0, 0.25, 0.5, 0.75, 1.0), min_length=1)

    @field_validator("linear_weights")
    @classmethod
    def _in_unit_interval(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"every weight must be in [0, 1], got {list(weights)}")
        return weights


class BaselineConfig(_Frozen):
    """The logistic-regression baseline trained in the same run (impute + scale + one-hot inside)."""

    C: float = Field(1.0, gt=0)
    max_iter: int = Field(2000, ge=10)
    min_category_frequency: int = Field(5, ge=1, description="rarer categories are grouped as infrequent")


class CalibrationConfig(_Frozen):
    """How the trees' probabilities become calibrated ones.

    `auto` calibrates out-of-fold scores both ways and takes isotonic only when its cross-validated log loss
    beats sigmoid's by `isotonic_margin` (centred isotonic: `training.churn_calibration.centred`).
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
    """Hyper-parameter search within a wall-time budget, on by default.

    Candidates are tried in a fixed order: `booster` as configured, LightGBM's defaults, each of `candidates`,
    then draws from a fixed space (learning rate 0.02-0.2, 2-64 leaves, 5-200 rows per leaf, L2 0.001-30,
    40-100% of features, 50-100% of rows) by a generator seeded with `seed`. Each is scored by grouped
    cross-validated ROC AUC on the training rows (never the validation set). The configured booster stays
    unless the best candidate beats it by more than one standard error, and then again on `confirm_folds` folds
    of another seed (`training.churn_fit._confirm`; the blend weight and calibration are chosen on those
    scores: with 5 folds the trees learn from 80% of the rows, as against 67% with 3, and a 3-fold estimate
    undervalued the trees against the logistic regression where they gain with more rows). The search
    leaves time for those two cross-validations and stops at `max_trials`,
    before a trial that would end after `budget_s` if it took as long as the longest so far, or when the
    deadline cuts a trial short (it keeps the trees it has): the budget is a hard limit. The run logs every
    trial, and the same seed, thread count and number of trials give the same model.
    """

    enabled: bool = True
    budget_s: float = Field(60.0, gt=0, description="wall-time budget of the whole search, seconds")
    max_trials: int = Field(40, ge=1, description="at most this many candidates")
    folds: int = Field(3, ge=2, le=10, description="grouped by customer")
    confirm_folds: int = Field(
        5, ge=2, le=10, description="folds of the confirmation, whose scores choose the blend and calibration"
    )
    candidates: tuple[dict[str, Any], ...] = ()

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
    blend: BlendConfig = BlendConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    split: SplitConfig = SplitConfig()
    search: SearchConfig = SearchConfig()
    risk_bands: RiskBandConfig = RiskBandConfig()
    promotion: PromotionConfig = PromotionConfig()
    survival: SurvivalConfig = SurvivalConfig()
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
