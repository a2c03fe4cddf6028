"""What /churn_risk answers (pydantic models, published in /docs.json): risk, band, reasons with the evidence
behind them, the texts' sentiment, time to churn, and the models that made the answer. Requests and the other
endpoints' bodies: `serving.schemas`."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class EvidenceEvent(BaseModel):
    """One event behind a reason: when, what type; its text (as the sentiment model read it) and sentiment
    when the events have texts, and then `phrase`: the words that drove that sentiment, `{start, end, phrase,
    effect}` (character offsets into `text`; `effect` = P(negative) without the phrase minus with it, see
    `models.phrases`), and `aspect` (what it is about, when the Bento has an aspect model); the value a value
    feature aggregates."""

    model_config = ConfigDict(extra="allow")

    timestamp: str = Field(description="ISO 8601, UTC")
    type: str


class Evidence(BaseModel):
    """The events that made a reason's feature value: the first few (newest first; for a minimum or maximum,
    the one that gave it first) and how many there are (a count feature's `total` is its value)."""

    total: int
    events: list[EvidenceEvent]


class Reason(BaseModel):
    feature: str
    value: float | str | None = Field(description="the customer's value of the feature (null: missing)")
    contribution: float = Field(description="push towards churn (+) or away from it (-)")
    evidence: Evidence | None = Field(
        None, description="the events behind the value (null: a profile feature, or evidence not asked for)"
    )


class SentimentSummary(BaseModel):
    """The sentiment of the texts in the request's events (polarity = P(positive) - P(negative))."""

    count: int
    mean: float | None
    min: float | None
    last: float | None = Field(description="polarity of the newest text")
    labels: dict[str, int] = Field(description="texts per predicted label")


class ModelVersions(BaseModel):
    """The models behind an answer: registry versions, and the sentiment model's content identity."""

    churn: str = Field(description="churn model registry version")
    sentiment: str = Field(description="sentiment model registry version (texts and churn text features)")
    sentiment_scoring_id: str = Field(
        description="sentiment artifact digest, arithmetic (int8/fp32) and inference version: equal ids give "
        "bit-identical text scores"
    )
    aspects: str | None = Field(
        None,
        description="aspect model registry version (names what evidence texts are about), if the Bento has one",
    )
    survival: str | None = Field(
        None, description="survival (time to churn) model registry version, if the Bento has one"
    )


class TimeToChurn(BaseModel):
    """When the customer is likely to leave, from the survival model (`models.survival`), counted from `as_of`
    (for a model of tenures: given the tenure already stayed). Null values: the model cannot tell (a tenure it
    never saw)."""

    survival_30d: float | None = Field(
        description="probability of still being a customer 30 days after as_of"
    )
    survival_60d: float | None
    survival_90d: float | None
    expected_days_to_churn: float | None = Field(
        description="median days to churn: the first day the survival curve reaches 0.5; null when it stays "
        "above 0.5 for as long as training followed customers (see expected_days_more_than)"
    )
    expected_days_more_than: float | None = Field(
        description="when expected_days_to_churn is null: the customer is expected to stay more than this many days"
    )


class ChurnRiskResponse(BaseModel):
    customer_id: str
    as_of: dt.datetime
    churn_risk: float = Field(ge=0, le=1, description="calibrated probability of churn within the horizon")
    risk_band: str
    reasons: list[Reason]
    base_value: float = Field(
        description="calibrated log-odds every customer starts from; base_value + sum(reasons.contribution) + "
        "other_contribution = logit(churn_risk)"
    )
    other_contribution: float = Field(
        description="summed contribution (log-odds) of the features not listed in reasons"
    )
    sentiment: SentimentSummary
    time_to_churn: TimeToChurn | None = Field(
        None, description="when the customer is likely to leave; null when the Bento has no survival model"
    )
    model_versions: ModelVersions


class ChurnRiskBatchResponse(BaseModel):
    results: list[ChurnRiskResponse]
