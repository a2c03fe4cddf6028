"""Request and response models of the service (STYLE rule 7): field limits make bad input a 400, not a 500.

Limits come from `serving.settings` (environment variables), checked by validators so an operator can tune them.
Every model hides input values in its error messages (`hide_input_in_errors`): BentoML logs a rejected
request's validation error, and nothing a customer wrote may reach the logs.

Checks that need the loaded churn model (which profile fields and value columns it expects) live in
`serving.scoring`, which raises the same pydantic `ValidationError` so every 400 has one shape:
``{"error": "1 validation error for ...", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from serving.settings import current_settings

# pandas stores times as int64 nanoseconds: anything outside this range cannot be represented.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
MAX_NAME_CHARS = 200
MAX_VALUE_CHARS = 1000


def utc(stamp: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive time is taken as UTC (as the loaders and the feature engine do)."""
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=dt.UTC)
    offset = stamp.utcoffset()
    # Most clients send UTC: re-label it instead of converting (astimezone is ~10x slower per event).
    return stamp.replace(tzinfo=dt.UTC) if not offset else (stamp - offset).replace(tzinfo=dt.UTC)


def _check_text(value: str) -> str:
    """A text to score: not blank, at most CHURNSENSE_MAX_TEXT_CHARS characters."""
    if not value.strip():
        raise ValueError("text is empty or only whitespace")
    limit = current_settings().max_text_chars
    if len(value) > limit:
        raise ValueError(f"text has {len(value)} characters; at most {limit} (CHURNSENSE_MAX_TEXT_CHARS)")
    return value


def _check_time(value: dt.datetime) -> dt.datetime:
    value = utc(value)
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return value


Text = Annotated[str, AfterValidator(_check_text)]
Timestamp = Annotated[dt.datetime, AfterValidator(_check_time)]
# Extra fields: strict types, so "007" stays a string and 7 stays an integer, as a loaded file would have them.
Scalar = (
    StrictBool
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | Annotated[StrictStr, StringConstraints(max_length=MAX_VALUE_CHARS)]
    | None
)
ExtraName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
# Ids and event types are stripped, as the loaders strip them (" call " in a file is the type "call").
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class _Open(BaseModel):
    """A model whose extra fields carry model-specific values (profile fields, event value columns): each one
    a string, a finite number, a boolean or null, checked by pydantic itself (no Python per value)."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)
    __pydantic_extra__: dict[ExtraName, Scalar] = Field(init=False)


# --- /sentiment -----------------------------------------------------------------------------------------


class SentimentRequest(_Strict):
    texts: list[Text] = Field(
        min_length=1, description="texts to classify; at most CHURNSENSE_MAX_TEXTS (default 64)"
    )

    @field_validator("texts")
    @classmethod
    def _not_too_many(cls, texts: list[str]) -> list[str]:
        limit = current_settings().max_texts
        if len(texts) > limit:
            raise ValueError(f"{len(texts)} texts; at most {limit} per request (CHURNSENSE_MAX_TEXTS)")
        return texts


class ClassifyTextsRequest(_Strict):
    """Input of the internal, adaptively batched `/classify_texts` (what /sentiment and /churn_risk send)."""

    texts: list[Text] = Field(description="at most CHURNSENSE_BATCH_MAX_TEXTS (default 2000)")

    @field_validator("texts")
    @classmethod
    def _not_too_many(cls, texts: list[str]) -> list[str]:
        limit = current_settings().batch_max_texts
        if len(texts) > limit:
            raise ValueError(f"{len(texts)} texts; at most {limit} per call (CHURNSENSE_BATCH_MAX_TEXTS)")
        return texts


class TextSentiment(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="probability of `label`")
    scores: dict[str, float] = Field(description="probability of every class")
    polarity: float = Field(description="P(positive) - P(negative) in [-1, 1]: the churn features' input")


class SentimentResult(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="probability of `label`")
    scores: dict[str, float] = Field(description="probability of every class")


class SentimentResponse(BaseModel):
    results: list[SentimentResult]
    model_version: str = Field(description="MLflow registry version of the sentiment model")
    scoring_id: str = Field(
        description="artifact digest, arithmetic (int8/fp32) and inference version of the model: equal ids give "
        "bit-identical scores for the same text"
    )


# --- /churn_risk ----------------------------------------------------------------------------------------


class Customer(_Open):
    """`customer_id`, an optional `signup_date`, and the profile fields the churn model was trained on."""

    customer_id: Name
    signup_date: Timestamp | None = None

    @model_validator(mode="after")
    def _not_too_many_fields(self) -> Customer:
        extra = self.model_extra or {}
        limit = current_settings().max_profile_fields
        if len(extra) > limit:
            raise ValueError(f"{len(extra)} profile fields; at most {limit} (CHURNSENSE_MAX_PROFILE_FIELDS)")
        return self

    def profile_fields(self) -> dict[str, Any]:
        """The fields beyond `customer_id` and `signup_date`, as sent."""
        return dict(self.model_extra or {})


class Event(_Open):
    """One interaction: when, what type, optional text, plus value fields (e.g. `amount`, `channel`).

    Value fields the churn model aggregates (its `value_columns`) must be numbers or null; others are ignored.
    """

    timestamp: Timestamp
    type: Name = Field(description="event type; types the model never saw count as 'other'")
    text: Text | None = Field(
        None, description="message, ticket or review text; scored by the sentiment model"
    )

    def value_fields(self) -> dict[str, Any]:
        """The fields beyond `timestamp`, `type` and `text`, as sent."""
        return dict(self.model_extra or {})


class ChurnRiskRequest(_Strict):
    customer: Customer
    events: list[Event] = Field(
        default_factory=list, description="interaction history; at most CHURNSENSE_MAX_EVENTS (default 1000)"
    )
    as_of: Timestamp | None = Field(None, description="the time the risk describes (default: now, UTC)")

    @field_validator("events")
    @classmethod
    def _not_too_many_events(cls, events: list[Event]) -> list[Event]:
        settings = current_settings()
        if len(events) > settings.max_events:
            raise ValueError(f"{len(events)} events; at most {settings.max_events} (CHURNSENSE_MAX_EVENTS)")
        n_texts = sum(event.text is not None for event in events)
        if n_texts > settings.max_texts:
            raise ValueError(f"{n_texts} event texts; at most {settings.max_texts} (CHURNSENSE_MAX_TEXTS)")
        return events

    @model_validator(mode="after")
    def _nothing_after_as_of(self) -> ChurnRiskRequest:
        # Without as_of the check is against now; the request is scored as of a moment later still, so it holds.
        as_of = self.as_of or dt.datetime.now(dt.UTC)
        for i, event in enumerate(self.events):
            if event.timestamp > as_of:
                raise ValueError(f"events[{i}].timestamp is after as_of; send only what happened before it")
        if self.customer.signup_date is not None and self.customer.signup_date > as_of:
            raise ValueError("customer.signup_date is after as_of")
        return self


class ChurnRiskBatchRequest(_Strict):
    customers: list[ChurnRiskRequest] = Field(
        min_length=1, description="at most CHURNSENSE_BATCH_MAX_CUSTOMERS (default 1000)"
    )

    @field_validator("customers")
    @classmethod
    def _within_batch_limits(cls, items: list[ChurnRiskRequest]) -> list[ChurnRiskRequest]:
        settings = current_settings()
        if len(items) > settings.batch_max_customers:
            raise ValueError(
                f"{len(items)} customers; at most {settings.batch_max_customers} (CHURNSENSE_BATCH_MAX_CUSTOMERS)"
            )
        n_events = sum(len(item.events) for item in items)
        if n_events > settings.batch_max_events:
            raise ValueError(
                f"{n_events} events in all; at most {settings.batch_max_events} (CHURNSENSE_BATCH_MAX_EVENTS)"
            )
        n_texts = sum(event.text is not None for item in items for event in item.events)
        if n_texts > settings.batch_max_texts:
            raise ValueError(
                f"{n_texts} event texts in all; at most {settings.batch_max_texts} (CHURNSENSE_BATCH_MAX_TEXTS)"
            )
        ids = [item.customer.customer_id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("customer_id values repeat; send each customer once")
        return items


class Reason(BaseModel):
    feature: str
    value: float | str | None = Field(description="the customer's value of the feature (null: missing)")
    contribution: float = Field(description="push towards churn (+) or away from it (-)")


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
    model_versions: ModelVersions


class ChurnRiskBatchResponse(BaseModel):
    results: list[ChurnRiskResponse]
