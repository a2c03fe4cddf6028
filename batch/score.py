"""`score_customers`: the batch job's entry point (the local engine by default, Spark when asked)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batch.local import run_local
from batch.output import BatchSummary
from batch.plan import (
    DEFAULT_CHUNK_CUSTOMERS,
    DEFAULT_CHURN_MODEL,
    BatchError,
    check_evidence_options,
    folder_digest,
    make_plan,
    parse_as_of,
    survival_source,
)
from batch.workers import churn_model, sentiment_scorer_in_use, set_tracking_uri
from features.engine import to_timestamp_ns
from features.spec import load_spec
from models.catalog import absolute_tracking_uri, resolve_model_uri

logger = logging.getLogger(__name__)


# --- entry point ------------------------------------------------------------------------------------------------


def score_customers(
    spec_path: str | Path,
    as_of: str | dt.date,
    out: str | Path,
    engine: str = "local",
    model_uri: str | None = None,
    *,
    master: str = "local[*]",
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    workers: int = 2,
    top_k: int = 5,
    sentiment_model: str | None = None,
    cache_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    progress: bool = False,
    keep_work: bool = False,
    text_scorer: Callable[[Sequence[str]], Any] | None = None,
    ineligible: str = "exclude",
    evidence: bool = False,
    aspect_model: str | None = None,
    phrases: bool = False,
    survival_model: str | None = None,
) -> BatchSummary:
    """Score every customer of a spec as of a date and write one Parquet row per customer.

    Args:
        spec_path: dataset spec YAML (its customers and events sections; CSV or Parquet, globs or folders).
        as_of: the date features describe (YYYY-MM-DD or a date).
        out: output Parquet file (local engine) or folder (Spark engine); rejected input rows go to
            `<out stem>.rejects.parquet` beside it.
        engine: "local" (process pool over on-disk buckets) or "spark".
        model_uri: churn model; default the registry champion `models:/churnsense-churn@champion`.
        master: Spark master URL (Spark engine only).
        chunk_customers: customers per bucket: bounds each worker's memory.
        workers: processes of the local engine.
        top_k: reasons per customer.
        sentiment_model: where to load the sentiment model the churn model was trained with (default: where
            training found it); another model is refused. Only loaded when a text is not in the cache.
        cache_dir: root of the sentiment cache (default `CHURNSENSE_CACHE_DIR` or ~/.cache/churnsense).
        work_dir: where the local engine keeps buckets between a crash and a rerun (default beside `out`).
        progress: show progress bars.
        keep_work: keep the local engine's bucket files after success (debugging).
        text_scorer: an already loaded sentiment classifier of the churn model's sentiment model (its digest is
            checked) to use for texts the cache lacks, or a function wrapping one (tests count calls with it);
            local engine only: Spark workers load the model themselves.
        ineligible: customers who were not customers at `as_of` (signed up later, churned before): "exclude"
            (left out, counted in the summary) or "flag" (kept with `eligible=false`, `ineligible_reason` and
            no risk).
        evidence: each reason also lists the events behind it (`features.evidence`, as JSON in the reason's
            `evidence` field): the events' texts are read too, so it costs time and space; off by default.
        aspect_model: with `evidence`, each quoted text also says what it is about (`models.aspects`), by this
            model (an alias is pinned to its version now).
        phrases: with `evidence`, each quoted text also carries the phrase that drove its sentiment (about 20
            extra sentiment passes per distinct text).
        survival_model: the survival model that adds time to churn (`expected_days_to_churn`, `survival_30d`,
            ...): default the registry champion if it fits the churn model (as `churnsense build` chooses);
            "none" for no time to churn; a named model that does not fit is refused.
    Returns:
        A `BatchSummary`; `.render()` prints it, `.top_risk(10)` lists the riskiest customers with reasons.
    """
    started = time.perf_counter()
    if engine not in ("local", "spark"):
        raise BatchError(f"--engine: {engine!r} is not one of local, spark")
    check_evidence_options(evidence, aspect_model, phrases)  # before anything loads
    spec = load_spec(spec_path)
    as_of_date = parse_as_of(as_of)
    to_timestamp_ns(as_of_date)
    tracking = absolute_tracking_uri()
    set_tracking_uri(tracking)
    uri, _ = resolve_model_uri(model_uri or DEFAULT_CHURN_MODEL)
    model = churn_model(uri, tracking, folder_digest(Path(uri)) if Path(uri).exists() else "")
    plan = make_plan(
        spec,
        as_of_date,
        model,
        uri,
        chunk_customers=chunk_customers,
        top_k=top_k,
        sentiment_model=sentiment_model,
        cache_dir=cache_dir,
        ineligible=ineligible,
        evidence=evidence,
        aspect_model=resolve_model_uri(aspect_model)[0] if aspect_model else None,
        phrases=phrases,
        survival=survival_source(model, survival_model),
    )
    injected = text_scorer is not None and plan.sentiment is not None
    if injected:
        if engine == "spark":
            raise BatchError(
                "text_scorer: the Spark engine loads the sentiment model in its workers; pass a URI"
            )
        if getattr(text_scorer, "digest", None) is not None:
            from models.lineage import check_lineage

            check_lineage(plan.sentiment.lineage, text_scorer, what="text_scorer")
    logger.info(
        "scoring %s as of %s with %s (v%s; time to churn: %s): %d bucket(s), engine %s",
        spec.source,
        as_of_date,
        uri,
        plan.model_version,
        plan.survival_uri or "none",
        plan.n_buckets,
        engine,
    )
    if engine == "spark":
        from batch.spark import run_spark

        summary = run_spark(plan, out, master=master, progress=progress, started=started)
    else:
        in_use = (
            sentiment_scorer_in_use(plan.sentiment, text_scorer) if injected else contextlib.nullcontext()
        )
        with in_use:
            summary = run_local(
                plan,
                out,
                workers=workers,
                work_dir=work_dir,
                progress=progress,
                keep_work=keep_work,
                started=started,
            )
    if summary.unaccounted_customer_rows:  # a defect, never expected: say so loudly, keep what was written
        logger.error(
            "%d customer rows were read but neither scored, counted ineligible nor rejected",
            summary.unaccounted_customer_rows,
        )
    return summary


def score_store(url: str, as_of: str | dt.date, out: str | Path, **options: Any) -> BatchSummary:
    """`score_customers` over everything in the event store at `url`, on either engine.

    The store is extracted to Parquet files and a spec in a folder beside `out` (`store.read.extract`), read by
    the same loaders and features as any data set, and removed afterwards, failure or not.
    """
    import shutil
    import uuid

    from store.ingest import store_layout
    from store.schema import open_store, safe_url

    engine = open_store(url)
    layout = store_layout(engine)
    if layout is None:
        raise BatchError(f"store {safe_url(url)} is empty: load it first (churnsense ingest --spec ...)")
    out = Path(out)
    folder = out.parent / f".{out.name}.store-{uuid.uuid4().hex[:8]}"
    try:
        from store.read import extract

        tick = time.perf_counter()
        spec_path = extract(engine, layout, folder)
        logger.info("extracted %s in %.1fs", safe_url(url), time.perf_counter() - tick)
        return score_customers(spec_path, as_of, out, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
