"""What a churn run records of the text models behind its features: the sentiment model that scored the event
texts and the aspect model that labelled them (lineages in the model's metadata, tags on the run and version).
"""

from __future__ import annotations

from typing import Any

from churnsense.errors import UserError
from features.pipeline import AspectLabeler, SentimentScorer
from features.spec import DatasetSpec


def lineage_tags(sentiment: dict[str, Any] | None, aspects: dict[str, Any] | None = None) -> dict[str, str]:
    tags = {}
    for what, lineage in (("sentiment", sentiment), ("aspect", aspects)):
        if lineage:
            tags[f"{what}_model"] = f"{lineage.get('name') or lineage['model_uri']}"
            tags[f"{what}_model_version"] = str(lineage.get("version") or "")
            tags[f"{what}_scoring_id"] = str(lineage["scoring_id"])
    return tags


def text_aspect_lineage(
    spec: DatasetSpec, sentiment: dict[str, Any] | None, aspect_labeler: AspectLabeler | None
) -> dict[str, Any] | None:
    """The aspect lineage a churn model records: its labeler's (a `models.aspect_scoring.CachedAspectLabeler`).
    Aspect features count negative texts, so they need texts the sentiment model scores."""
    if aspect_labeler is None:
        return None
    if sentiment is None:
        raise UserError(
            "aspect model: its features count negative texts per aspect, so it needs event texts scored by a "
            "sentiment model (--sentiment-model, and a spec whose events have `text` and no `sentiment`)"
        )
    from features.text_features import check_aspect_names
    from models.lineage import AspectLineage

    lineage = getattr(aspect_labeler, "lineage", None)
    if not isinstance(lineage, AspectLineage):
        raise UserError(
            "aspect labeler: it does not say which model it is; pass a models.aspect_scoring.CachedAspectLabeler"
        )
    try:  # before any text is labelled: names that cannot become features fail now
        check_aspect_names(lineage.names)
    except ValueError as error:
        raise UserError(f"aspect model {lineage.describe()}: {error}") from None
    return lineage.to_dict()


def text_sentiment_lineage(
    spec: DatasetSpec, sentiment_scorer: SentimentScorer | None
) -> dict[str, Any] | None:
    """The lineage a churn model records for its text features: that of the scorer when event texts are scored
    (None when there are none, or the spec brings its own sentiment column). An anonymous scorer is refused:
    nobody could reproduce its scores at serving time."""
    from models.text_scoring import lineage_of_scorer

    if sentiment_scorer is None or spec.events is None or spec.events.sentiment or not spec.events.text:
        return None
    lineage = lineage_of_scorer(sentiment_scorer)
    if lineage is None:
        raise UserError(
            "sentiment scorer: it does not say which model it is, so the service and batch jobs could not "
            "reproduce the churn model's text features; pass a models.text_scoring.CachedTextScorer or a "
            "SentimentClassifier loaded from a registered model or folder"
        )
    return lineage.to_dict()
