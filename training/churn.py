"""Churn training: spec -> labelled snapshots -> leak-free split -> calibrated boosted trees (+ logistic
baseline) -> validation metrics and plots -> MLflow run -> registered `churnsense-churn` version.

    load_training_data -> label_training_data -> split_train_validation
        -> choose_churn_model (search, on the training part) -> fit_calibrated (training part), fit_baseline
        -> evaluate_models (validation part) -> fit_calibrated (all labelled rows) -> log_churn_run (register)

The registered model is the last fit, on every labelled row; the metrics, plots and the logged validation frame
are the held-out model's (fitted on the training part with the same choices), so they describe rows no choice
was made on.

`train_churn(spec, config)` runs the chain and returns a `ChurnRunResult`; `churnsense train churn` and the
demo call it. `promote_churn(force)` re-scores the newest version and the champion on the newest run's logged
validation frame (`validation/validation.parquet`) and moves the `champion` alias when the newest one wins.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.pipeline import Pipeline

from churnsense.files import atomic_write_text
from features.columns import AS_OF, CHURNED, CUSTOMER_ID, TIMESTAMP
from features.engine import FEATURE_VERSION, FeatureSchema
from features.pipeline import AspectLabeler, SentimentScorer, SpecData
from features.spec import DatasetSpec, load_spec
from models.churn import ChurnModel, RiskCutoffs, prepare_features, risk_band
from training import plots
from training.churn_calibration import clipped_log_loss
from training.churn_config import ChurnConfig, load_config
from training.churn_data import (
    TrainValidationSplit,
    label_training_data,
    load_training_data,
    split_train_validation,
)
from training.churn_fit import (
    ChurnChoice,
    auc_standard_error,
    choose_churn_model,
    fit_baseline,
    fit_calibrated,
)
from training.churn_lineage import lineage_tags, text_aspect_lineage, text_sentiment_lineage

logger = logging.getLogger(__name__)


VALIDATION_ARTIFACT = "validation/validation.parquet"
FITTED_ROWS_ARTIFACT = (
    "data/fitted_rows.parquet"  # (customer_id, as_of) of every row the registered model saw
)
TOP_SHARE = 0.10  # "top 10% riskiest" for lift and recall
IMPORTANCE_ROWS = 20_000  # validation rows explained for the importance plot
METRIC_NAMES = ("roc_auc", "pr_auc", "brier", "log_loss", "lift_at_10", "recall_at_10")


# --- evaluate ----------------------------------------------------------------------------------------------


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier, log loss, and lift / recall in the top 10% riskiest (ties broken by row order)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    top = np.argsort(-p, kind="stable")[: max(1, math.ceil(TOP_SHARE * len(y)))]
    rate = float(y.mean())
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": clipped_log_loss(y, p),
        "lift_at_10": float(y[top].mean() / rate) if rate > 0 else float("nan"),
        "recall_at_10": float(y[top].sum() / max(1, y.sum())),
    }


@dataclass
class Evaluation:
    """Validation metrics of both models, the scored validation frame and the plot files."""

    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    valid_frame: pd.DataFrame
    plots: list[Path]
    importance: dict[str, float]


def evaluate_models(model: ChurnModel, baseline: Pipeline, valid: pd.DataFrame, plot_dir: Path) -> Evaluation:
    """Score the validation rows with both models; metrics, plots, mean |contribution| per feature."""
    y = valid[CHURNED].to_numpy(dtype=np.int64)
    proba = model.predict_proba(valid)
    baseline_proba = baseline.predict_proba(prepare_features(valid, model.schema))[:, 1]
    metrics = classification_metrics(y, proba)
    baseline_metrics = classification_metrics(y, baseline_proba)
    sample = valid if len(valid) <= IMPORTANCE_ROWS else valid.sample(IMPORTANCE_ROWS, random_state=0)
    contributions = model.contributions(sample)
    importance = contributions.abs().mean().sort_values(ascending=False)
    scores = {"boosted trees (calibrated)": proba, "logistic baseline": baseline_proba}
    files = [
        plots.roc_plot(y, scores, plot_dir / "roc.png"),
        plots.precision_recall_plot(y, scores, plot_dir / "precision_recall.png"),
        plots.calibration_plot(y, scores, plot_dir / "calibration.png"),
        plots.gains_plot(y, scores, plot_dir / "lift_gains.png"),
        plots.importance_plot(
            list(importance.index), importance.to_numpy(), plot_dir / "feature_importance.png"
        ),
    ]
    frame = valid.copy()
    frame["churn_risk"] = proba
    frame["baseline_risk"] = baseline_proba
    frame["risk_band"] = risk_band(proba, model.cutoffs)
    return Evaluation(metrics, baseline_metrics, frame, files, {k: float(v) for k, v in importance.items()})


# --- log and register --------------------------------------------------------------------------------------


def pip_requirements() -> list[str]:
    """Exact versions of what loading the model needs (no inference of the environment)."""
    import lightgbm
    import mlflow
    import scipy
    import sklearn
    import skops

    return [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"lightgbm=={lightgbm.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"scipy=={scipy.__version__}",
        f"skops=={skops.__version__}",
    ]


def skops_trusted_types(estimator: Any) -> list[str]:
    """The non-default types skops must be told to trust to load `estimator` (all from scikit-learn, numpy,
    scipy, LightGBM, the standard library's `collections`, or churnsense's own `models.blend`)."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(estimator))
    # functools.partial: HistGradientBoosting's own input check (a partial of sklearn's check_array).
    foreign = [
        t
        for t in untrusted
        if not t.startswith(("sklearn.", "numpy.", "scipy.", "builtins.", "lightgbm.", "models.blend."))
        and t not in ("functools.partial", "collections.OrderedDict")
    ]
    if foreign:
        raise RuntimeError(f"refusing to trust non-library types in the churn model: {foreign}")
    return sorted(untrusted)


def model_metadata(
    schema: FeatureSchema,
    cutoffs: RiskCutoffs,
    choice: ChurnChoice,
    pipeline: Pipeline,
    sentiment: dict[str, Any] | None = None,
    aspects: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `ChurnModel.load` checks and needs: feature version, schema JSON, column order, cut-offs, and the
    sentiment model that scored the event texts (`models.lineage.SentimentLineage`) and the aspect model that
    labelled them (`AspectLineage`), if any."""
    return {
        "sentiment_model": sentiment,
        "aspect_model": aspects,
        "feature_version": FEATURE_VERSION,
        "feature_schema": schema.to_json(),
        "feature_columns": schema.feature_names(),
        "risk_cutoffs": asdict(cutoffs),
        "calibration": choice.calibration,
        "unused_columns": [
            c for c in schema.feature_names() if c not in set(pipeline[0].get_feature_names_out())
        ],
        "label": CHURNED,
        "positive_class": 1,
    }


def _flat_params(config: ChurnConfig) -> dict[str, str]:
    def flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
        elif isinstance(value, list | tuple):
            out[prefix] = json.dumps(value)
        else:
            out[prefix] = str(value)

    out: dict[str, str] = {}
    flatten("", config.model_dump(mode="json"), out)
    return out


def _spec_yaml(spec: DatasetSpec) -> str:
    import yaml

    raw = spec.model_dump(mode="json", exclude={"base_dir", "source"}, exclude_none=True)
    header = f"# from {spec.source}; paths relative to {spec.base_dir}\n" if spec.source else ""
    return header + yaml.safe_dump(raw, sort_keys=False)


@dataclass
class ChurnRunResult:
    """What a training run produced: ids to find it in MLflow, and its numbers."""

    run_id: str
    experiment_id: str
    registered_name: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    calibration: str
    split: str
    n_train: int
    n_valid: int
    timings: dict[str, float]
    feature_version: str = FEATURE_VERSION
    validation_predictions: np.ndarray | None = field(default=None, repr=False)
    warning: str | None = None  # `no_signal_warning` of the validation ROC AUC, when it applies

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (what `--summary` writes)."""
        out = asdict(self)
        out.pop("validation_predictions")
        return out

    def render(self) -> str:
        m, b = self.metrics, self.baseline_metrics
        lines = [
            f"{self.registered_name} v{self.version} (run {self.run_id}), {self.calibration} calibration",
            f"  split: {self.split}",
            f"  {'metric':<14}{'model':>10}{'baseline':>10}",
        ]
        lines += [f"  {name:<14}{m[name]:10.4f}{b[name]:10.4f}" for name in METRIC_NAMES]
        lines.append("  timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        if self.warning:
            lines.append(f"  warning: {self.warning}")
        return "\n".join(lines)


def no_signal_warning(roc_auc: float, y: np.ndarray) -> str | None:
    """A warning when the validation ROC AUC is not clearly above chance: its 95% interval (Hanley & McNeil)
    reaches 0.5. Such a model ranks customers no better than a coin that we could tell apart on these rows;
    its risks are close to the base rate, and its reasons are noise."""
    positives = int(np.sum(y))
    error = auc_standard_error(roc_auc, positives, int(len(y)) - positives)
    low = roc_auc - 1.96 * error
    if low > 0.5:
        return None
    return (
        f"validation ROC AUC {roc_auc:.4f} (95% interval {low:.3f}-{roc_auc + 1.96 * error:.3f}) is not clearly "
        "above chance: these features show no detectable churn signal on these rows"
    )


def log_churn_run(
    *,
    config: ChurnConfig,
    spec: DatasetSpec,
    data: SpecData,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    split: TrainValidationSplit,
    choice: ChurnChoice,
    final: Pipeline,
    baseline: Pipeline,
    evaluation: Evaluation,
    workdir: Path,
    sentiment: dict[str, Any] | None = None,
    aspects: dict[str, Any] | None = None,
) -> tuple[str, str, str]:
    """Log params, metrics, plots, config, spec, fingerprints, the validation frame, the rows `final` was
    fitted on and both models to the active run; register `final`. Returns (run id, version, model URI)."""
    import mlflow
    from mlflow.models import infer_signature

    from training.reference import REFERENCE_ARTIFACT, reference_profile
    from training.tracking import code_version, data_fingerprint

    run = mlflow.active_run()
    assert run is not None
    mlflow.log_params(_flat_params(config))
    # The trained trees' parameters (the search may have overridden the config's `booster.*`).
    mlflow.log_params(choice.logged_params())
    metrics = dict(evaluation.metrics)
    metrics |= {f"baseline_{k}": v for k, v in evaluation.baseline_metrics.items()}
    metrics |= {f"calibration_cv_log_loss_{k}": v for k, v in choice.calibration_losses.items()}
    metrics |= {f"fresh_folds_cv_roc_auc_{k}": v for k, v in choice.confirmed.items()}
    metrics |= {
        "n_train": len(split.train),
        "n_valid": len(split.valid),
        "n_fitted_final": len(frame),
        "train_churn_rate": float(split.train[CHURNED].mean()),
        "valid_churn_rate": float(split.valid[CHURNED].mean()),
        "n_trees": float(choice.rounds),
        "cv_roc_auc": choice.cv_roc_auc,
        "search_trials": float(len(choice.trials)),
        "search_seconds": choice.search_seconds,
    }
    mlflow.log_metrics(metrics)
    fingerprints = {
        "training_frame": data_fingerprint(frame, AS_OF),
        "train": data_fingerprint(split.train, AS_OF),
        "validation": data_fingerprint(split.valid, AS_OF),
    }
    if data.customers is not None:
        fingerprints["customers"] = data_fingerprint(data.customers)
    if data.events is not None:
        fingerprints["events"] = data_fingerprint(data.events, TIMESTAMP)
    fingerprints["rejected_rows"] = int(len(data.rejects))
    mlflow.set_tags(
        {
            "code_version": code_version(),
            "feature_version": FEATURE_VERSION,
            "calibration": choice.calibration,
            "chosen_by": choice.rule[:250],
            "split": split.description,
            "spec": str(spec.source or ""),
            "data_sha256": str(fingerprints["training_frame"]["sha256"]),
        }
        | lineage_tags(sentiment, aspects)
    )
    mlflow.log_text(config.to_yaml(), "config/churn.yaml")
    mlflow.log_text(_spec_yaml(spec), "spec/spec.yaml")
    mlflow.log_dict(fingerprints, "data/fingerprints.json")
    mlflow.log_dict(
        {"schema": json.loads(schema.to_json()), "columns": schema.feature_names()},
        "model_contract/feature_schema.json",
    )
    mlflow.log_dict(
        {
            "importance": evaluation.importance,
            "search": choice.trials,
            "fresh_folds_cv_roc_auc": choice.confirmed,
            "chosen_by": choice.rule,
            "calibration_cv_log_loss": choice.calibration_losses,
        },
        "evaluation/details.json",
    )
    for file in evaluation.plots:
        mlflow.log_artifact(str(file), "plots")
    valid_path = workdir / Path(VALIDATION_ARTIFACT).name
    evaluation.valid_frame.to_parquet(valid_path, index=False)
    mlflow.log_artifact(str(valid_path), str(Path(VALIDATION_ARTIFACT).parent))
    # What `churnsense monitor` compares later populations with (training.reference).
    reference = reference_profile(split.valid, schema, final, config.risk_bands.cutoffs(), data.events)
    mlflow.log_dict(reference, REFERENCE_ARTIFACT)
    fitted_path = workdir / Path(FITTED_ROWS_ARTIFACT).name
    frame[[CUSTOMER_ID, AS_OF]].astype({CUSTOMER_ID: str}).to_parquet(fitted_path, index=False)
    mlflow.log_artifact(str(fitted_path), str(Path(FITTED_ROWS_ARTIFACT).parent))

    example = prepare_features(split.valid.head(5), schema)
    signature = infer_signature(example, final.predict_proba(example))
    info = mlflow.sklearn.log_model(
        final,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        pyfunc_predict_fn="predict_proba",
        metadata=model_metadata(schema, config.risk_bands.cutoffs(), choice, final, sentiment, aspects),
        skops_trusted_types=skops_trusted_types(final),
        registered_model_name=config.registered_model_name,
    )
    mlflow.sklearn.log_model(
        baseline,
        name="baseline_model",
        signature=infer_signature(example, baseline.predict_proba(example)),
        pip_requirements=pip_requirements(),
        pyfunc_predict_fn="predict_proba",
        metadata={"feature_version": FEATURE_VERSION, "feature_columns": schema.feature_names()},
        skops_trusted_types=skops_trusted_types(baseline),
    )
    version = str(info.registered_model_version)
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in {
        "feature_version": FEATURE_VERSION,
        "calibration": choice.calibration,
        "validation_roc_auc": f"{evaluation.metrics['roc_auc']:.4f}",
        "code_version": code_version(),
    }.items() | lineage_tags(sentiment, aspects).items():
        client.set_model_version_tag(config.registered_model_name, version, key, value)
    return run.info.run_id, version, f"models:/{config.registered_model_name}/{version}"


# --- the whole chain ---------------------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - started, 3)


def train_churn(
    spec: DatasetSpec | str | Path,
    config: ChurnConfig | str | Path | None = None,
    sentiment_scorer: SentimentScorer | None = None,
    run_name: str | None = None,
    aspect_labeler: AspectLabeler | None = None,
) -> ChurnRunResult:
    """Train, evaluate, log and register a churn model from a dataset spec.

    Args:
        spec: a `DatasetSpec` or the path of a spec YAML file.
        config: a `ChurnConfig`, the path of a config YAML file, or None for the defaults.
        sentiment_scorer: scores event texts in [-1, 1] (adds sentiment features) when the spec has text.
        run_name: MLflow run name (default: "churn <spec file name>").
        aspect_labeler: says what each scored text is about (`models.aspect_scoring.CachedAspectLabeler`):
            adds negative texts per aspect to the features; the model records which aspect model it was.
    Raises:
        UserError: bad spec or config, data that does not validate, labels that cannot train a model.
    """
    import mlflow

    from training.tracking import configure_mlflow

    timings: dict[str, float] = {}
    started = time.perf_counter()
    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    if not isinstance(config, ChurnConfig):
        config = load_config(config)
    sentiment = text_sentiment_lineage(spec, sentiment_scorer)
    aspects = text_aspect_lineage(spec, sentiment, aspect_labeler)
    with _timed(timings, "load"):
        data = load_training_data(spec, sentiment_scorer, aspect_labeler)
    with _timed(timings, "label_and_features"):
        frame, schema = label_training_data(data, config.min_positives)
    with _timed(timings, "split"):
        split = split_train_validation(
            frame,
            spec.labels.horizon_days,
            config.split.validation_fraction,
            config.split.validation_snapshots,
            config.seed,
        )
    logger.info("split %s", split.description)
    with _timed(timings, "search"):
        choice = choose_churn_model(split.train, schema, config)
    with _timed(timings, "fit_heldout"):
        heldout = fit_calibrated(split.train, schema, choice, config)
    with _timed(timings, "fit_baseline"):
        baseline = fit_baseline(split.train, schema, config)
    model = ChurnModel(heldout, schema, config.risk_bands.cutoffs(), version="held-out")
    experiment_id = configure_mlflow(config.experiment_name)
    name = run_name or f"churn {Path(str(spec.source)).name if spec.source else 'spec'}"
    with tempfile.TemporaryDirectory(prefix="churn-run-") as tmp, mlflow.start_run(run_name=name):
        workdir = Path(tmp)
        with _timed(timings, "evaluate"):
            evaluation = evaluate_models(model, baseline, split.valid, workdir / "plots")
        with _timed(timings, "fit_final"):
            final = fit_calibrated(frame, schema, choice, config)
        with _timed(timings, "log_and_register"):
            run_id, version, model_uri = log_churn_run(
                config=config,
                spec=spec,
                data=data,
                frame=frame,
                schema=schema,
                split=split,
                choice=choice,
                final=final,
                baseline=baseline,
                evaluation=evaluation,
                workdir=workdir,
                sentiment=sentiment,
                aspects=aspects,
            )
        timings["total"] = round(time.perf_counter() - started, 3)
        mlflow.log_metrics({f"time_{k}_s": v for k, v in timings.items()})
        warning = no_signal_warning(evaluation.metrics["roc_auc"], split.valid[CHURNED].to_numpy())
        if warning:
            mlflow.set_tag("warning", warning)
    result = ChurnRunResult(
        run_id=run_id,
        experiment_id=experiment_id,
        registered_name=config.registered_model_name,
        version=version,
        model_uri=model_uri,
        metrics=evaluation.metrics,
        baseline_metrics=evaluation.baseline_metrics,
        calibration=choice.calibration,
        split=split.description,
        n_train=len(split.train),
        n_valid=len(split.valid),
        timings=timings,
        validation_predictions=evaluation.valid_frame["churn_risk"].to_numpy(),
        warning=warning,
    )
    if result.warning:
        logger.warning("%s", result.warning)
    logger.info("churn run %s registered as %s", run_id, model_uri)
    return result


def write_summary(result: ChurnRunResult, path: Path) -> None:
    """The run summary as JSON (metrics, run id, version, timings)."""
    atomic_write_text(json.dumps(result.summary(), indent=2, default=str) + "\n", path)
