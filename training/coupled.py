"""Promote a sentiment model together with the churn model whose text features it computes.

A churn model's sentiment features only mean something with the sentiment model that built its training frame
(`models.text_scoring`), so moving the sentiment `champion` alias alone would either change churn risks silently
or leave a pair that `churnsense build` refuses. `promote_sentiment_coupled`:

1. gates the newest sentiment version against its champion, as `churnsense promote sentiment` always did;
2. when the churn champion's text features come from another sentiment model, shows what the new one does to
   it: the churn champion's validation rows rescored with text features from the new model;
3. with `with_churn`, retrains the churn model on the champion's spec and config with the new sentiment model
   and gates it (on its validation rows) against the champion (on its own); both aliases move only if both
   models pass, and neither moves otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnsense.errors import UserError
from models.catalog import CHURN_MODEL, SENTIMENT_MODEL

logger = logging.getLogger(__name__)


@dataclass
class CoupledPromotion:
    """What happened to both aliases, and why."""

    sentiment: Any  # training.registry.PromotionDecision
    moved: list[str] = field(default_factory=list)
    impact: dict[str, dict[str, float]] | None = None  # {"own text features": m, "new text features": m}
    churn: Any = None  # the churn PromotionDecision, with --with-churn
    note: str = ""

    @property
    def promoted(self) -> bool:
        return self.sentiment.name in self.moved

    def render(self) -> str:
        lines = [self.sentiment.render()]
        if self.impact:
            old, new = self.impact["own text features"], self.impact["new text features"]
            lines.append(
                "  churn champion on its validation rows, with text features from each sentiment model:"
            )
            lines.append(f"    {'metric':<14}{'current':>10}{'new':>10}")
            lines += [
                f"    {k:<14}{old[k]:10.4f}{new[k]:10.4f}" for k in ("roc_auc", "pr_auc", "brier") if k in old
            ]
        if self.churn is not None:
            lines.append(self.churn.render())
        if self.note:
            lines.append(f"  {self.note}")
        lines.append("  aliases moved: " + (", ".join(self.moved) if self.moved else "none"))
        return "\n".join(lines)


def _churn_uses_text(version: Any) -> Any:
    """The churn model of a registry version if its features include text sentiment, else None."""
    from models.churn import ChurnModel

    model = ChurnModel.load(f"models:/{CHURN_MODEL}/{version.version}")
    return model if model.schema.use_sentiment else None


def _champion_inputs(version: Any) -> tuple[Path, Path]:
    """The spec file and the config the churn champion's run was trained with."""
    import mlflow

    run = mlflow.get_run(version.run_id)
    spec = Path(run.data.tags.get("spec", ""))
    if not spec.is_file():
        raise UserError(
            f"{CHURN_MODEL} v{version.version}: its spec {spec} is no longer there, so the churn model cannot be "
            "rescored or retrained with the new sentiment model"
        )
    config = Path(
        mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="config/churn.yaml")
    )
    return spec, config


def rescore_validation(
    churn_model: Any, version: Any, lineage: Any, spec: Path
) -> dict[str, dict[str, float]]:
    """The churn champion's metrics on its validation rows with its own text features and with `lineage`'s."""
    from features.columns import CHURNED
    from features.spec import load_spec
    from models.text_scoring import CachedTextScorer
    from training.churn import classification_metrics
    from training.churn_data import label_training_data, load_training_data
    from training.churn_promotion import load_validation_frame

    own = load_validation_frame(version.run_id)
    data = load_training_data(load_spec(spec), CachedTextScorer(lineage))
    frame, _ = label_training_data(data, 1)
    keys = own[["customer_id", "as_of"]].astype({"customer_id": str})
    frame = frame.astype({"customer_id": str})
    rescored = keys.merge(frame, on=["customer_id", "as_of"], how="left", validate="one_to_one")
    y = own[CHURNED].to_numpy()
    return {
        "own text features": classification_metrics(y, churn_model.predict_proba(own)),
        "new text features": classification_metrics(y, churn_model.predict_proba(rescored)),
    }


def promote_sentiment_coupled(
    with_churn: bool = False, force: bool = False, model_name: str = SENTIMENT_MODEL
) -> CoupledPromotion:
    """Gate the newest sentiment version and move the aliases so churn text features never change silently.

    Args:
        with_churn: retrain and gate the churn model with the new sentiment model, moving both aliases together.
        force: promote the sentiment challenger (and, with `with_churn`, the churn challenger) even if worse.
        model_name: the sentiment model's registered name (churn lineage is checked for `churnsense-sentiment`).
    """
    from models.text_scoring import sentiment_lineage
    from training.churn import classification_metrics, train_churn
    from training.churn_config import load_config
    from training.churn_promotion import promote_policy
    from training.registry import champion_version, decide, record_decision
    from training.sentiment import promote_sentiment

    decision = promote_sentiment(force=force, model_name=model_name, dry_run=True)
    result = CoupledPromotion(sentiment=decision)
    if not decision.promoted:
        if decision.reason != "already the champion":
            record_decision(decision)  # the refusal is written to the version's tags
        return result
    churn_version = champion_version(CHURN_MODEL) if model_name == SENTIMENT_MODEL else None
    churn_model = _churn_uses_text(churn_version) if churn_version is not None else None
    lineage = churn_model.sentiment_lineage if churn_model is not None else None
    if churn_model is None or (lineage is not None and lineage.version == str(decision.challenger)):
        record_decision(decision)
        result.moved.append(model_name)
        return result
    new_lineage = sentiment_lineage(f"models:/{SENTIMENT_MODEL}/{decision.challenger}")
    spec, config_path = _champion_inputs(churn_version)
    result.impact = rescore_validation(churn_model, churn_version, new_lineage, spec)
    if not with_churn:
        result.note = (
            f"not moved: {CHURN_MODEL} champion v{churn_version.version} computes its text features with "
            f"{lineage.describe() if lineage else 'an unrecorded sentiment model'}; moving the sentiment champion "
            "alone would leave a pair `churnsense build` refuses. Rerun with --with-churn to retrain and gate the "
            "churn model so both move together."
        )
        return result
    from features.columns import CHURNED
    from models.text_scoring import CachedTextScorer
    from training.churn_promotion import load_validation_frame
    from training.registry import PromotionDecision

    config = load_config(config_path)
    trained = train_churn(spec, config, sentiment_scorer=CachedTextScorer(new_lineage))
    # Held-out predictions of both runs (their registered models were refitted on these rows too).
    new_frame = load_validation_frame(trained.run_id)
    old_frame = load_validation_frame(churn_version.run_id)
    new = classification_metrics(new_frame[CHURNED].to_numpy(), new_frame["churn_risk"].to_numpy())
    old = classification_metrics(old_frame[CHURNED].to_numpy(), old_frame["churn_risk"].to_numpy())
    promoted, reason = decide(new, old, promote_policy(config))
    churn = PromotionDecision(
        CHURN_MODEL, trained.version, str(churn_version.version), promoted or force, reason, force and not promoted,
        new, old,
    )  # fmt: skip
    result.churn = churn
    if churn.promoted:
        record_decision(decision)
        record_decision(churn)
        result.moved += [SENTIMENT_MODEL, CHURN_MODEL]
    else:
        result.note = (
            "neither alias moved: the churn model retrained with the new sentiment model did not pass"
        )
        record_decision(churn)
    return result
