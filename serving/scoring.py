"""Online scoring: validated requests -> the feature engine's input tables -> the churn model's answer.

Nothing here computes a feature. A request becomes the same canonical `customers` and `events` tables the
loaders produce (`features.io`), event texts get their sentiment through `features.pipeline.add_sentiment`,
and `features.engine.build_customer_features` with the churn model's own `FeatureSchema` does the rest, exactly
as in training and in the batch job. Requests that share an `as_of` are scored in one vectorised call.

Checks that need the loaded model (which profile fields it expects, which event values must be numbers) raise
a pydantic `ValidationError` naming the field, so the service answers them with the same 400 as schema errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from features.columns import ASPECT, CUSTOMER_ID, EVENT_TYPE, SENTIMENT, SIGNUP_DATE, TEXT, TIMESTAMP
from features.engine import FeatureSchema, build_customer_features
from features.evidence import EvidenceFinder
from features.io import not_a_number_text
from features.pipeline import add_aspects, add_sentiment, textless_columns
from features.text import normalise_texts
from models.survival import ANSWER_COLUMNS
from serving.answers import ChurnRiskResponse, ModelVersions, Reason, SentimentSummary, TimeToChurn
from serving.schemas import ChurnRiskRequest, Event, TextSentiment

# What the churn model offers the service: features -> `models.churn.ScoredRows` (`ChurnModel.score_rows`).
ChurnScorer = Callable[[pd.DataFrame], Any]
# What the survival model offers: features -> a matrix, one row per customer of `models.survival.ANSWER_COLUMNS`
# (`SurvivalModel.answers`).
SurvivalScorer = Callable[[pd.DataFrame], np.ndarray]


def time_to_churn(answers: np.ndarray) -> list[TimeToChurn]:
    """`SurvivalModel.answers` rows as answers (NaN -> null)."""
    names = list(ANSWER_COLUMNS)
    values = np.asarray(answers, dtype=np.float64).tolist()  # Python floats
    return [
        TimeToChurn(**{k: None if v != v else v for k, v in zip(names, row, strict=True)}) for row in values
    ]


def request_error(title: str, problems: Sequence[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """A pydantic `ValidationError` (BentoML answers it with 400) with one entry per (location, message)."""
    details = [
        InitErrorDetails(type=PydanticCustomError("invalid_for_model", message), loc=loc, input=None)
        for loc, message in problems
    ]
    return ValidationError.from_exception_data(title, details, hide_input=True)


def event_value_problems(
    events: Sequence[Event], value_columns: Sequence[str], where: tuple[str | int, ...] = ()
) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, message) for each value column of an event that is neither a number nor null."""
    problems = []
    for j, event in enumerate(events):
        values = event.value_fields()
        for name in value_columns:
            value = values.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(((*where, "events", j, name), "must be a number or null"))
    return problems


def check_against_schema(
    requests: Sequence[ChurnRiskRequest], schema: FeatureSchema, prefix: tuple[str | int, ...] = ()
) -> None:
    """Raise a `ValidationError` when a request lacks a profile field the churn model uses, sends a numeric
    profile field that is not a number, or an event value column that is not a number. Fields the model does
    not use are ignored."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    many = len(requests) > 1 or prefix
    for i, request in enumerate(requests):
        where = (*prefix, i) if many else ()
        profile = request.customer.profile_fields()
        for name in (*schema.profile_numeric, *schema.profile_categorical):
            if name not in profile:
                problems.append(
                    (
                        (*where, "customer", name),
                        "missing: the churn model uses this profile field (null if unknown)",
                    )
                )
        for name in schema.profile_numeric:
            # The loaders' rule (`features.io.not_a_number`): `score` rejects the same values. A JSON number is
            # finite already (the schema refuses NaN and infinity); true/false are no numbers in a file either.
            value = profile.get(name)
            if isinstance(value, bool) or (isinstance(value, str) and not_a_number_text(value)):
                problems.append(((*where, "customer", name), "must be a finite number (or null)"))
        problems += event_value_problems(request.events, schema.value_columns, where)
        if len(problems) >= 20:
            break
    if problems:
        raise request_error("ChurnRiskRequest", problems)


def customers_frame(
    requests: Sequence[ChurnRiskRequest], schema: FeatureSchema, keys: Sequence[str]
) -> pd.DataFrame:
    """The canonical customers table (`customer_id`, `signup_date`, the schema's profile columns), with each
    request's row keyed by `keys` (one distinct key per request) in place of its customer id."""
    profiles = [r.customer.model_extra or {} for r in requests]
    columns: dict[str, Any] = {
        CUSTOMER_ID: pd.array(keys, dtype="str"),  # the engine's id type: no conversion there
        SIGNUP_DATE: _naive_utc_ns([r.customer.signup_date for r in requests]),
    }
    for name in (*schema.profile_numeric, *schema.profile_categorical):
        # Raw JSON values: the engine parses profile columns itself, as it does for a loaded file. Plain lists
        # (pandas infers each column's dtype as a Series would) build the frame in half the time of Series.
        columns[name] = [profile.get(name) for profile in profiles]
    return pd.DataFrame(columns)


def events_frame(
    requests: Sequence[ChurnRiskRequest], schema: FeatureSchema, keys: Sequence[str]
) -> pd.DataFrame:
    """The canonical events table (`customer_id`, `timestamp`, `event_type`, value columns, `text`), each
    request's events under its key in `keys`."""
    events = [e for r in requests for e in r.events]
    extras = [e.model_extra or {} for e in events]
    columns: dict[str, Any] = {
        CUSTOMER_ID: pd.array(
            [key for r, key in zip(requests, keys, strict=True) for _ in r.events], dtype="string"
        ),
        TIMESTAMP: _naive_utc_ns([e.timestamp for e in events]),
        EVENT_TYPE: pd.array([e.type for e in events], dtype="string"),
    }
    for name in schema.value_columns:
        # None (null or absent) -> NaN; values were checked to be numbers.
        columns[name] = np.array([extra.get(name) for extra in extras], dtype="float64")
    texts = [e.text for e in events]
    columns[TEXT] = pd.array(texts, dtype="string")
    if all(text is None for text in texts):  # what add_sentiment and add_aspects would add, without a copy
        columns.update(textless_columns(len(events), schema.use_sentiment, bool(schema.aspects)))
    return pd.DataFrame(columns)


def request_texts(request: ChurnRiskRequest) -> list[str]:
    """The texts of a request's events as the sentiment model sees them (`features.text.normalise_text`, as
    `add_sentiment` does); blank texts are no texts."""
    return [text for text in normalise_texts(event.text for event in request.events) if text is not None]


def sentiment_summary(request: ChurnRiskRequest, scored: Mapping[str, TextSentiment]) -> SentimentSummary:
    """Count, mean, min, newest polarity and label counts of the texts in one request."""
    texts = normalise_texts(event.text for event in request.events)
    dated = [
        (e.timestamp, i, scored[t])
        for i, (e, t) in enumerate(zip(request.events, texts, strict=True))
        if t is not None
    ]
    if not dated:
        return SentimentSummary(count=0, mean=None, min=None, last=None, labels={})
    polarity = [s.polarity for _, _, s in dated]
    labels: dict[str, int] = {}
    for _, _, s in dated:
        labels[s.label] = labels.get(s.label, 0) + 1
    newest = max(dated, key=lambda item: (item[0], item[1]))[2]
    return SentimentSummary(
        count=len(dated),
        mean=float(np.mean(polarity)),
        min=float(np.min(polarity)),
        last=newest.polarity,
        labels=labels,
    )


def score_requests(
    requests: Sequence[ChurnRiskRequest],
    schema: FeatureSchema,
    score: ChurnScorer,
    scored_texts: Mapping[str, TextSentiment],
    versions: ModelVersions,
    now: dt.datetime | None = None,
    check: bool = True,
    evidence: EvidenceFinder | None = None,
    aspects: Mapping[str, str] | None = None,
    survival: SurvivalScorer | None = None,
) -> list[ChurnRiskResponse]:
    """Churn risk for validated requests, in request order; requests without `as_of` are scored as of `now`.

    Args:
        schema: the churn model's feature schema.
        score: features (one row per request, in order) -> `ScoredRows` (`churn_risk`, `risk_band`, `reasons`,
            `base_value`, `other_contribution` per row).
        scored_texts: the sentiment of every (stripped) event text in the requests.
        versions: stamped on every answer.
        now: the as_of of requests without one (default: the current time). Requests sharing an as_of are
            scored in one call of the feature engine and the model.
        check: run `check_against_schema` first (the service has already run it, before scoring texts).
        evidence: finds the events behind each reason of the requests that ask for it (built from `schema`
            when not given: the service keeps one).
        aspects: what every (normalised) event text is about, by the churn model's aspect model; needed when
            `schema.aspects` is not empty.
        survival: the same features -> time to churn (`models.survival.SurvivalModel.answers`), when the service
            has a survival model.
    """
    if check:
        check_against_schema(requests, schema)
    if schema.aspects and aspects is None:
        raise ValueError("this churn model counts texts per aspect: give `aspects` (what each text is about)")
    evidence = evidence or EvidenceFinder(schema)

    def polarity(texts: Sequence[str]) -> np.ndarray:
        return np.array([scored_texts[text].polarity for text in texts], dtype="float64")

    now = now or dt.datetime.now(dt.UTC)
    groups: dict[dt.datetime, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.as_of or now, []).append(i)
    answers: list[ChurnRiskResponse | None] = [None] * len(requests)
    for as_of, positions in groups.items():
        group = [requests[i] for i in positions]
        # Rows are keyed by position, not by customer id: concurrent requests may ask about the same customer,
        # and the engine gives one row per key. With `customers` given, its rows come out in this order.
        keys = [str(k) for k in range(len(group))]
        events = events_frame(group, schema, keys)
        if schema.use_sentiment and SENTIMENT not in events.columns:
            events = add_sentiment(events, polarity)
        if schema.aspects and ASPECT not in events.columns:
            events = add_aspects(events, lambda texts: [aspects[text] for text in texts])
        features = build_customer_features(
            events, as_of, schema, customers=customers_frame(group, schema, keys)
        )
        scored = score(features)
        risks = np.asarray(scored.churn_risk, dtype="float64")
        bands = [str(band) for band in scored.risk_band]
        reasons = list(scored.reasons)
        wanted = {key: reasons[row] for row, key in enumerate(keys) if group[row].evidence}
        if wanted:
            evidence.attach(events, as_of, wanted)
        times = time_to_churn(survival(features)) if survival is not None else [None] * len(group)
        base = np.asarray(scored.base_value, dtype="float64")
        other = np.asarray(scored.other_contribution, dtype="float64")
        for row, (i, request) in enumerate(zip(positions, group, strict=True)):
            answers[i] = ChurnRiskResponse(
                customer_id=request.customer.customer_id,
                as_of=as_of,
                churn_risk=float(risks[row]),
                risk_band=bands[row],
                reasons=[Reason.model_validate(reason) for reason in reasons[row]],
                base_value=float(base[row]),
                other_contribution=float(other[row]),
                sentiment=sentiment_summary(request, scored_texts),
                time_to_churn=times[row],
                model_versions=versions,
            )
    return [answer for answer in answers if answer is not None]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_NAT = np.iinfo(np.int64).min


def _naive_utc_ns(stamps: Sequence[dt.datetime | None]) -> np.ndarray:
    """Aware datetimes (or None) as naive-UTC `datetime64[ns]`, the loaders' canonical time column.

    Exact integer arithmetic (microseconds since the epoch), no float seconds.
    """
    micros = [_NAT if s is None else (s - _EPOCH) // _MICROSECOND for s in stamps]
    out = np.array(micros, dtype=np.int64)
    present = out != _NAT
    out[present] *= 1000
    return out.view("datetime64[ns]")
