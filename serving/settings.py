"""Service settings, read from the environment once per process (STYLE rule 5) with pydantic-settings.

Every limit that turns bad input into a 400 lives here, so an operator can tune it without a code change:

| variable | default | meaning |
|---|---|---|
| CHURNSENSE_MAX_EVENTS | 1000 | events in one `/churn_risk` customer |
| CHURNSENSE_MAX_TEXTS | 64 | texts in one `/sentiment` request, or event texts in one customer |
| CHURNSENSE_MAX_TEXT_CHARS | 5000 | characters in one text |
| CHURNSENSE_BATCH_MAX_CUSTOMERS | 1000 | customers in one `/churn_risk_batch` request |
| CHURNSENSE_BATCH_MAX_EVENTS | 100000 | events over all customers of one `/churn_risk_batch` request |
| CHURNSENSE_BATCH_MAX_TEXTS | 256 | event texts over all customers of one `/churn_risk_batch` request (see below) |
| CHURNSENSE_MAX_PROFILE_FIELDS | 200 | profile fields of one customer |
| CHURNSENSE_MAX_BODY_MB | 32 | request body size; larger bodies are answered 413 before they are read |
| CHURNSENSE_TOP_REASONS | 5 | reasons returned with each churn risk |
| CHURNSENSE_LOG_TEXT | false | log request texts (off: nothing a customer wrote reaches the logs) |
| CHURNSENSE_THREADS | 1 | OpenMP/BLAS threads per worker for feature building and gradient boosting |
| CHURNSENSE_TORCH_THREADS | 1 | torch intra-op threads per worker (see below) |
| CHURNSENSE_WORKERS | 2 | BentoML worker processes (each loads both models, ~0.7 GB with MiniLM) |
| CHURNSENSE_CHURN_MAX_BATCH | 256 | most customers scored in one call (concurrent requests are coalesced) |
| CHURNSENSE_CHURN_MAX_LATENCY_MS | 5000 | a churn request queued longer than this is answered 503 |
| CHURNSENSE_SENTIMENT_BATCHING | inprocess | `inprocess` (texts batched in the worker) or `bentoml` (via `/classify_texts`) |
| CHURNSENSE_SENTIMENT_MAX_BATCH | 64 | most texts in one forward pass |
| CHURNSENSE_SENTIMENT_MAX_LATENCY_MS | 5000 | texts queued longer than this are answered 503 (both modes) |
| CHURNSENSE_TIMEOUT_S | 60 | request timeout of the service |
| CHURNSENSE_BALANCE_CONNECTIONS | true | a worker holding more than its share of keep-alive connections asks a client to reconnect (`serving.connections`) |

Work per request: a worker scores texts one forward pass at a time, so one request's texts hold back every
other request's on that worker. MiniLM int8 on one thread scores ~135 full-width (64-token) texts/s (measured:
`benchmarks/sentiment.py --threads 1 --lengths 64 --batch-sizes 64`), so the caps bound one request's text work
to ~0.5 s (`/sentiment`, 64 texts) and ~1.9 s (`/churn_risk_batch`, 256 texts): well inside the 5 s a queued
request waits before a 503. The earlier 2,000 held a worker for ~15 s and starved `/sentiment` into 503s.

Threads and workers: two workers with one torch thread each keep both cores busy without OpenMP threads
waiting on each other. Measured on the shared 2-core machine, MiniLM with 2 torch threads ran at 22 texts/s
against 112 with 1 thread whenever other processes held a core, and the service's own event loop and churn
thread are such "other" work.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnsense.environment import PREFIX
from churnsense.errors import UserError


class ServingSettings(BaseSettings):
    """Limits and tuning knobs of the service; each field is read from `CHURNSENSE_<FIELD>` (unset: default)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    max_events: int = Field(1000, ge=1, le=100_000)
    max_texts: int = Field(64, ge=1, le=10_000)
    max_text_chars: int = Field(5000, ge=1, le=1_000_000)
    batch_max_customers: int = Field(1000, ge=1, le=100_000)
    batch_max_events: int = Field(100_000, ge=1, le=10_000_000)
    batch_max_texts: int = Field(256, ge=1, le=1_000_000)
    max_profile_fields: int = Field(200, ge=1, le=10_000)
    max_body_mb: float = Field(32, gt=0, le=4096)
    top_reasons: int = Field(5, ge=0, le=100)
    log_text: bool = False
    threads: int = Field(1, ge=1, le=256)
    torch_threads: int = Field(1, ge=1, le=256)
    workers: int = Field(2, ge=1, le=64)
    churn_max_batch: int = Field(256, ge=1, le=100_000)
    churn_max_latency_ms: int = Field(5000, ge=10, le=600_000)
    sentiment_batching: Literal["inprocess", "bentoml"] = "inprocess"
    sentiment_max_batch: int = Field(64, ge=2, le=4096)
    sentiment_max_latency_ms: int = Field(5000, ge=10, le=600_000)
    timeout_s: int = Field(60, ge=1, le=3600)
    balance_connections: bool = True

    @classmethod
    def from_env(cls) -> ServingSettings:
        """Settings from the `CHURNSENSE_*` variables of this process.

        Raises:
            UserError: naming the variable when a value does not parse or is out of range.
        """
        try:
            return cls()
        except ValidationError as error:
            problems = "; ".join(
                f"{PREFIX}{str(item['loc'][0]).upper()}: {item['msg']}" for item in error.errors()
            )
            raise UserError(f"service settings: {problems}") from None


@functools.cache
def current_settings() -> ServingSettings:
    """The process's settings, read on first use (not at import) and then fixed."""
    return ServingSettings.from_env()
