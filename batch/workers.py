"""What each process keeps for the whole run: models loaded once, and one thread per worker.

Pool workers and Spark Python workers call `mark_worker()` at start-up: from then on they use one BLAS/OpenMP
and torch thread (the other cores run other workers). Models are cached per process, keyed by where they came
from (tracking store and URI) or by content (sentiment `scoring_id`), so a second store's "v1" is never mistaken
for the first one's.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from batch.plan import AspectSource, BatchPlan, SentimentSource

logger = logging.getLogger(__name__)


# --- models: loaded once per process ----------------------------------------------------------------------------

_churn_models: dict[tuple[str, str, str], Any] = {}
_survival_models: dict[tuple[str, str], Any] = {}
_sentiment_models: dict[str, Any] = {}
_phrase_finders: dict[str, Any] = {}
_aspect_models: dict[str, Any] = {}
_aspect_labelers: dict[str, Any] = {}
_state = {"in_worker": False}


def mark_worker() -> None:
    """This process is a pool or Spark worker: one thread for BLAS/OpenMP, Arrow and torch from now on."""
    if not _state["in_worker"]:
        _state["in_worker"] = True
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        limit_threads()


def in_worker() -> bool:
    return _state["in_worker"]


def set_tracking_uri(tracking_uri: str) -> None:
    """Point this process (environment and MLflow client) at the run's tracking store."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def _model_key(plan_or_uri: Any, tracking_uri: str | None, digest: str = "") -> tuple[str, str, str]:
    return (tracking_uri or "", str(plan_or_uri), digest)


def churn_model(uri: str, tracking_uri: str | None = None, digest: str = "") -> Any:
    """The churn model behind `uri` in `tracking_uri`'s store, loaded once per process (pool and Spark workers
    reuse it). Keyed by store, URI and folder digest: another store's "v1" is another model."""
    key = _model_key(uri, tracking_uri, digest)
    model = _churn_models.get(key)
    if model is None:
        if tracking_uri:
            set_tracking_uri(tracking_uri)
        from models.churn import ChurnModel

        model = _churn_models[key] = ChurnModel.load(uri)
    return model


def survival_model(plan: BatchPlan) -> Any:
    """The plan's survival model (`models.survival.SurvivalModel`), or None; loaded once per process."""
    if plan.survival_uri is None:
        return None
    key = (plan.tracking_uri, plan.survival_uri)
    model = _survival_models.get(key)
    if model is None:
        set_tracking_uri(plan.tracking_uri)
        from models.survival import SurvivalModel

        model = _survival_models[key] = SurvivalModel.load(plan.survival_uri)
    return model


def model_bytes(plan: BatchPlan) -> bytes:
    """The plan's loaded (contract-checked) churn and survival models pickled for the workers: they unpickle them
    instead of loading from MLflow again, which would import mlflow, skops and torch in every process (~15 s
    each)."""
    models = (churn_model(plan.model_uri, plan.tracking_uri, plan.model_digest), survival_model(plan))
    return pickle.dumps(models, protocol=pickle.HIGHEST_PROTOCOL)


def install_models(plan: BatchPlan, blob: bytes) -> None:
    """Make `churn_model(...)` and `survival_model(plan)` return the models pickled in `blob` (once per process)."""
    key = _model_key(plan.model_uri, plan.tracking_uri, plan.model_digest)
    survival_key = (plan.tracking_uri, plan.survival_uri or "")
    if key not in _churn_models or (plan.survival_uri is not None and survival_key not in _survival_models):
        churn, survival = pickle.loads(blob)
        _churn_models.setdefault(key, churn)
        if plan.survival_uri is not None:
            _survival_models.setdefault(survival_key, survival)
        # The models and every module loaded by now live as long as the worker: out of the collector's reach,
        # so the collection after each bucket (`collector_paused`) scans only what the bucket left.
        gc.collect()
        gc.freeze()


def sentiment_scorer(source: SentimentSource, tracking_uri: str | None = None) -> Any:
    """The sentiment classifier of `source.lineage` (digest checked), loaded once per process."""
    scorer = _sentiment_models.get(source.lineage.scoring_id)
    if scorer is None:
        if tracking_uri:
            set_tracking_uri(tracking_uri)
        from models.text_scoring import load_sentiment

        # In a pool or Spark worker, one thread: the other cores run other workers.
        threads = 1 if in_worker() else None
        scorer = _sentiment_models[source.lineage.scoring_id] = load_sentiment(
            source.lineage, num_threads=threads, batch_size=64
        )
    return scorer


def aspect_labeler(source: AspectSource, tracking_uri: str | None = None) -> Any:
    """The `models.aspect_scoring.CachedAspectLabeler` of `source.lineage`, one per process (its model loads on
    the first text the cache lacks, digest checked)."""
    labeler = _aspect_labelers.get(source.lineage.scoring_id)
    if labeler is None:
        if tracking_uri:
            set_tracking_uri(tracking_uri)
        from models.aspect_scoring import CachedAspectLabeler

        labeler = _aspect_labelers[source.lineage.scoring_id] = CachedAspectLabeler(
            source.lineage, source.cache_dir
        )
    return labeler


def aspect_model(uri: str, tracking_uri: str | None = None) -> Any:
    """The aspect model at `uri` (a pinned version), loaded once per process, with its per-text cache."""
    model = _aspect_models.get(uri)
    if model is None:
        if tracking_uri:
            set_tracking_uri(tracking_uri)
        from models.aspects import AspectCache, load_aspect_model

        model = _aspect_models[uri] = AspectCache(load_aspect_model(uri))
    return model


def phrase_finder(source: SentimentSource, labels: Any) -> Any:
    """The `models.phrases.PhraseFinder` of `source`'s sentiment model, one per process (its cache outlives a
    bucket: the same texts come back in the next one)."""
    from models.phrases import PhraseFinder

    finder = _phrase_finders.get(source.lineage.scoring_id)
    if finder is None:
        finder = _phrase_finders[source.lineage.scoring_id] = PhraseFinder(labels)
    return finder


@contextlib.contextmanager
def sentiment_scorer_in_use(source: SentimentSource, scorer: Any) -> Iterator[None]:
    """Within the block, `sentiment_scorer(source)` in this process returns `scorer` (an already loaded model)."""
    key = source.lineage.scoring_id
    previous = _sentiment_models.get(key)
    _sentiment_models[key] = scorer
    try:
        yield
    finally:
        _sentiment_models.pop(key, None)
        if previous is not None:
            _sentiment_models[key] = previous


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (what it made is collected once, at the end).

    Scoring a bucket builds a few Python objects per customer (its reasons), all alive until the bucket is
    written: the collector's passes over them found nothing to free and cost 12% of a bucket (50,000
    customers: 5.2 s -> 4.6 s without them). Reference counting frees everything else as usual.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def limit_threads() -> None:
    """One thread for OpenMP/BLAS pools, Arrow and torch (if loaded) in this process."""
    import sys

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    pa.set_cpu_count(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def watch_parent(parent_pid: int) -> None:
    """Exit this process when its parent dies (a killed driver must not leave workers behind)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
