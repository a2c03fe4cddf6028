"""The churnsense BentoML service: churn risk and sentiment from one process, both models loaded once.

    bentoml serve serving.service:ChurnSense          # from source, models from the BentoML store
    churnsense build && churnsense serve              # import the MLflow champions, build the Bento, serve it

Endpoints (JSON, schemas in `serving.schemas`):
    POST /sentiment          {"texts": [...]}                          -> labels and class probabilities
    POST /churn_risk         {"customer": {...}, "events": [...], "as_of"?} -> calibrated risk, band, reasons
                             {"customer_id": "...", "as_of"?}         -> the same, history from the event store
    POST /churn_risk_batch   {"customers": [<churn_risk request>, ...]} -> one answer per customer
    POST /events             {"events": [{"customer_id": ..., "timestamp": ..., "type": ...}, ...]} -> stored
    POST /classify_texts     {"texts": [...]} -> the raw forward pass, with BentoML's adaptive batching (only
                             with CHURNSENSE_SENTIMENT_BATCHING=bentoml; otherwise nothing calls it: a 404)

The event store (`store`, CHURNSENSE_STORE_URL) is optional: without it, by-id requests and /events are 400s.

Concurrent requests share work: churn requests are scored together (one feature-engine and model call), and
texts share forward passes, batched in the worker (default) or through `/classify_texts` with BentoML's
adaptive batching (CHURNSENSE_SENTIMENT_BATCHING=bentoml; a second HTTP request per call, measured at about
half the throughput on 2 cores: see serving.batching and benchmarks/serving.py).

Bad input is a 400 naming the field (pydantic `ValidationError`, which BentoML maps to 400); nothing a customer
wrote is logged unless CHURNSENSE_LOG_TEXT=true. Settings: `serving.settings`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import time

import bentoml

from churnsense.environment import OFFLINE, set_defaults
from serving.answers import ChurnRiskBatchResponse, ChurnRiskResponse
from serving.batching import MicroBatcher
from serving.connections import BalanceConnections
from serving.event_store import EventStore
from serving.guard import RequestGuard, inside
from serving.loading import load_served, paired
from serving.metrics import ServiceMetrics
from serving.schemas import (
    AspectResult,
    ChurnRiskBatchRequest,
    ChurnRiskRequest,
    ClassifyTextsRequest,
    Customer,
    Event,
    EventsRequest,
    EventsResponse,
    SentimentRequest,
    SentimentResponse,
    SentimentResult,
    StoredEvent,
    TextSentiment,
    publish_model_fields,
)
from serving.scoring import request_error
from serving.settings import current_settings

logger = logging.getLogger(__name__)

CHURN_MODEL = "churnsense-churn"
SENTIMENT_MODEL = "churnsense-sentiment"
ASPECT_MODEL = "churnsense-aspects"
SURVIVAL_MODEL = "churnsense-survival"

# Decorator arguments are fixed when the class is defined, so these few settings are read then.
_SETTINGS = current_settings()


@bentoml.service(
    name="churnsense",
    workers=_SETTINGS.workers,
    traffic={"timeout": _SETTINGS.timeout_s},
    # With CHURNSENSE_SENTIMENT_BATCHING=bentoml the endpoints reach `classify_texts` through BentoML's
    # in-process client, which (1.4.39) closes and replaces its HTTP session every 100 requests even while
    # other requests are in flight on it: under load those fail with 500 "Cannot write to closing
    # transport". Never recycle the session.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class ChurnSense:
    """Both models, loaded once per worker from the BentoML model store (the Bento pins their versions)."""

    churn_ref = bentoml.models.BentoModel(f"{CHURN_MODEL}:latest")
    sentiment_ref = bentoml.models.BentoModel(f"{SENTIMENT_MODEL}:latest")
    # Optional: with an aspect model in the store (and so in the Bento), evidence texts say what they are about
    # and /sentiment answers `"aspects": true`.
    aspects_ref = (
        bentoml.models.BentoModel(f"{ASPECT_MODEL}:latest") if paired(CHURN_MODEL, ASPECT_MODEL) else None
    )
    # Optional: with a survival model, every churn answer says when the customer is likely to leave.
    survival_ref = (
        bentoml.models.BentoModel(f"{SURVIVAL_MODEL}:latest") if paired(CHURN_MODEL, SURVIVAL_MODEL) else None
    )

    def __init__(self) -> None:
        from features.evidence import EvidenceFinder
        from models.phrases import PhraseFinder
        from serving.threads import limit_this_thread, limit_torch_threads

        set_defaults(OFFLINE)
        # Rejected requests: one escaped WARNING line each, rate-limited, no traceback (serving.request_log).
        from serving import request_log

        request_log.install()
        # The worker is this code's entry point: BentoML's logging config leaves the root logger at WARNING.
        for name in ("serving", "models"):
            logging.getLogger(name).setLevel(logging.INFO)
        self.settings = current_settings()
        limit_torch_threads(self.settings.torch_threads)
        limit_this_thread(self.settings.threads)
        started = time.perf_counter()
        # On an instance, a `BentoModel` attribute is the resolved store entry (`bentoml.Model`).
        served = load_served(
            self.churn_ref,
            self.sentiment_ref,
            self.aspects_ref,
            self.survival_ref,
            self.settings.torch_threads,
        )
        self.churn_model, self.sentiment_model = served.churn, served.sentiment
        self.aspects, self.survival, self.versions = served.aspects, served.survival, served.versions
        self.evidence = EvidenceFinder(self.churn_model.schema)
        self.phrases = (
            PhraseFinder(self.sentiment_model.labels) if self.churn_model.schema.use_sentiment else None
        )
        if self.aspects is not None:
            from models.aspects import AspectCache

            self.aspect_cache = AspectCache(self.aspects)  # evidence quotes the same texts again and again
        self.aspect_version = self.versions.aspects
        publish_model_fields(self.churn_model.schema)  # /docs.json lists the fields the model reads
        schema = self.churn_model.schema
        self.metrics = ServiceMetrics(self.versions, (*schema.profile_numeric, *schema.profile_categorical))
        self.store = EventStore.from_environment()
        self._churn_batcher = MicroBatcher(
            self._score_batch,
            max_batch=self.settings.churn_max_batch,
            max_latency_s=self.settings.churn_max_latency_ms / 1000,
            overloaded=_overloaded,
            # pandas and scikit-learn hold the GIL: on the loop, with a 1 ms pause to gather the requests
            # that arrived meanwhile, batches grow ~3x under load (benchmarks/serving.py). A lone request (no
            # other churn request inside the worker) does not wait.
            in_thread=False,
            settle_s=0.001,
            settle_if=lambda: inside("/churn_risk", "/churn_risk_batch") > 1,
        )
        self._text_batcher = MicroBatcher(
            self._classify_chunks,
            max_batch=self.settings.sentiment_max_batch,
            size=len,
            max_latency_s=self.settings.sentiment_max_latency_ms / 1000,
            overloaded=_overloaded,
        )
        self._warm_up()
        # Everything loaded by now (both models, BentoML, pandas, scikit-learn) lives as long as the worker:
        # take it out of the garbage collector's reach. Otherwise every full collection scans it all again:
        # under 32 clients that was ~10% of a worker's CPU and the ~400 ms stalls behind /churn_risk's p99
        # (with the freeze: 715 -> 814 req/s, p99 408 -> 117 ms).
        gc.collect()
        gc.freeze()
        logger.info(
            "loaded churn v%s, sentiment v%s, aspects v%s, survival v%s in %.1fs",
            self.versions.churn,
            self.versions.sentiment,
            self.versions.aspects,
            self.versions.survival,
            time.perf_counter() - started,
        )

    # --- endpoints --------------------------------------------------------------------------------------

    @bentoml.api(
        batchable=True,
        max_batch_size=_SETTINGS.sentiment_max_batch,
        max_latency_ms=_SETTINGS.sentiment_max_latency_ms,
        input_spec=ClassifyTextsRequest,
    )
    def classify_texts(self, texts: list[str]) -> list[TextSentiment]:
        """Label, probabilities and polarity per text; BentoML batches concurrent calls (adaptive batching).

        /sentiment and /churn_risk go through it when CHURNSENSE_SENTIMENT_BATCHING=bentoml."""
        from serving.threads import limit_this_thread

        limit_this_thread(self.settings.threads)
        return self._classify(texts)

    @bentoml.api(input_spec=SentimentRequest)
    async def sentiment(self, texts: list[str], aspects: bool = False) -> SentimentResponse:
        """Sentiment of each text: the winning label, its probability and every class probability; with
        `"aspects": true`, what each text is about too."""
        if aspects and self.aspects is None:
            raise request_error(
                "SentimentRequest",
                [(("aspects",), "this Bento has no aspect model (churnsense train aspects, promote, build)")],
            )
        scored = await self._classify_batched(texts)
        self.metrics.texts([s.label for s in scored], "sentiment")
        about: list[AspectResult | None] = [None] * len(texts)
        if aspects:
            # In a thread: the loop keeps serving. Each text's aspect is batch invariant (`models.aspects`).
            predicted = await asyncio.to_thread(self._aspects_of, texts)
            about = [AspectResult.model_validate(item) for item in predicted]
        return SentimentResponse(
            results=[
                SentimentResult(label=s.label, score=s.score, scores=s.scores, aspect=aspect)
                for s, aspect in zip(scored, about, strict=True)
            ],
            model_version=self.versions.sentiment,
            scoring_id=self.versions.sentiment_scoring_id,
            aspect_model_version=self.aspect_version,
        )

    def _evidence_aspects(self, texts: list[str]) -> list[str]:
        from serving.threads import limit_this_thread

        limit_this_thread(self.settings.threads)
        return self.aspect_cache.aspects(texts)

    def _aspects_of(self, texts: list[str]) -> list[dict]:
        from serving.threads import limit_this_thread

        limit_this_thread(self.settings.threads)
        return self.aspects.predict(texts).to_dicts()

    @bentoml.api(input_spec=ChurnRiskRequest)
    async def churn_risk(
        self,
        customer: Customer | None,
        customer_id: str | None,
        events: list[Event],
        as_of: dt.datetime | None,
        evidence: bool = True,
        phrases: bool = False,
    ) -> ChurnRiskResponse:
        """Calibrated churn risk of one customer as of `as_of` (default now), with reasons (and the events
        behind each) and text sentiment: sent in full, or by `customer_id` alone from the event store."""
        request = ChurnRiskRequest.model_construct(
            customer=customer,
            customer_id=customer_id,
            events=events,
            as_of=as_of,
            evidence=evidence,
            phrases=phrases,
        )
        (answer,) = await self._score([request])
        return answer

    @bentoml.api(input_spec=ChurnRiskBatchRequest)
    async def churn_risk_batch(self, customers: list[ChurnRiskRequest]) -> ChurnRiskBatchResponse:
        """`/churn_risk` for up to CHURNSENSE_BATCH_MAX_CUSTOMERS customers in one call."""
        return ChurnRiskBatchResponse(results=await self._score(customers))

    @bentoml.api(input_spec=EventsRequest)
    async def events(self, events: list[StoredEvent]) -> EventsResponse:
        """Store interactions as they happen (idempotent by event_id, else by content); committed before the
        answer, so the next by-id score sees them. All of them are stored, or none."""
        stored, duplicates = await asyncio.to_thread(self._store().append, events)
        return EventsResponse(stored=stored, duplicates=duplicates)

    # --- helpers ----------------------------------------------------------------------------------------

    def _store(self) -> EventStore:
        if self.store is None:
            raise request_error(
                "ChurnRiskRequest",
                [(("customer_id",), "this service has no event store (set CHURNSENSE_STORE_URL)")],
            )
        return self.store

    async def _resolve(self, requests: list[ChurnRiskRequest]) -> list[ChurnRiskRequest]:
        """By-id requests replaced by full ones read from the event store (404 for an id it does not hold)."""
        if all(request.customer is not None for request in requests):
            return requests
        store = self._store()
        now = dt.datetime.now(dt.UTC)
        wanted = [(r.customer_id, r.as_of or now) for r in requests if r.customer is None]
        # On the loop, as the churn scoring is: a few indexed reads (~1.5 ms). In a thread they waited for the GIL
        # behind the loop's own work and took ~9 ms more at one client (benchmarks/store.py --serving).
        found = store.requests(wanted, self.churn_model.schema)
        out = []
        for request in requests:
            if request.customer is None:
                full = found[(request.customer_id, request.as_of or now)]
                # One stored request may serve several asking for the same customer: each keeps its own options.
                request = full.model_copy(update={"evidence": request.evidence, "phrases": request.phrases})
            out.append(request)
        return out

    def _classify(self, texts: list[str]) -> list[TextSentiment]:
        if self.settings.log_text:
            logger.info("classifying texts: %r", texts)
        proba = self.sentiment_model.predict_proba(texts)
        polarity = self.sentiment_model.scores_from_proba(proba)
        labels = self.sentiment_model.labels
        best = proba.argmax(axis=1)
        return [
            TextSentiment(
                label=labels[b],
                score=float(row[b]),
                scores={label: float(p) for label, p in zip(labels, row, strict=True)},
                polarity=float(pol),
            )
            for b, row, pol in zip(best, proba, polarity, strict=True)
        ]

    async def _classify_batched(self, texts: list[str]) -> list[TextSentiment]:
        """Concurrent requests' texts share forward passes: in this worker's queue (default) or through
        BentoML's adaptive batching of `/classify_texts` (CHURNSENSE_SENTIMENT_BATCHING=bentoml)."""
        if not texts:
            return []
        if self.settings.sentiment_batching == "inprocess":
            return await self._text_batcher.submit(texts)
        raw = await self.to_async.classify_texts(texts=texts)
        return [
            item if isinstance(item, TextSentiment) else TextSentiment.model_validate(item) for item in raw
        ]

    def _classify_chunks(self, chunks: list[list[str]]) -> list[list[TextSentiment]]:
        """Worker thread: several requests' texts in one forward pass, split back per request."""
        from serving.threads import limit_this_thread

        limit_this_thread(self.settings.threads)
        scored = self._classify([text for chunk in chunks for text in chunk])
        out, start = [], 0
        for chunk in chunks:
            out.append(scored[start : start + len(chunk)])
            start += len(chunk)
        return out

    async def _score(self, requests: list[ChurnRiskRequest]) -> list[ChurnRiskResponse]:
        """Model checks (400 before any work), text sentiment (batched), then churn (micro-batched)."""
        from serving.scoring import check_against_schema, request_texts

        requests = await self._resolve(requests)
        check_against_schema(requests, self.churn_model.schema)
        texts = [text for request in requests for text in request_texts(request)]  # normalised once per call
        distinct = list(dict.fromkeys(texts))
        scored = dict(zip(distinct, await self._classify_batched(distinct), strict=True))
        about: dict[str, str] = {}
        if self.churn_model.schema.aspects and distinct:  # the churn features count negative texts per aspect
            about = dict(
                zip(distinct, await asyncio.to_thread(self._evidence_aspects, distinct), strict=True)
            )
        answers = list(
            await asyncio.gather(*(self._churn_batcher.submit((r, scored, about)) for r in requests))
        )
        await self._annotate_evidence(answers, [bool(r.phrases) for r in requests])
        self.metrics.churn_answers(requests, answers)
        self.metrics.texts([scored[t].label for t in texts], "churn_risk")
        return answers

    async def _annotate_evidence(self, answers: list[ChurnRiskResponse], phrases: list[bool]) -> None:
        """Each evidence event quoting a scored text gets, with an aspect model, what it is about
        (`models.aspects`) and, when its request asked for `phrases`, the phrase that drove its sentiment
        (`models.phrases`), as the batch job adds them. The texts without each phrase are scored through the
        same batched forward passes as every other text, once per distinct text (cached)."""
        if self.phrases is None and self.aspects is None:
            return

        from models.phrases import quotes_scored_text

        # Each quoting event once, with whether its request asked for phrases.
        quoted = [
            (event, wanted)
            for answer, wanted in zip(answers, phrases, strict=True)
            for reason in answer.reasons
            if reason.evidence is not None
            for event in reason.evidence.events
            if quotes_scored_text(event.model_extra or {})
        ]
        if not quoted:
            return
        explained = [event for event, wanted in quoted if wanted]
        if self.phrases is not None and explained:
            texts = [event.model_extra["text"] for event in explained]  # type: ignore[index]
            needed = self.phrases.to_score(texts)
            if needed:
                import numpy as np

                labels = self.phrases.labels
                proba = [[s.scores[label] for label in labels] for s in await self._classify_batched(needed)]
                self.phrases.learn(needed, np.asarray(proba, dtype=np.float64))
            for event, phrase in zip(explained, self.phrases.find(texts), strict=True):
                event.phrase = phrase  # an extra field, as `text` and `sentiment` are
        if self.aspects is not None:
            texts = [event.model_extra["text"] for event, _ in quoted]  # type: ignore[index]
            for (event, _), aspect in zip(
                quoted, await asyncio.to_thread(self._evidence_aspects, texts), strict=True
            ):
                event.aspect = aspect

    def _score_batch(
        self, items: list[tuple[ChurnRiskRequest, dict[str, TextSentiment], dict[str, str]]]
    ) -> list[ChurnRiskResponse]:
        """Worker thread: concurrent requests (those sharing an as_of, and all without one) scored together."""
        from serving.scoring import score_requests
        from serving.threads import limit_this_thread

        limit_this_thread(self.settings.threads)
        scored: dict[str, TextSentiment] = {}
        about: dict[str, str] = {}
        for _, texts, aspects in items:
            scored.update(texts)
            about.update(aspects)
        return score_requests(
            [request for request, _, _ in items],
            self.churn_model.schema,
            lambda features: self.churn_model.score_rows(features, top_k=self.settings.top_reasons),
            scored,
            self.versions,
            check=False,  # `_score` checked these requests before their texts were scored
            evidence=self.evidence,
            aspects=about,
            survival=self.survival.answers if self.survival is not None else None,
        )

    def _warm_up(self) -> None:
        """Run both models once so the first real request does not pay for lazy initialisation."""
        schema = self.churn_model.schema
        as_of = dt.datetime.now(dt.UTC)
        texts = ["thanks, that fixed it", "still broken and nobody answers"]
        scored = dict(zip(texts, self._classify(texts), strict=True))
        about = dict(zip(texts, self._evidence_aspects(texts), strict=True)) if schema.aspects else {}
        profile = {name: None for name in (*schema.profile_numeric, *schema.profile_categorical)}
        types = [*schema.event_types, "other"]
        events = [
            {"timestamp": as_of - dt.timedelta(days=1 + i), "type": kind, "text": texts[i % 2]}
            | {name: float(i) for name in schema.value_columns}
            for i, kind in enumerate(types)
        ]
        request = ChurnRiskRequest.model_validate(
            {"customer": {"customer_id": "warm-up", **profile}, "events": events, "as_of": as_of}
        )
        for _ in range(3):
            self._score_batch([(request, scored, about)])


# Connections opened in a burst land unevenly on the workers and stay there: even them out (serving.connections).
# BentoML's own client calling /classify_texts (CHURNSENSE_SENTIMENT_BATCHING=bentoml) is left alone.
ChurnSense.add_asgi_middleware(
    BalanceConnections, enabled=_SETTINGS.balance_connections, exclude_paths=("/classify_texts",)
)
# Wrong content types (415) and oversized bodies (413) are answered before BentoML reads them (serving.guard).
# /classify_texts is an internal hop: only BentoML's own client calls it, and only in `bentoml` batching mode.
ChurnSense.add_asgi_middleware(
    RequestGuard,
    paths=("/sentiment", "/churn_risk", "/churn_risk_batch", "/events", "/classify_texts"),
    max_body_bytes=int(_SETTINGS.max_body_mb * 1024 * 1024),
    hidden=() if _SETTINGS.sentiment_batching == "bentoml" else ("/classify_texts",),
    by_id=("/churn_risk", "/churn_risk_batch", "/events"),
)


def _overloaded() -> Exception:
    from bentoml.exceptions import ServiceUnavailable

    return ServiceUnavailable("the service is overloaded; retry later")
