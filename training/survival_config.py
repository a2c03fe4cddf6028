"""Configuration of the time-to-churn trainer (`churnsense train survival`): the `survival` section of the churn
config, since both models learn from the same snapshots and features."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SurvivalKind = Literal["cox", "gbsa", "rsf", "cox+gbsa", "cox+rsf", "gbsa+rsf", "cox+gbsa+rsf"]


class SurvivalConfig(BaseModel):
    """Candidates and their settings; the trainer keeps the one with the best validation concordance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: tuple[SurvivalKind, ...] = Field(
        ("cox", "gbsa", "rsf", "cox+gbsa", "cox+rsf"),
        min_length=1,
        description="cox: ridge Cox proportional hazards; gbsa: gradient-boosted Cox trees; rsf: random "
        "survival forest (scikit-survival); a+b: their curves averaged (models.survival_ensemble)",
    )
    cox_alpha: float = Field(
        1.0, ge=0, description="ridge penalty of the Cox model (on standardised features)"
    )
    gbsa_trees: int = Field(100, ge=1, le=5000)
    gbsa_depth: int = Field(3, ge=1, le=16)
    gbsa_learning_rate: float = Field(0.2, gt=0, le=1)
    gbsa_subsample: float = Field(0.8, gt=0, le=1)
    rsf_trees: int = Field(50, ge=1, le=2000)
    rsf_min_leaf: int = Field(20, ge=1, description="rows per leaf, at least (each leaf stores a curve)")
    rsf_max_samples: float = Field(1.0, gt=0, le=1, description="share of rows each tree is grown on")
    threads: int = Field(2, ge=1, le=256)
    exclude_columns: tuple[str, ...] = Field(
        (), description="profile columns the survival model must not read (e.g. totals that grow with tenure)"
    )
    ibs_tolerance: float = Field(0.002, ge=0, description="promotion: how much worse the IBS may get")
    registered_model_name: str = Field("churnsense-survival", min_length=1)
    experiment_name: str = Field("churnsense-survival", min_length=1)
