"""`churnsense monitor`: how far today's customers have moved from what the churn champion was trained on.

    result = run_monitor("spec.yaml", "2024-12-01", scores="scores.parquet")
    print(result.render()); exit(1 if result.alerts else 0)

1. The champion's reference (`training.reference`: feature and risk distributions of its validation rows).
2. The current population: the spec's customers at `as_of` (those a batch run would score), their features
   from the one feature engine with the champion's own text models (through the cache), and their churn risk
   (from `--scores`, a batch output, or scored here).
3. Drift per feature and of the scores: PSI against the reference (`features.profile`); `warn` and `alert`
   thresholds from `MonitorConfig`.
4. With `--scores` from an earlier date whose label window has passed in the spec's data: realised performance
   of that scoring (ROC AUC, Brier score, observed churn per band).
5. A self-contained HTML report (`monitoring.report`), logged with the figures to the `churnsense-monitor`
   experiment.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from churnsense.errors import UserError
from features.columns import AS_OF, CHURNED, CUSTOMER_ID, TEXT
from features.engine import build_customer_features
from features.profile import ColumnProfile, drift_table, profiles_from_json, recent_events, unseen_share
from features.spec import DatasetSpec, load_spec

logger = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/profile.json"  # written by training.reference
RISK, BAND = "churn_risk", "risk_band"
EXPERIMENT = "churnsense-monitor"


class MonitorConfig(BaseModel):
    """Thresholds (PSI: under 0.1 is usually noise, over 0.25 a shift)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi_warn: float = Field(0.1, gt=0, description="a feature above this is listed as worth a look")
    psi_alert: float = Field(
        0.25, gt=0, description="a feature or the scores above this fail the run (exit 1)"
    )
    min_rows: int = Field(100, ge=1, description="fewer current rows: drift is not judged (too noisy)")
    unseen_alert: float = Field(
        0.1,
        gt=0,
        le=1,
        description="words the training texts never had: an alert when their share grows by more",
    )
    top: int = Field(10, ge=1, description="drifted features printed and plotted")


def load_monitor_config(path: str | Path | None) -> MonitorConfig:
    """`MonitorConfig` from a YAML file naming only what it changes (`configs/monitor.yaml` spells out the
    defaults); unknown keys and bad values are errors naming the key."""
    if path is None:
        return MonitorConfig()
    import yaml
    from pydantic import ValidationError

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return MonitorConfig(**raw)
    except (OSError, yaml.YAMLError, TypeError) as error:
        raise UserError(f"--config {path}: cannot read it ({error})") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise UserError(f"--config {path}: {problems}") from None


@dataclass
class MonitorResult:
    as_of: dt.date
    model_version: str
    features: pd.DataFrame  # drift_table rows + status
    scores: pd.DataFrame
    events: pd.DataFrame  # the event-type mix and text lengths of the last 90 days
    unseen: dict[str, Any]  # share of words the training texts never had: then, now, status
    n_rows: int
    config: MonitorConfig
    realised: dict[str, Any] | None = None
    report_path: Path | None = None
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[str]:
        tables = pd.concat([self.features, self.scores, self.events])
        found = tables.loc[tables["status"] == "alert", "feature"].tolist()
        return found + (["unseen_words"] if self.unseen.get("status") == "alert" else [])

    def render(self) -> str:
        lines = [
            f"monitor as of {self.as_of}: {self.n_rows:,} customers against churn model v{self.model_version}'s "
            f"reference; {len(self.alerts)} alert(s) (PSI > {self.config.psi_alert}), "
            f"{int((self.features['status'] == 'warn').sum())} feature(s) to watch (PSI > {self.config.psi_warn})"
        ]
        for kind, table in (("scores", self.scores), ("events", self.events)):
            for _, row in table.iterrows():
                lines.append(f"  {kind:<7} {row['feature']:<32} PSI {row['psi']:.3f}  {row['status']}")
        if self.unseen.get("now") is not None:
            lines.append(
                f"  texts   words the training texts never had: {self.unseen['then'] or 0:.1%} -> "
                f"{self.unseen['now']:.1%}  {self.unseen['status']}"
            )
        moved = self.features[self.features["status"] != "ok"].head(self.config.top)
        for _, row in moved.iterrows():
            lines.append(
                f"  feature {row['feature']:<32} PSI {row['psi']:.3f}  {row['status']}  "
                f"missing {row['missing_then']:.1%} -> {row['missing_now']:.1%}"
            )
        if moved.empty:
            lines.append("  no feature moved beyond the warning threshold")
        if self.realised is not None:
            r = self.realised
            lines.append(
                f"  realised, scores of {r['as_of']} ({r['n']:,} customers, {r['churned']:,} churned within "
                f"{r['horizon_days']} days): ROC AUC {r['roc_auc']:.3f}, Brier {r['brier']:.4f}, mean risk "
                f"{r['mean_risk']:.3f} vs observed {r['observed_rate']:.3f}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        if self.report_path is not None:
            lines.append(
                f"  report: {self.report_path}" + (f" (MLflow run {self.run_id})" if self.run_id else "")
            )
        return "\n".join(lines)


def status_of(table: pd.DataFrame, config: MonitorConfig, judged: bool) -> pd.DataFrame:
    out = table.copy()
    psi = out["psi"].to_numpy(dtype="float64")
    status = np.where(psi > config.psi_alert, "alert", np.where(psi > config.psi_warn, "warn", "ok"))
    status = np.where(np.isnan(psi), "missing", status)
    out["status"] = status if judged else np.where(np.isnan(psi), "missing", "not judged")
    return out


def load_reference(model: Any) -> dict[str, Any]:
    """The reference a churn model's run logged (`training.reference`)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:
        run_id = get_model_info(model.uri).run_id
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{REFERENCE_ARTIFACT}")
    except (MlflowException, OSError):
        raise UserError(
            f"churn model v{model.version} has no {REFERENCE_ARTIFACT}: it was trained before monitoring "
            "existed; retrain it (churnsense train churn) to monitor against it"
        ) from None


def current_population(
    spec: DatasetSpec, as_of: dt.date, model: Any, cache_dir: str | Path | None = None
) -> tuple[pd.DataFrame, Any]:
    """Features of the customers a batch run would score at `as_of`, with the model's own text models, and the
    loaded data (`features.pipeline.SpecData`)."""
    from features.labels import ineligible_reasons
    from features.pipeline import load_data

    schema = model.schema
    values = spec.events.values if spec.events is not None else ()
    problems = [
        f"events.values: no {v!r} (the churn model aggregates it)"
        for v in schema.value_columns
        if v not in values
    ]
    if schema.use_events and spec.events is None:
        problems.append("events: the churn model reads events, and the spec has none")
    scorer = labeler = None
    if schema.use_sentiment and spec.events is not None and not spec.events.sentiment:
        from models.text_scoring import CachedTextScorer

        scorer = CachedTextScorer(model.sentiment_lineage, cache_dir)
        if schema.aspects:
            from models.aspect_scoring import CachedAspectLabeler

            labeler = CachedAspectLabeler(model.aspect_lineage, cache_dir)
    data = load_data(
        spec, scorer, with_text=False, numeric_columns=schema.profile_numeric, aspect_labeler=labeler
    )
    has = set(data.customers.columns) if data.customers is not None else set()
    profile = (*schema.profile_numeric, *schema.profile_categorical)
    problems += [f"customers: no column {c!r} (the churn model reads it)" for c in profile if c not in has]
    if problems:
        raise UserError(f"{spec.source}: " + "; ".join(problems))
    features = build_customer_features(data.events, as_of, schema, customers=data.customers)
    churn_event = spec.events.churn_event if spec.events else None
    why_not = ineligible_reasons(data.customers, data.events, as_of, churn_event)
    eligible = why_not[why_not.isna()].index
    return features.loc[features.index.astype(str).isin(eligible)], data


def read_scores(path: Path, model_version: str) -> pd.DataFrame:
    """A batch output's eligible rows: customer_id, churn_risk, risk_band, as_of (checked: numbers, dates, one
    as_of, made by the churn model being monitored).

    Raises:
        UserError: naming the column and the problem.
    """
    columns = [CUSTOMER_ID, RISK, BAND, AS_OF, "eligible", "model_version"]
    try:
        scores = pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"--scores {path}: not a churnsense batch output ({error})") from None
    risk = pd.to_numeric(scores[RISK], errors="coerce")
    if (risk.isna() & scores[RISK].notna()).any() or not risk.dropna().between(0, 1).all():
        raise UserError(f"--scores {path}: column {RISK} holds values that are not probabilities in [0, 1]")
    dates = pd.to_datetime(scores[AS_OF], errors="coerce")
    if (dates.isna() & scores[AS_OF].notna()).any():
        raise UserError(f"--scores {path}: column {AS_OF} holds values that are not dates")
    scores = scores.assign(**{RISK: risk, AS_OF: dates})
    scores = scores[scores["eligible"].fillna(False).astype(bool) & scores[RISK].notna()].reset_index(
        drop=True
    )
    if scores.empty:
        raise UserError(f"--scores {path}: no scored customer in it (every row ineligible, or none)")
    if scores[AS_OF].nunique() != 1:
        raise UserError(f"--scores {path}: one as_of per file, found {scores[AS_OF].nunique()}")
    made_by = sorted(scores["model_version"].dropna().astype(str).unique())
    if made_by and made_by != [str(model_version)]:
        raise UserError(
            f"--scores {path}: made by churn model v{', v'.join(made_by)}, but the monitor judges v{model_version} "
            f"(its reference is another model's): give --model with that version"
        )
    return scores


def realised_performance(spec: DatasetSpec, scores: pd.DataFrame) -> tuple[dict[str, Any] | None, str]:
    """ROC AUC, Brier score and observed churn per band of a scoring whose label window has passed; else None
    and why not."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from features.labels import censored_as_of, label_snapshot
    from features.pipeline import load_data

    as_of = pd.Timestamp(scores[AS_OF].iloc[0]).date()
    data = load_data(spec, with_text=False)
    newest = max(
        [pd.Timestamp(data.events["timestamp"].max())]
        if data.events is not None and len(data.events)
        else [],
        default=None,
    )
    horizon = spec.labels.horizon_days
    if newest is None or censored_as_of([as_of], horizon, newest)[0]:
        return None, f"the scores' label window ({horizon} days from {as_of}) has not passed in this data"
    churn_event = spec.events.churn_event if spec.events else None
    labels = label_snapshot(data.customers, data.events, as_of, horizon, churn_event, spec.labels.inactivity)
    joined = scores.merge(labels[[CUSTOMER_ID, CHURNED]], on=CUSTOMER_ID, how="inner")
    if joined.empty:
        return None, "none of the scored customers is a customer with a label at that date in this data"
    if joined[CHURNED].nunique() < 2:
        return None, f"all {len(joined):,} scored customers had the same outcome: ROC AUC needs both"
    y, p = joined[CHURNED].to_numpy(dtype="int64"), joined[RISK].to_numpy(dtype="float64")
    bands = (
        joined.groupby(BAND, sort=False)
        .agg(n=(CHURNED, "size"), mean_risk=(RISK, "mean"), observed=(CHURNED, "mean"))
        .sort_values("mean_risk")
    )
    return {
        "as_of": as_of,
        "horizon_days": horizon,
        "n": len(joined),
        "churned": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "mean_risk": float(p.mean()),
        "observed_rate": float(y.mean()),
        "bands": bands.reset_index().to_dict(orient="records"),
    }, ""


def run_monitor(
    spec_path: str | Path,
    as_of: str | dt.date,
    scores: str | Path | None = None,
    model_uri: str | None = None,
    out: str | Path | None = None,
    config: MonitorConfig | None = None,
    log: bool = True,
    cache_dir: str | Path | None = None,
) -> MonitorResult:
    """Compare the population of `spec_path` at `as_of` with the churn champion's reference; see the module doc.

    `cache_dir`: the text score cache (default `CHURNSENSE_CACHE_DIR` or ~/.cache/churnsense)."""
    from models.catalog import CHURN_MODEL, champion_uri, configure_mlflow
    from models.churn import ChurnModel
    from monitoring.report import write_report

    config = config or MonitorConfig()
    if not isinstance(as_of, dt.date):
        try:
            as_of = dt.date.fromisoformat(str(as_of))
        except ValueError:
            raise UserError(f"--as-of: {str(as_of)!r} is not a date (YYYY-MM-DD)") from None
    spec = load_spec(spec_path)
    configure_mlflow(EXPERIMENT)
    model = ChurnModel.load(model_uri or champion_uri(CHURN_MODEL))
    reference = load_reference(model)
    ref_features = profiles_from_json(reference["features"])
    ref_scores = profiles_from_json(reference["scores"])
    features, data = current_population(spec, as_of, model, cache_dir)
    window = recent_events(data.events, as_of)
    notes = []
    realised = None
    if scores is not None:
        scored = read_scores(Path(scores), str(model.version))
        realised, why_not = realised_performance(spec, scored)
        if realised is None:
            notes.append(f"no realised performance: {why_not}")
    else:
        risk = model.predict_proba(features) if len(features) else np.zeros(0)
        from models.churn import risk_band

        scored = pd.DataFrame({RISK: risk, BAND: risk_band(risk, model.cutoffs) if len(risk) else []})
    judged = len(features) >= config.min_rows
    if not judged:
        notes.append(f"{len(features)} customers, fewer than min_rows {config.min_rows}: drift not judged")
    feature_drift = status_of(drift_table(ref_features, features), config, judged)
    score_drift = status_of(drift_table(ref_scores, scored), config, len(scored) >= config.min_rows)
    ref_events = profiles_from_json(reference.get("events") or [])
    event_drift = status_of(drift_table(ref_events, window), config, len(window) >= config.min_rows)
    unseen = unseen_words(reference, window, config)
    result = MonitorResult(as_of, str(model.version), feature_drift, score_drift, event_drift, unseen, len(features),
                           config, realised, notes=notes)  # fmt: skip
    current = _current_profiles(ref_features, features, ref_scores, scored)
    current |= _current_profiles(ref_events, window, {}, window)
    out_path = Path(out) if out is not None else Path(f"monitor-{as_of}.html")
    with tempfile.TemporaryDirectory(prefix="churnsense-monitor-") as tmp:
        figures = write_report(result, ref_features | ref_scores, current, out_path, Path(tmp))
        result.report_path = out_path
        if log:
            result.run_id = _log(result, out_path, figures, spec)
    return result


def unseen_words(reference: dict[str, Any], window: pd.DataFrame, config: MonitorConfig) -> dict[str, Any]:
    """The share of the last 90 days' words that the training texts never had, then (the reference's own
    window) and now; an alert when it grew by more than `unseen_alert`."""
    if not reference.get("vocabulary"):
        return {"then": None, "now": None, "status": "not judged"}
    now = unseen_share(window[TEXT], reference["vocabulary"])
    then = reference.get("unseen_share") or 0.0
    if np.isnan(now):
        return {"then": then, "now": None, "status": "not judged"}
    return {"then": then, "now": now, "status": "alert" if now - then > config.unseen_alert else "ok"}


def _current_profiles(
    ref_features: dict[str, ColumnProfile],
    features: pd.DataFrame,
    ref_scores: dict[str, ColumnProfile],
    scored: pd.DataFrame,
) -> dict[str, np.ndarray]:
    """Current shares in each reference column's bins (for the plots)."""
    out = {}
    for reference, frame in ((ref_features, features), (ref_scores, scored)):
        for name, profile in reference.items():
            if name in frame.columns:
                counts = profile.counts(frame[name])
                out[name] = counts / max(int(counts.sum()), 1)
    return out


def _log(result: MonitorResult, report: Path, figures: list[Path], spec: DatasetSpec) -> str:
    import mlflow

    with mlflow.start_run(run_name=f"monitor {result.as_of}") as run:
        mlflow.set_tags({"churn_model_version": result.model_version, "as_of": str(result.as_of),
                         "spec": str(spec.source or "")})  # fmt: skip
        metrics = {
            "n_customers": float(result.n_rows),
            "n_alerts": float(len(result.alerts)),
            "n_warnings": float((result.features["status"] == "warn").sum()),
            "max_feature_psi": float(
                result.features["psi"].max(skipna=True) if len(result.features) else 0.0
            ),
        }
        if result.unseen.get("now") is not None:
            metrics["unseen_word_share"] = float(result.unseen["now"])
        for _, row in pd.concat([result.features, result.scores, result.events]).iterrows():
            if not np.isnan(row["psi"]):
                metrics[f"psi.{row['feature']}"] = float(row["psi"])
        if result.realised is not None:
            metrics |= {
                f"realised_{k}": float(result.realised[k]) for k in ("roc_auc", "brier", "observed_rate")
            }
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report))
        for figure in figures:
            mlflow.log_artifact(str(figure), "plots")
        return run.info.run_id
