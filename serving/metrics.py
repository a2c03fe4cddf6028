"""The service's own Prometheus series on /metrics, beside BentoML's request counts and latencies.

    churnsense_model_info{churn, sentiment, aspects, survival} 1        the model versions this worker serves
    churnsense_churn_answers_total{risk_band, churn_model}               churn answers per risk band
    churnsense_texts_total{label, endpoint, sentiment_model}             texts classified, per sentiment label
    churnsense_profile_fields_total{field, state}                        profile fields per answer, "sent" or
                                                                          "missing" (null): the missing rate

Made in the worker (`ChurnSense.__init__`), after BentoML has set up Prometheus' multiprocess directory: series
from every worker add up on /metrics. Rates and shares are for the dashboard (e.g. `rate(...{state="missing"})
/ rate(...)`): a band or label whose share moves is the live view of what `churnsense monitor` reports nightly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


class ServiceMetrics:
    def __init__(self, versions: Any, profile_fields: Sequence[str]) -> None:
        import prometheus_client as prometheus  # only now: the multiprocess directory is set

        self.versions = versions
        self.profile_fields = tuple(profile_fields)
        info = prometheus.Gauge(
            "churnsense_model_info",
            "the model versions this worker serves (value 1)",
            ["churn", "sentiment", "aspects", "survival"],
            multiprocess_mode="max",
        )
        info.labels(versions.churn, versions.sentiment, versions.aspects or "", versions.survival or "").set(
            1
        )
        self._answers = prometheus.Counter(
            "churnsense_churn_answers", "churn answers per risk band", ["risk_band", "churn_model"]
        )
        self._texts = prometheus.Counter(
            "churnsense_texts",
            "texts classified, per sentiment label",
            ["label", "endpoint", "sentiment_model"],
        )
        self._fields = prometheus.Counter(
            "churnsense_profile_fields",
            "profile fields the churn model reads, per answer: sent, or missing (null)",
            ["field", "state"],
        )

        # Each labelled series once: `labels()` validates and locks on every call (~10 us, a request asks ~8).
        self._series: dict[tuple[Any, ...], Any] = {}

    def _one(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def churn_answers(self, requests: Sequence[Any], answers: Sequence[Any]) -> None:
        for band, n in Counter(answer.risk_band for answer in answers).items():
            self._one(self._answers, band, self.versions.churn).inc(n)
        counts: Counter[tuple[str, str]] = Counter()
        for request in requests:
            profile = request.customer.profile_fields() if request.customer is not None else {}
            for name in self.profile_fields:
                counts[name, "missing" if profile.get(name) is None else "sent"] += 1
        for (name, state), n in counts.items():
            self._one(self._fields, name, state).inc(n)

    def texts(self, labels: Sequence[str], endpoint: str) -> None:
        for label, n in Counter(labels).items():
            self._one(self._texts, label, endpoint, self.versions.sentiment).inc(n)
