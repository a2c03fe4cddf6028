"""Champion / challenger for the survival model: `churnsense promote survival`.

Both versions are judged by their **held-out** models (each run logs the chosen candidate fitted on its training
rows only; the registered model has seen every row) on the challenger's validation rows, less any row the
champion's held-out model was fitted on (another run may have split other data otherwise). The challenger must
have the higher concordance and an integrated Brier score no worse than the champion's plus
`survival.ibs_tolerance` (`training.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from churnsense.errors import UserError
from features.columns import AS_OF, CUSTOMER_ID
from models.survival import SurvivalModel
from training.churn_config import ChurnConfig, load_config
from training.survival import HELDOUT_MODEL, VALIDATION_FOLDER, evaluation_days, judge, outcome


def logged(run_id: str, name: str) -> pd.DataFrame:
    """A table a survival run logged under `validation/`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{VALIDATION_FOLDER}/{name}"
        )
    except (MlflowException, OSError):
        raise UserError(
            f"run {run_id} has no {VALIDATION_FOLDER}/{name}: it was not logged by this churnsense's "
            "`train survival`; retrain it"
        ) from None
    return pd.read_parquet(local)


def _keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([frame[CUSTOMER_ID].astype(str), pd.to_datetime(frame[AS_OF])])


def promote_survival(force: bool = False, config: ChurnConfig | str | Path | None = None) -> Any:
    """Returns the `PromotionDecision` (the caller picks the exit code)."""
    from mlflow import MlflowClient

    from training.registry import PromotionPolicy, champion_version, newest_version, promote_newest
    from training.tracking import configure_mlflow

    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    settings = config.survival
    configure_mlflow(settings.experiment_name)
    name = settings.registered_model_name
    challenger = newest_version(name)
    valid = logged(challenger.run_id, "validation.parquet")
    train_y = outcome(logged(challenger.run_id, "train_outcome.parquet"))
    champion = champion_version(name)
    if champion is not None and champion.version != challenger.version:
        seen = _keys(logged(champion.run_id, "train_rows.parquet"))
        valid = valid[~_keys(valid).isin(seen)].reset_index(drop=True)
    days = evaluation_days(train_y, outcome(valid))  # refuses too few churns to judge on

    def evaluate(uri: str, _challenger: Any) -> dict[str, float]:
        version = MlflowClient().get_model_version(name, uri.rsplit("/", 1)[-1])
        return judge(SurvivalModel.load(f"runs:/{version.run_id}/{HELDOUT_MODEL}"), train_y, valid, days)

    policy = PromotionPolicy(
        primary_metric="concordance",
        greater_is_better=True,
        calibration_metric="integrated_brier",
        calibration_tolerance=settings.ibs_tolerance,
    )
    return promote_newest(name, evaluate, policy, force=force)
