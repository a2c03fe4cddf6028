"""Request and response models of the service (STYLE rule 7): field limits make bad input a 400, not a 500.

Limits come from `serving.settings` (environment variables), checked by validators so an operator can tune them.
Every model hides input values in its error messages (`hide_input_in_errors`): BentoML logs a rejected
request's validation error, and nothing a customer wrote may reach the logs.

Checks that need the loaded churn model (which profile fields and value columns it expects) live in
`serving.scoring`, which raises the same pydantic `ValidationError` so every 400 has one shape:
``{"error": "1 validation error for ...", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}``.

The published OpenAPI spec (/docs.json) states what a schema can: the limits (read from the settings when the spec
is generated, so it shows the server's own), non-blank texts, and the served model's profile fields and event
values (`publish_model_fields`). Rules across fields (times in order, totals, distinct ids) are in descriptions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

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

if TYPE_CHECKING:
    from features.engine import FeatureSchema

# pandas stores times as int64 nanoseconds: anything outside this range cannot be represented.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
MAX_NAME_CHARS = 200
MAX_VALUE_CHARS = 1000
# "Not blank" as the spec says it: a character that is whitespace neither to JSON Schema (ECMA-262 `\s`) nor to
# Python's `str.strip` (which also strips \x1c-\x1f and \x85).
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"


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
    try:
        stamp = utc(value)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00: before the first time Python has in UTC (was a 500)
        stamp = None
    if stamp is None or not EARLIEST <= stamp < LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return stamp


def _published(**limits: str) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` giving JSON-schema keywords the values of settings (keyword -> setting name), read when
    the spec is generated: /docs.json then shows the limits this server enforces."""

    def extra(schema: dict[str, Any]) -> None:
        settings = current_settings()
        schema.update({keyword: getattr(settings, name) for keyword, name in limits.items()})

    return extra


def _text_schema(schema: dict[str, Any]) -> None:
    schema.update(minLength=1, pattern=NOT_BLANK)  # what `_check_text` checks
    _published(maxLength="max_text_chars")(schema)


Text = Annotated[str, AfterValidator(_check_text), Field(json_schema_extra=_text_schema)]
Timestamp = Annotated[
    dt.datetime,
    AfterValidator(_check_time),
    Field(description=f"ISO 8601; from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d}; naive times are UTC"),
]
# Extra fields: strict types, so "007" stays a string and 7 stays an integer, as a loaded file would have them.
Scalar = (
    StrictBool
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | Annotated[StrictStr, StringConstraints(max_length=MAX_VALUE_CHARS)]
    | None
)
# Ids and event types are stripped, as the loaders strip them (" call " in a file is the type "call").
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS),
    Field(json_schema_extra={"pattern": NOT_BLANK}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class _Open(BaseModel):
    """A model whose extra fields carry model-specific values (profile fields, event value columns): each one
    a string, a finite number, a boolean or null, checked by pydantic itself (no Python per value)."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)
    # Any name, as the spec allows: one the model does not read is ignored (the body's size limits its length).
    __pydantic_extra__: dict[str, Scalar] = Field(init=False)


# --- /sentiment -----------------------------------------------------------------------------------------


class SentimentRequest(_Strict):
    texts: list[Text] = Field(
        min_length=1,
        description="texts to classify; at most CHURNSENSE_MAX_TEXTS (default 64)",
        json_schema_extra=_published(maxItems="max_texts"),
    )
    aspects: bool = Field(
        False,
        description="also say what each text is about (a second model pass per text; needs a Bento built with "
        "an aspect champion: 400 otherwise)",
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

    texts: list[Text] = Field(
        description="at most CHURNSENSE_BATCH_MAX_TEXTS (default 256)",
        json_schema_extra=_published(maxItems="batch_max_texts"),
    )

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


class AspectResult(BaseModel):
    """What a text is about (`models.aspects`): the best-scoring aspect, or the taxonomy's none label."""

    aspect: str
    score: float = Field(
        description="the aspect's score: cosine similarity (zero-shot) or probability (trained)"
    )
    scores: dict[str, float] = Field(description="every aspect's score")


class SentimentResult(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="probability of `label`")
    scores: dict[str, float] = Field(description="probability of every class")
    aspect: AspectResult | None = Field(
        None, description="what the text is about (when the Bento has an aspect model)"
    )


class SentimentResponse(BaseModel):
    results: list[SentimentResult]
    model_version: str = Field(description="MLflow registry version of the sentiment model")
    aspect_model_version: str | None = Field(None, description="MLflow registry version of the aspect model")
    scoring_id: str = Field(
        description="artifact digest, arithmetic (int8/fp32) and inference version of the model: equal ids give "
        "bit-identical scores for the same text"
    )


# --- /churn_risk ----------------------------------------------------------------------------------------

# What the served churn model reads beyond the fixed fields: set by the service once its model is loaded, so the
# spec lists them. Empty in any other process: there Customer and Event stay plain open objects.
_SERVED_FIELDS: dict[str, tuple[str, ...]] = {"profile_numeric": (), "profile_categorical": (), "values": ()}
_NUMBER_OR_NULL = {"anyOf": [{"type": "number"}, {"type": "null"}]}


def publish_model_fields(schema: FeatureSchema) -> None:
    """Publish the churn model's profile fields (required: null if unknown) and event value columns (numbers)."""
    _SERVED_FIELDS.update(
        profile_numeric=tuple(schema.profile_numeric),
        profile_categorical=tuple(schema.profile_categorical),
        values=tuple(schema.value_columns),
    )


def _customer_schema(schema: dict[str, Any]) -> None:
    numeric, categorical = _SERVED_FIELDS["profile_numeric"], _SERVED_FIELDS["profile_categorical"]
    scalar = schema.get("additionalProperties", {})
    schema["properties"].update({name: _NUMBER_OR_NULL for name in numeric})
    schema["properties"].update({name: scalar for name in categorical})
    schema["required"] = [*schema.get("required", []), *numeric, *categorical]


def _event_schema(schema: dict[str, Any]) -> None:
    schema["properties"].update({name: _NUMBER_OR_NULL for name in _SERVED_FIELDS["values"]})


class Customer(_Open):
    """`customer_id`, an optional `signup_date`, and the profile fields the churn model was trained on (each
    required, null if unknown; the spec lists them). At most CHURNSENSE_MAX_PROFILE_FIELDS profile fields."""

    model_config = ConfigDict(json_schema_extra=_customer_schema)

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

    model_config = ConfigDict(json_schema_extra=_event_schema)

    timestamp: Timestamp
    type: Name = Field(description="event type; types the model never saw count as 'other'")
    text: Text | None = Field(
        None, description="message, ticket or review text; scored by the sentiment model"
    )

    def value_fields(self) -> dict[str, Any]:
        """The fields beyond `timestamp`, `type` and `text`, as sent."""
        return dict(self.model_extra or {})


BY_ID_RULE = "give either customer (with its events) or customer_id alone"


class ChurnRiskRequest(_Strict):
    """A customer in full (profile and events), or a customer of the event store by id alone."""

    customer: Customer | None = Field(None, description="the customer in full; or give customer_id instead")
    customer_id: Name | None = Field(
        None,
        description="score a customer of the event store (CHURNSENSE_STORE_URL) by id: its profile and the "
        "events the features need are read from the store; an id it does not hold is a 404",
    )
    events: list[Event] = Field(
        default_factory=list,
        description="interaction history, none after `as_of`; at most CHURNSENSE_MAX_EVENTS (default 1000) "
        "events, and at most CHURNSENSE_MAX_TEXTS (default 64) of them with a text",
        json_schema_extra=_published(maxItems="max_events"),
    )
    as_of: Timestamp | None = Field(None, description="the time the risk describes (default: now, UTC)")
    evidence: bool = Field(True, description="list the events behind each reason (false: a smaller answer)")
    phrases: bool = Field(
        False,
        description="with evidence: each quoted text also carries the phrase that drove its sentiment "
        "(occlusion: about 20 extra model passes per text the service has not explained before)",
    )

    @model_validator(mode="after")
    def _phrases_need_evidence(self) -> ChurnRiskRequest:
        if self.phrases and not self.evidence:
            raise ValueError("phrases: quotes evidence texts; it needs evidence true")
        return self

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

    @property
    def id(self) -> str:
        """The customer's id, given either way."""
        return self.customer.customer_id if self.customer is not None else str(self.customer_id)

    @model_validator(mode="after")
    def _customer_or_id(self) -> ChurnRiskRequest:
        if (self.customer is None) == (self.customer_id is None) or (self.customer_id and self.events):
            raise ValueError(BY_ID_RULE)
        return self

    @model_validator(mode="after")
    def _nothing_after_as_of(self) -> ChurnRiskRequest:
        # Without as_of the check is against now; the request is scored as of a moment later still, so it holds.
        as_of = self.as_of or dt.datetime.now(dt.UTC)
        for i, event in enumerate(self.events):
            if event.timestamp > as_of:
                raise ValueError(f"events[{i}].timestamp is after as_of; send only what happened before it")
        if (
            self.customer is not None
            and self.customer.signup_date is not None
            and self.customer.signup_date > as_of
        ):
            raise ValueError("customer.signup_date is after as_of")
        return self


class ChurnRiskBatchRequest(_Strict):
    customers: list[ChurnRiskRequest] = Field(
        min_length=1,
        description="each customer_id once; at most CHURNSENSE_BATCH_MAX_CUSTOMERS (default 1000) customers, "
        "CHURNSENSE_BATCH_MAX_EVENTS events and CHURNSENSE_BATCH_MAX_TEXTS texts in all",
        json_schema_extra=_published(maxItems="batch_max_customers"),
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
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("customer_id values repeat; send each customer once")
        return items


# --- /events --------------------------------------------------------------------------------------------


class StoredEvent(Event):
    """An interaction to store: an event plus whose it is and, optionally, the sender's own event id."""

    customer_id: Name = Field(description="a customer the event store holds")
    event_id: Name | None = Field(
        None,
        description="the sender's id: sending it again stores nothing (without one: the content is the key)",
    )


class EventsRequest(_Strict):
    events: list[StoredEvent] = Field(
        min_length=1,
        description="at most CHURNSENSE_MAX_EVENTS (default 1000) events, of customers the store holds; all are "
        "stored or none (an unknown customer is a 404)",
        json_schema_extra=_published(maxItems="max_events"),
    )

    @field_validator("events")
    @classmethod
    def _not_too_many(cls, events: list[StoredEvent]) -> list[StoredEvent]:
        limit = current_settings().max_events
        if len(events) > limit:
            raise ValueError(f"{len(events)} events; at most {limit} (CHURNSENSE_MAX_EVENTS)")
        return events


class EventsResponse(BaseModel):
    stored: int = Field(description="events new to the store, committed before this answer")
    duplicates: int = Field(description="events the store already held (same event_id, or same content)")


# --- errors ---------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="where: field names and list positions")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of the service's 4xx answers: 400 (bad input: `detail` names each field), 404 (a customer the
    event store does not hold), 413 and 415 (the request's size or content type: `error` only). `serving.guard`
    publishes it in /docs.json."""

    error: str
    detail: list[ErrorDetail] = Field(default_factory=list)
