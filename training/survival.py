"""Time-to-churn training: the churn trainer's snapshots and features -> right-censored durations -> survival
models chosen by validation concordance -> MLflow run -> registered `churnsense-survival` version.

    load_training_data -> label_training_data -> survival_frame (durations, events) -> split_train_validation
        -> fit every candidate on the training part -> concordance and integrated Brier score on validation
        -> the best concordance wins -> refit on every row -> log, plot, register

`churnsense train survival --spec FILE [--config FILE]` calls `train_survival`; the settings are the `survival`
section of the churn config (`training.survival_config`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnsense.errors import UserError
from features.columns import AS_OF, CHURNED, CUSTOMER_ID
from features.engine import FEATURE_VERSION, FeatureSchema
from features.pipeline import AspectLabeler, SentimentScorer
from features.spec import DatasetSpec, load_spec
from features.survival import DURATION, EVENT, censor_at, survival_columns, survival_frame
from models.survival import SurvivalModel, single_threaded, survival_design
from training.churn_config import ChurnConfig, load_config
from training.churn_data import label_training_data, load_training_data, split_train_validation
from training.churn_lineage import lineage_tags, text_aspect_lineage, text_sentiment_lineage
from training.survival_config import SurvivalConfig

logger = logging.getLogger(__name__)
VALIDATION_FOLDER = "validation"
HELDOUT_MODEL = (
    "heldout_model"  # the chosen candidate fitted on the training rows only (what promotion judges)
)


@dataclass
class SurvivalRunResult:
    run_id: str
    version: str
    model_uri: str
    chosen: str
    metrics: dict[str, float]
    candidates: dict[str, dict[str, float]]
    n_train: int
    n_valid: int

    def render(self) -> str:
        lines = [
            f"survival run {self.run_id}: registered {self.model_uri} ({self.chosen}); validation concordance "
            f"{self.metrics['concordance']:.4f}, integrated Brier {self.metrics['integrated_brier']:.4f} "
            f"(Kaplan-Meier {self.metrics['km_integrated_brier']:.4f}); {self.n_train:,} train / "
            f"{self.n_valid:,} validation rows"
        ]
        for name, scores in self.candidates.items():
            lines.append(
                f"  {name:5s} concordance {scores['concordance']:.4f}  integrated Brier "
                f"{scores['integrated_brier']:.4f}  fit {scores['fit_seconds']:.1f}s"
            )
        return "\n".join(lines)


def survival_schema(schema: FeatureSchema, exclude: tuple[str, ...]) -> FeatureSchema:
    """The churn schema less the profile columns a survival model must not read."""
    drop = set(exclude)
    return dataclasses.replace(
        schema,
        profile_numeric=tuple(c for c in schema.profile_numeric if c not in drop),
        profile_categorical=tuple(c for c in schema.profile_categorical if c not in drop),
    )


def make_estimator(kind: str, config: SurvivalConfig, seed: int) -> Any:
    from sksurv.ensemble import GradientBoostingSurvivalAnalysis, RandomSurvivalForest

    from models.survival_cox import InvariantCox

    if kind == "cox":
        return InvariantCox(alpha=config.cox_alpha)
    if kind == "gbsa":
        return GradientBoostingSurvivalAnalysis(
            n_estimators=config.gbsa_trees,
            max_depth=config.gbsa_depth,
            learning_rate=config.gbsa_learning_rate,
            subsample=config.gbsa_subsample,
            random_state=seed,
        )
    return RandomSurvivalForest(
        n_estimators=config.rsf_trees,
        min_samples_leaf=config.rsf_min_leaf,
        max_samples=None if config.rsf_max_samples >= 1 else config.rsf_max_samples,
        max_features="sqrt",
        n_jobs=config.threads,
        random_state=seed,
    )


def outcome(frame: pd.DataFrame) -> np.ndarray:
    """scikit-survival's structured (event, time) array."""
    from sksurv.util import Surv

    return Surv.from_arrays(frame[EVENT].to_numpy().astype(bool), frame[DURATION].to_numpy(dtype=np.float64))


def evaluation_days(train: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Days to integrate the Brier score over: deciles 1-8 of validation churn times, inside both follow-ups."""
    churned = valid["time"][valid["event"]]
    if churned.size < 2:
        raise UserError("validation: fewer than two churns with a time; a survival model cannot be judged")
    days = np.unique(np.quantile(churned, np.linspace(0.1, 0.8, 8)))
    upper = min(train["time"].max(), valid["time"].max())
    days = days[(days >= train["time"].min()) & (days < upper)]
    if days.size < 2:
        raise UserError("validation: churn times too few or too narrow to integrate a Brier score over")
    return days


def judge(
    model: SurvivalModel, train_y: np.ndarray, valid: pd.DataFrame, days: np.ndarray
) -> dict[str, float]:
    """Harrell's concordance of the model's risk, and its integrated Brier score over `days`."""
    from sksurv.metrics import concordance_index_censored, integrated_brier_score

    y = outcome(valid)
    concordance = concordance_index_censored(y["event"], y["time"], model.risk(valid))[0]
    brier = integrated_brier_score(train_y, y, model.curves(valid, days), days)
    return {"concordance": float(concordance), "integrated_brier": float(brier)}


def kaplan_meier_brier(train_y: np.ndarray, valid: pd.DataFrame, days: np.ndarray) -> float:
    """The integrated Brier score of one Kaplan-Meier curve for everyone: the floor a model must beat."""
    from sksurv.metrics import integrated_brier_score
    from sksurv.nonparametric import kaplan_meier_estimator

    times, survival = kaplan_meier_estimator(train_y["event"], train_y["time"])
    curve = survival[np.clip(np.searchsorted(times, days, side="right") - 1, 0, None)]
    return float(integrated_brier_score(train_y, outcome(valid), np.tile(curve, (len(valid), 1)), days))


def fit_survival(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    kind: str,
    config: ChurnConfig,
    fitted: dict[str, SurvivalModel] | None = None,
) -> SurvivalModel:
    """A `kind` ("cox", ..., or members joined by "+": their curves averaged) fitted on `frame`. Members found
    in `fitted` (models of single kinds already fitted on the same rows) are reused, not fitted again."""
    from sklearn.pipeline import Pipeline, make_pipeline

    from models.churn import prepare_features
    from models.survival_ensemble import AveragedSurvival

    fitted = dict(fitted or {})
    followup = float(frame[DURATION].max())
    if "+" in kind:
        members = [fitted.get(k) or fit_survival(frame, schema, k, config) for k in kind.split("+")]
        average = AveragedSurvival().use_fitted([m.pipeline[-1] for m in members])
        pipeline = Pipeline([*members[0].pipeline.steps[:-1], ("averagedsurvival", average)])
        return SurvivalModel(pipeline, schema, followup)
    pipeline = make_pipeline(survival_design(schema), make_estimator(kind, config.survival, config.seed))
    pipeline.fit(prepare_features(frame, schema), outcome(frame))
    single_threaded(pipeline[-1])
    return SurvivalModel(pipeline, schema, followup)


def choose_survival(
    train: pd.DataFrame, valid: pd.DataFrame, schema: FeatureSchema, config: ChurnConfig
) -> tuple[str, dict[str, dict[str, float]], SurvivalModel]:
    """Fit every candidate on `train`, judge it on `valid`; returns the best concordance's name, every
    candidate's scores and the winner (fitted on `train`)."""
    train_y = outcome(train)
    days = evaluation_days(train_y, outcome(valid))
    candidates: dict[str, dict[str, float]] = {}
    fitted: dict[str, SurvivalModel] = {}
    for kind in config.survival.candidates:
        started = time.perf_counter()
        fitted[kind] = fit_survival(train, schema, kind, config, fitted)
        seconds = time.perf_counter() - started
        candidates[kind] = judge(fitted[kind], train_y, valid, days) | {"fit_seconds": seconds}
        logger.info("survival %s: %s", kind, candidates[kind])
    chosen = max(candidates, key=lambda k: candidates[k]["concordance"])
    return chosen, candidates, fitted[chosen]


def train_survival(
    spec: DatasetSpec | str | Path,
    config: ChurnConfig | str | Path | None = None,
    sentiment_scorer: SentimentScorer | None = None,
    aspect_labeler: AspectLabeler | None = None,
) -> SurvivalRunResult:
    """Train the survival candidates on the churn trainer's snapshots, keep the best, log and register it."""
    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    settings = config.survival
    sentiment = text_sentiment_lineage(spec, sentiment_scorer)
    aspects = text_aspect_lineage(spec, sentiment, aspect_labeler)
    data = load_training_data(spec, sentiment_scorer, aspect_labeler)
    labelled, churn_schema = label_training_data(data, config.min_positives)
    schema = survival_schema(churn_schema, (*survival_columns(spec), *settings.exclude_columns))
    frame = survival_frame(data, labelled)
    split = split_train_validation(
        frame, spec.labels.horizon_days, config.split.validation_fraction, config.split.validation_snapshots,
        config.seed,
    )  # fmt: skip
    # No training outcome may reach into the period the candidates are judged on.
    split = dataclasses.replace(split, train=censor_at(split.train, split.valid[AS_OF].min()))
    chosen, candidates, heldout = choose_survival(split.train, split.valid, schema, config)
    train_y = outcome(split.train)
    days = evaluation_days(train_y, outcome(split.valid))
    metrics = dict(candidates[chosen])
    metrics["km_integrated_brier"] = kaplan_meier_brier(train_y, split.valid, days)
    metrics |= horizon_agreement(heldout, split.valid, spec.labels.horizon_days)
    if metrics["integrated_brier"] > metrics["km_integrated_brier"]:
        logger.warning(
            "survival: the chosen %s ranks best (concordance %.4f) but its curves are worse than one Kaplan-Meier "
            "curve for everyone (integrated Brier %.4f vs %.4f): check its calibration before relying on the days",
            chosen, metrics["concordance"], metrics["integrated_brier"], metrics["km_integrated_brier"],
        )  # fmt: skip
    final = fit_survival(frame, schema, chosen, config)
    if spec.customers is not None and spec.customers.duration and not spec.labels.as_of_dates():
        # Durations are tenures: answers are given the tenure a customer has already stayed.
        final.tenure = heldout.tenure = (spec.customers.duration, spec.customers.duration_unit)
    run_id, version, uri = log_survival_run(
        config, spec, schema, frame, split, heldout, final, chosen, candidates, metrics, sentiment, aspects
    )
    return SurvivalRunResult(
        run_id, version, uri, chosen, metrics, candidates, len(split.train), len(split.valid)
    )


def horizon_agreement(model: SurvivalModel, valid: pd.DataFrame, horizon: int) -> dict[str, float]:
    """How the curve's churn by the label horizon, 1 - S(horizon), compares with the labels: its mean against
    the churn rate (calibration in the large) and its ROC AUC for the horizon label."""
    from sklearn.metrics import roc_auc_score

    by_horizon = 1.0 - model.curves(valid, [horizon])[:, 0]
    labels = valid[CHURNED].to_numpy()
    out = {"horizon_churn_mean": float(by_horizon.mean()), "horizon_churn_rate": float(labels.mean())}
    if 0 < labels.sum() < len(labels):
        out["horizon_roc_auc"] = float(roc_auc_score(labels, by_horizon))
    return out


def log_survival_run(
    config: ChurnConfig,
    spec: DatasetSpec,
    schema: FeatureSchema,
    frame: pd.DataFrame,
    split: Any,
    heldout: SurvivalModel,
    final: SurvivalModel,
    chosen: str,
    candidates: dict[str, dict[str, float]],
    metrics: dict[str, float],
    sentiment: dict[str, Any] | None,
    aspects: dict[str, Any] | None,
) -> tuple[str, str, str]:
    import mlflow
    import mlflow.sklearn

    from training.churn import pip_requirements
    from training.plots import survival_by_band
    from training.tracking import code_version, configure_mlflow

    settings = config.survival
    configure_mlflow(settings.experiment_name)
    name = f"survival {Path(str(spec.source)).name if spec.source else 'spec'}"
    with tempfile.TemporaryDirectory(prefix="survival-run-") as tmp, mlflow.start_run(run_name=name) as run:
        mlflow.log_params(
            {"chosen": chosen, **{f"survival.{k}": str(v) for k, v in settings.model_dump().items()}}
        )
        mlflow.log_metrics(
            metrics
            | {f"{k.replace('+', '_and_')}_{m}": v for k, s in candidates.items() for m, v in s.items()}
        )
        mlflow.set_tags(
            {
                "code_version": code_version(),
                "feature_version": FEATURE_VERSION,
                "chosen": chosen,
                "split": split.description,
            }
            | lineage_tags(sentiment, aspects)
        )
        figure = survival_by_band(heldout, split.train, split.valid, Path(tmp) / "survival_by_band.png")
        mlflow.log_artifact(str(figure), "plots")
        # What `promote survival` judges two versions on: this run's validation rows (features, durations), the
        # training rows' outcomes (the Brier score's censoring weights) and keys, and the held-out model (fitted
        # on the training rows only: the registered one has seen the validation rows).
        split.valid.to_parquet(Path(tmp) / "validation.parquet", index=False)
        split.train[[DURATION, EVENT]].to_parquet(Path(tmp) / "train_outcome.parquet", index=False)
        split.train[[CUSTOMER_ID, AS_OF]].astype({CUSTOMER_ID: str}).to_parquet(
            Path(tmp) / "train_rows.parquet"
        )
        for file in ("validation.parquet", "train_outcome.parquet", "train_rows.parquet"):
            mlflow.log_artifact(str(Path(tmp) / file), VALIDATION_FOLDER)
        mlflow.sklearn.log_model(
            heldout.pipeline,
            name=HELDOUT_MODEL,
            serialization_format="cloudpickle",
            pip_requirements=[*pip_requirements(), f"scikit-survival=={_version('scikit-survival')}"],
            metadata=survival_metadata(schema, heldout, chosen, sentiment, aspects),
        )
        mlflow.log_dict(json.loads(schema.to_json()), "model_contract/feature_schema.json")
        info = mlflow.sklearn.log_model(
            final.pipeline,
            name="model",
            serialization_format="cloudpickle",
            pip_requirements=[*pip_requirements(), f"scikit-survival=={_version('scikit-survival')}"],
            metadata=survival_metadata(schema, final, chosen, sentiment, aspects),
            registered_model_name=settings.registered_model_name,
        )
        version = str(info.registered_model_version)
        return run.info.run_id, version, f"models:/{settings.registered_model_name}/{version}"


def survival_metadata(
    schema: FeatureSchema,
    model: SurvivalModel,
    kind: str,
    sentiment: dict[str, Any] | None,
    aspects: dict[str, Any] | None,
) -> dict[str, Any]:
    """What `SurvivalModel.load` needs (schema, report days, follow-up) and the text models behind it."""
    return {
        "feature_version": FEATURE_VERSION,
        "feature_schema": schema.to_json(),
        "feature_columns": schema.feature_names(),
        "tenure": json.dumps(list(model.tenure)) if model.tenure else "",
        "followup_days": str(model.followup_days),
        "sentiment_model": sentiment,
        "aspect_model": aspects,
        "kind": kind,
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
