"""The local engine: a process pool over on-disk buckets, resumable, writing its output atomically.

Partition every split into bucket files (after scoring the texts the cache lacks, once), score the buckets in a
pool of spawned workers (one thread each), and concatenate the buckets into `out` and its rejects file, each
under a temporary name renamed at the end. A rerun with the same inputs, models, date and bucketing resumes from
the buckets already scored; a killed driver takes its workers with it.

Run it from a script under `if __name__ == "__main__":` (its workers are spawned processes that import the main
module).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.buckets import Split, partition_split, plan_splits, score_bucket
from batch.output import (
    REJECT_SCHEMA,
    RESULT_SCHEMA,
    BatchSummary,
    band_counts,
    reason_counts,
    rejects_path_for,
    split_band_counts,
)
from batch.plan import CUSTOMERS, EVENTS, SLEEP_HOOK_ENV, BatchError, BatchPlan
from batch.read import raw_schema
from batch.texts import score_new_texts, unscored_texts
from batch.workers import (
    install_models,
    limit_threads,
    mark_worker,
    model_bytes,
    watch_parent,
)
from churnsense.files import atomic_path, atomic_write_bytes, atomic_write_parquet

logger = logging.getLogger(__name__)


def bucket_file_name(bucket: int) -> str:
    return f"bucket-{bucket:05d}.parquet"


_worker_plan: BatchPlan | None = None


def _init_worker(plan: BatchPlan, model_file: str, model_sha256: str, parent_pid: int) -> None:
    """Pool worker start-up: one BLAS/OpenMP thread (two workers share two cores), the driver's model (checked
    against the digest the driver computed before it is unpickled), and exit if the driver dies."""
    global _worker_plan
    _worker_plan = plan
    mark_worker()
    watch_parent(parent_pid)
    blob = Path(model_file).read_bytes()
    if hashlib.sha256(blob).hexdigest() != model_sha256:
        raise BatchError(f"{model_file}: not the model file this run wrote; refusing to unpickle it")
    install_models(plan, blob)
    limit_threads()


def _unscored_texts_in_worker(split: Split) -> list[str]:
    assert _worker_plan is not None, "worker not initialised"
    return unscored_texts(_worker_plan, split)


def _partition_split_in_worker(work: str, index: int, split: Split) -> int:
    """Partition one split, then mark it done (a rerun skips marked splits)."""
    assert _worker_plan is not None, "worker not initialised"
    folder = Path(work)
    rows = partition_split(_worker_plan, split, index, folder / "partition")
    atomic_write_bytes(str(rows).encode(), folder / "splits" / f"{index:05d}.done")
    return rows


def _score_bucket_in_worker(work: str, bucket: int) -> int:
    """Score one bucket from its partition parts; write its rejects, then its results (the completion mark)."""
    plan = _worker_plan
    assert plan is not None, "worker not initialised"
    folder = Path(work)
    inputs = {}
    for kind, files in ((CUSTOMERS, plan.customers_files), (EVENTS, plan.events_files)):
        if not files:
            inputs[kind] = None
            continue
        parts = folder / "partition" / kind / f"bucket-{bucket:05d}"
        parts.mkdir(parents=True, exist_ok=True)
        if not any(parts.glob("part-*.parquet")):  # no rows of this table fell in the bucket
            pq.write_table(raw_schema(plan, kind).empty_table(), parts / "part-empty.parquet")
        inputs[kind] = parts
    results, rejects, rows_in = score_bucket(plan, inputs[CUSTOMERS], inputs[EVENTS])
    name = bucket_file_name(bucket)
    atomic_write_bytes(json.dumps(rows_in).encode(), folder / "rows_in" / f"{bucket:05d}.json")
    atomic_write_parquet(rejects, folder / "rejects" / name)
    atomic_write_parquet(results, folder / "scored" / name)
    sleep_after = float(os.environ.get(SLEEP_HOOK_ENV) or 0)
    if sleep_after:
        time.sleep(sleep_after)
    return results.num_rows


def work_folder(plan: BatchPlan, out: Path, work_dir: str | Path | None = None) -> Path:
    """`<work_dir or out's folder>/.<out name>.work/<fingerprint>`: completed buckets of an interrupted run."""
    root = Path(work_dir) if work_dir else Path(out).parent
    return root / f".{Path(out).name}.work" / plan.fingerprint()


def run_local(
    plan: BatchPlan,
    out: str | Path,
    workers: int = 2,
    work_dir: str | Path | None = None,
    progress: bool = False,
    keep_work: bool = False,
    started: float | None = None,
) -> BatchSummary:
    """Partition the inputs into bucket files, score the buckets in a process pool, merge into `out`.

    A rerun with the same inputs, model, date and bucketing resumes from the buckets already scored; a run
    that dies leaves nothing at `out` (the merge writes a temporary file and renames it). A run that fails on
    an error (bad input, a worker that died) removes its work folder, which holds copies of customer data;
    only a run killed outright leaves it, for the rerun to resume from.
    """
    started = time.perf_counter() if started is None else started
    out = Path(out).expanduser().resolve()
    _check_output_path(out)
    work = work_folder(plan, out, work_dir)
    for stale in work.parent.glob("*") if work.parent.is_dir() else []:
        if stale != work and re.fullmatch(r"[0-9a-f]{16}", stale.name):
            shutil.rmtree(stale, ignore_errors=True)  # an older run for other inputs: useless now
    if not (work / "partition.done").exists():
        # Buckets are only scored once every split is partitioned: nothing scored can be stale.
        shutil.rmtree(work / "scored", ignore_errors=True)
        shutil.rmtree(work / "rejects", ignore_errors=True)
        shutil.rmtree(work / "rows_in", ignore_errors=True)
    done = {b for b in range(plan.n_buckets) if (work / "scored" / bucket_file_name(b)).exists()}
    resumed = len(done)
    if resumed:
        logger.info("resuming %s: %d of %d buckets already scored", work, resumed, plan.n_buckets)
    todo = [b for b in range(plan.n_buckets) if b not in done]
    # A file, not an initarg: spawn writes initargs into a pipe and would block until each worker has started.
    model_file = work / "model.pkl"
    blob = model_bytes(plan)
    atomic_write_bytes(blob, model_file)
    context = multiprocessing.get_context("spawn")
    bars = _Bars(progress)
    try:
        with cf.ProcessPoolExecutor(
            max_workers=max(1, workers),
            mp_context=context,
            initializer=_init_worker,
            # The workers unpickle the model file only if it is byte for byte the one written here.
            initargs=(plan, str(model_file), hashlib.sha256(blob).hexdigest(), os.getpid()),
        ) as pool:
            try:
                if not (work / "partition.done").exists():
                    _partition_in_pool(plan, work, pool, bars)
                tick = time.perf_counter()
                futures = [pool.submit(_score_bucket_in_worker, str(work), b) for b in todo]
                bars.run(futures, "score", "bucket", total=plan.n_buckets, initial=resumed)
            except BrokenProcessPool:
                raise BatchError(
                    "a batch worker died (out of memory?); rerun with a smaller --chunk-customers"
                ) from None
        logger.info("scored %d bucket(s) in %.1fs", len(todo), time.perf_counter() - tick)
        n_customers, counts, n_rejected, reasons = merge_outputs(plan, work, out)
        rows_in = _rows_in(work)
    except Exception:
        shutil.rmtree(work, ignore_errors=True)  # copies of customer data: never left behind by an error
        with suppress(OSError):
            work.parent.rmdir()
        raise
    bands, ineligible = split_band_counts(counts)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
        with suppress(OSError):
            work.parent.rmdir()
    return BatchSummary(
        out=out,
        rejects_path=rejects_path_for(out),
        engine="local",
        model_uri=plan.model_uri,
        model_version=plan.model_version,
        as_of=plan.as_of,
        n_customers=sum(bands.values()),
        band_counts=bands,
        n_rejected=n_rejected,
        rejected_by_reason=reasons,
        seconds=time.perf_counter() - started,
        n_buckets=plan.n_buckets,
        resumed_buckets=resumed,
        bands_order=_bands_by_risk(out),
        ineligible_by_reason=ineligible,
        ineligible=plan.ineligible,
        rows_in=rows_in,
        survival_version=plan.survival_version,
    )


def _rows_in(work: Path) -> dict[str, int]:
    """Input rows of each table over all buckets (each scored bucket wrote its counts before its results)."""
    totals: dict[str, int] = {}
    for path in sorted((work / "rows_in").glob("*.json")):
        for kind, n in json.loads(path.read_text(encoding="utf-8")).items():
            totals[kind] = totals.get(kind, 0) + int(n)
    return totals


def _partition_in_pool(plan: BatchPlan, work: Path, pool: cf.Executor, bars: _Bars) -> None:
    """Score the texts the cache lacks (once, here), then partition every split not yet done."""
    tick = time.perf_counter()
    splits = plan_splits(plan)
    if plan.sentiment is not None:
        found = bars.run(
            [pool.submit(_unscored_texts_in_worker, split) for split in splits if split.kind == EVENTS],
            "texts",
            "split",
        )
        new = list(dict.fromkeys(text for texts in found for text in texts))
        if new:
            logger.info("scoring %d texts the sentiment cache has not seen", len(new))
        score_new_texts(plan, new)
    todo = [i for i in range(len(splits)) if not (work / "splits" / f"{i:05d}.done").exists()]
    rows = bars.run(
        [pool.submit(_partition_split_in_worker, str(work), i, splits[i]) for i in todo], "partition", "split"
    )
    (work / "partition.done").write_text(json.dumps({"splits": len(splits)}))
    logger.info(
        "partitioned %d split(s), %d rows, into %d buckets in %.1fs",
        len(todo), sum(rows), plan.n_buckets, time.perf_counter() - tick,
    )  # fmt: skip


class _Bars:
    """Waits for futures (first error raised at once, the rest cancelled) behind an optional tqdm bar."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def run(
        self, futures: list[cf.Future], desc: str, unit: str, total: int | None = None, initial: int = 0
    ) -> list[Any]:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total if total is not None else len(futures), initial=initial, desc=desc, unit=unit,
            disable=not self.enabled, leave=False,
        )  # fmt: skip
        try:
            for future in cf.as_completed(futures):
                future.result()
                bar.update(1)
        finally:
            bar.close()
            for future in futures:
                future.cancel()
        return [future.result() for future in futures]


def _check_output_path(out: Path) -> None:
    if out.is_dir():
        raise BatchError(f"--out: {out} is a folder (the local engine writes one Parquet file)")
    out.parent.mkdir(parents=True, exist_ok=True)


def merge_outputs(plan: BatchPlan, work: Path, out: Path) -> tuple[int, dict[str, int], int, dict[str, int]]:
    """Concatenate the buckets' results and rejects (bucket order) into `out` and its rejects file, each
    written under a temporary name and renamed; the rejects file goes first, `out` appearing marks success."""
    with atomic_path(rejects_path_for(out)) as tmp_rejects:
        n_rejected, reasons = _concatenate_buckets(
            plan, work / "rejects", REJECT_SCHEMA, tmp_rejects, reason_counts
        )
    with atomic_path(out) as tmp_out:
        n_customers, bands = _concatenate_buckets(plan, work / "scored", RESULT_SCHEMA, tmp_out, band_counts)
    return n_customers, bands, n_rejected, reasons


def _concatenate_buckets(
    plan: BatchPlan, folder: Path, schema: pa.Schema, path: Path, count: Callable[[pa.Table], dict[str, int]]
) -> tuple[int, dict[str, int]]:
    """Write the buckets' files in `folder` (bucket order) into one Parquet file; its rows and summed counts."""
    rows, counts = 0, {}
    with pq.ParquetWriter(path, schema) as writer:
        for bucket in range(plan.n_buckets):
            table = pq.read_table(folder / bucket_file_name(bucket), schema=schema)
            for key, value in count(table).items():
                counts[key] = counts.get(key, 0) + value
            if "eligible" in table.column_names and plan.ineligible == "exclude":
                table = table.filter(pc.field("eligible"))
            writer.write_table(table)
            rows += table.num_rows
    return rows, counts


def _bands_by_risk(path: Path) -> tuple[str, ...]:
    """Band names from the least to the most risky (by their lowest churn_risk), for the summary table."""
    table = pq.ParquetDataset(str(path)).read(columns=["risk_band", "churn_risk"])
    table = table.filter(pc.is_valid(table.column("churn_risk")))
    if table.num_rows == 0:
        return ()
    lowest = table.group_by("risk_band").aggregate([("churn_risk", "min")]).to_pandas()
    return tuple(lowest.sort_values("churn_risk_min")["risk_band"].astype(str))
