"""Champion / challenger promotion in the MLflow Model Registry, shared by the churn and sentiment models.

The newest registered version (the challenger) takes the `champion` alias only if, on the challenger's own
validation data, it beats the current champion on the primary metric and its calibration is not worse by more
than a tolerance. The first version of a model becomes champion. `force=True` overrides a refusal; every
decision is written to the challenger version's tags so the registry shows who won and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from churnsense.errors import UserError

logger = logging.getLogger(__name__)

CHAMPION = "champion"


@dataclass(frozen=True)
class PromotionPolicy:
    """What "better" means. `calibration_metric` is lower-is-better (Brier score, log loss, ECE)."""

    primary_metric: str = "roc_auc"
    greater_is_better: bool = True
    calibration_metric: str | None = "brier"
    calibration_tolerance: float = 0.005


@dataclass
class PromotionDecision:
    name: str
    challenger: str
    champion: str | None
    promoted: bool
    reason: str
    forced: bool = False
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        """A small table for the terminal: metric, champion, challenger."""
        lines = [
            f"{self.name}: challenger v{self.challenger} vs champion "
            + (f"v{self.champion}" if self.champion else "(none)")
        ]
        if self.challenger_metrics:
            lines.append(f"  {'metric':<22}{'champion':>12}{'challenger':>12}")
            for metric in sorted(self.challenger_metrics):
                old = self.champion_metrics.get(metric)
                old_text = f"{old:12.4f}" if old is not None else f"{'-':>12}"
                lines.append(f"  {metric:<22}{old_text}{self.challenger_metrics[metric]:12.4f}")
        verdict = "PROMOTED" if self.promoted else "REFUSED"
        lines.append(f"  {verdict}{' (forced)' if self.forced else ''}: {self.reason}")
        return "\n".join(lines)


Evaluator = Callable[[str, "object"], dict[str, float]]
"""evaluate(model_uri, challenger_version) -> metrics on the challenger's validation data."""


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def newest_version(name: str):
    """The highest-numbered version of a registered model; `UserError` if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _client().search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        raise UserError(f"model registry: cannot list versions of {name!r} ({error})") from None
    if not versions:
        raise UserError(f"model registry: no versions of {name!r} yet; train one first")
    return max(versions, key=lambda v: int(v.version))


def champion_version(name: str):
    """The version holding the `champion` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def decide(
    challenger: dict[str, float], champion: dict[str, float], policy: PromotionPolicy
) -> tuple[bool, str]:
    """Pure comparison: (promote?, why)."""
    metric = policy.primary_metric
    if metric not in challenger or metric not in champion:
        return False, f"primary metric {metric!r} missing from the evaluation"
    new, old = challenger[metric], champion[metric]
    better = new > old if policy.greater_is_better else new < old
    if not better:
        return False, f"{metric} {new:.4f} does not beat the champion's {old:.4f}"
    cal = policy.calibration_metric
    if (
        cal
        and cal in challenger
        and cal in champion
        and challenger[cal] > champion[cal] + policy.calibration_tolerance
    ):
        return False, (
            f"{metric} improves ({old:.4f} -> {new:.4f}) but {cal} worsens {champion[cal]:.4f} -> "
            f"{challenger[cal]:.4f}, beyond the tolerance {policy.calibration_tolerance}"
        )
    return True, f"{metric} {old:.4f} -> {new:.4f}"


def promote_newest(
    name: str, evaluate: Evaluator, policy: PromotionPolicy, force: bool = False, dry_run: bool = False
) -> PromotionDecision:
    """Compare the newest version with the champion on the newest version's validation data; move the alias
    when it wins (or when forced). Returns the decision; the caller decides the exit code.

    With `dry_run`, only decide: no alias moves and no tag is written (`record_decision` does both later).
    """
    challenger = newest_version(name)
    champion = champion_version(name)
    if champion is None:
        decision = PromotionDecision(name, challenger.version, None, True, "first model becomes champion")
    elif champion.version == challenger.version:
        decision = PromotionDecision(
            name, challenger.version, champion.version, False, "already the champion"
        )
        return decision
    else:
        new = evaluate(f"models:/{name}/{challenger.version}", challenger)
        old = evaluate(f"models:/{name}/{champion.version}", challenger)
        promoted, reason = decide(new, old, policy)
        decision = PromotionDecision(
            name, challenger.version, champion.version, promoted, reason, False, new, old
        )
        if not promoted and force:
            decision.promoted, decision.forced = True, True
    if not dry_run:
        record_decision(decision)
    return decision


def record_decision(decision: PromotionDecision) -> None:
    """Move the alias when `decision.promoted`, and write the decision to the challenger version's tags."""
    client = _client()
    name, version = decision.name, decision.challenger
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        logger.info("%s v%s is now %s%s", name, version, CHAMPION, " (forced)" if decision.forced else "")
    client.set_model_version_tag(
        name,
        version,
        "promotion",
        json.dumps(
            {
                "promoted": decision.promoted,
                "forced": decision.forced,
                "reason": decision.reason,
                "compared_with": decision.champion,
                "challenger": decision.challenger_metrics,
                "champion": decision.champion_metrics,
            },
            sort_keys=True,
        ),
    )
    if decision.forced:
        client.set_model_version_tag(name, version, "promotion.forced", "true")
