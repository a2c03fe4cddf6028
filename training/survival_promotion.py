"""Champion / challenger for the survival model: `churnsense promote survival`.

Both versions are judged on the challenger's own validation rows (logged by its run, with the training rows'
outcomes for the Brier score's censoring weights): the challenger must have the higher concordance and an
integrated Brier score no worse than the champion's plus `survival.ibs_tolerance` (`training.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from models.survival import SurvivalModel
from training.churn_config import ChurnConfig, load_config
from training.survival import VALIDATION_FOLDER, evaluation_days, judge, outcome


def logged_validation(run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(validation rows, training outcomes) a survival run logged."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_FOLDER))
    return pd.read_parquet(local / "validation.parquet"), pd.read_parquet(local / "train_outcome.parquet")


def promote_survival(force: bool = False, config: ChurnConfig | str | Path | None = None) -> Any:
    """Returns the `PromotionDecision` (the caller picks the exit code)."""
    from training.registry import PromotionPolicy, newest_version, promote_newest
    from training.tracking import configure_mlflow

    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    settings = config.survival
    configure_mlflow(settings.experiment_name)
    name = settings.registered_model_name
    valid, train = logged_validation(newest_version(name).run_id)
    train_y = outcome(train)
    days = evaluation_days(train_y, outcome(valid))

    def evaluate(uri: str, _challenger: Any) -> dict[str, float]:
        return judge(SurvivalModel.load(uri), train_y, valid, days)

    policy = PromotionPolicy(
        primary_metric="concordance",
        greater_is_better=True,
        calibration_metric="integrated_brier",
        calibration_tolerance=settings.ibs_tolerance,
    )
    return promote_newest(name, evaluate, policy, force=force)
