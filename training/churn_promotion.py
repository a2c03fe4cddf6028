"""Champion / challenger for the churn model: which rows the two are judged on, and the promotion itself.

Registered churn models are refitted on every labelled row, so neither may be judged on rows it was fitted on:
`comparison_rows` picks rows and predictions that never saw them (see there); `promote_churn` hands the
metrics to the shared rule in `training.registry`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from features.columns import AS_OF, CHURNED, CUSTOMER_ID
from models.churn import ChurnModel
from training.churn import FITTED_ROWS_ARTIFACT, VALIDATION_ARTIFACT, classification_metrics
from training.churn_config import ChurnConfig, load_config

logger = logging.getLogger(__name__)


def load_validation_frame(run_id: str) -> pd.DataFrame:
    """The validation frame a churn run logged: features, `churned`, and `churn_risk`, the held-out model's
    prediction (a model that never saw those rows)."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_ARTIFACT)
    return pd.read_parquet(local)


def _row_keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays(
        [frame[CUSTOMER_ID].astype(str).to_numpy(), pd.to_datetime(frame[AS_OF]).to_numpy()]
    )


def _fitted_rows(run_id: str) -> pd.MultiIndex | None:
    """The (customer, as_of) rows a run's registered model was fitted on; None for runs that did not log them."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=FITTED_ROWS_ARTIFACT)
    except (MlflowException, OSError):
        return None
    return _row_keys(pd.read_parquet(local))


@dataclass
class Comparison:
    """The rows a challenger and its champion are judged on, and each one's predictions for them."""

    y: np.ndarray
    challenger: np.ndarray
    champion: np.ndarray
    how: str


def comparison_rows(challenger_run: str, champion_run: str, champion_uri: str) -> Comparison:
    """Rows neither registered model was fitted on, with predictions that never saw them.

    Both registered models were refitted on all their rows, so scoring them on their own validation rows
    would grade them on training data. The challenger is judged by its run's held-out predictions. The
    champion by its own run's held-out predictions when its validation frame holds every one of those rows (a
    retrain on the same data); else by scoring it on the challenger's validation rows it was not fitted on
    (the challenger then on those same rows). Raises `UserError` when too few such rows are left.
    """
    frame = load_validation_frame(challenger_run)
    keys = _row_keys(frame)
    y = frame[CHURNED].to_numpy(dtype=np.int64)
    own = load_validation_frame(champion_run)
    if "churn_risk" in own.columns:
        champion_risk = pd.Series(own["churn_risk"].to_numpy(), index=_row_keys(own))
        if keys.isin(champion_risk.index).all() and champion_risk.index.is_unique:
            return Comparison(
                y,
                frame["churn_risk"].to_numpy(),
                champion_risk.loc[keys].to_numpy(),
                "both models' held-out predictions on the challenger's validation rows",
            )
    fitted = _fitted_rows(champion_run)
    unseen = np.ones(len(frame), dtype=bool) if fitted is None else ~keys.isin(fitted)
    if len(np.unique(y[unseen])) < 2:
        raise UserError(
            f"cannot compare with the champion: it was fitted on {int((~unseen).sum()):,} of the challenger's "
            f"{len(frame):,} validation rows, and the {int(unseen.sum()):,} left do not hold both churned and "
            "retained customers; compare the two runs in MLflow and promote with --force if the challenger is better"
        )
    rows = frame.loc[unseen]
    return Comparison(
        y[unseen],
        rows["churn_risk"].to_numpy(),
        ChurnModel.load(champion_uri).predict_proba(rows),
        f"{int(unseen.sum()):,} of the challenger's {len(frame):,} validation rows the champion was not fitted on",
    )


def validation_evaluator(name: str) -> Any:
    """evaluate(model_uri, challenger_version) -> metrics on the rows `comparison_rows` picks."""
    cache: dict[str, Comparison] = {}

    def comparison(challenger_version: Any) -> Comparison:
        from training.registry import champion_version

        if challenger_version.run_id not in cache:
            champion = champion_version(name)
            assert champion is not None, "promote_newest evaluates only when there is a champion"
            cache[challenger_version.run_id] = found = comparison_rows(
                challenger_version.run_id, champion.run_id, f"models:/{name}/{champion.version}"
            )
            logger.info("promotion compares on %s", found.how)
        return cache[challenger_version.run_id]

    def evaluate(model_uri: str, challenger_version: Any) -> dict[str, float]:
        found = comparison(challenger_version)
        version = model_uri.rstrip("/").rsplit("/", 1)[-1]
        if version == str(challenger_version.version):
            return classification_metrics(found.y, found.challenger)
        return classification_metrics(found.y, found.champion)  # `model_uri` is the champion's

    return evaluate


def promote_churn(force: bool = False, config: ChurnConfig | str | Path | None = None) -> Any:
    """Champion / challenger for the churn model; returns the `PromotionDecision` (caller picks the exit code)."""
    from training.registry import promote_newest
    from training.tracking import configure_mlflow

    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    configure_mlflow(config.experiment_name)
    name = config.registered_model_name
    unusable = _unusable_champion(name)
    if unusable is not None:
        return unusable
    return promote_newest(name, validation_evaluator(name), promote_policy(config), force=force)


def _unusable_champion(name: str) -> Any:
    """A decision to replace a champion this code cannot load (another feature version, trees from before
    LightGBM): the batch job and the service would refuse it anyway. None when the champion loads."""
    from models.churn import ModelContractError
    from training.registry import PromotionDecision, champion_version, newest_version, record_decision

    champion, challenger = champion_version(name), newest_version(name)
    if champion is None or champion.version == challenger.version:
        return None
    try:
        ChurnModel.load(f"models:/{name}/{champion.version}")
    except ModelContractError as error:
        decision = PromotionDecision(
            name,
            challenger.version,
            champion.version,
            True,
            f"the champion v{champion.version} cannot be used by this code, so the challenger replaces it "
            f"without a comparison: {error}",
        )
        record_decision(decision)
        return decision
    return None


def promote_policy(config: ChurnConfig) -> Any:
    """The churn `PromotionPolicy` a config asks for (primary metric, calibration metric and tolerance)."""
    from training.registry import PromotionPolicy

    return PromotionPolicy(
        primary_metric=config.promotion.primary_metric,
        greater_is_better=True,
        calibration_metric=config.promotion.calibration_metric,
        calibration_tolerance=config.promotion.calibration_tolerance,
    )
