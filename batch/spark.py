"""The Spark engine of the batch job: the same bucket scoring as the local engine, spread over Spark tasks.

    summary = score_customers(spec, "2024-10-01", "scores/", engine="spark", master="local[*]")

Plan:

0. Splits (shared with the local engine, `batch.buckets.plan_splits`): one row per CSV file or run of Parquet
   row groups of about a million rows. If the spec's texts feed the model, a first small job lists the texts the
   sentiment cache lacks, makes them distinct and scores each once, in parallel, into the shared cache.
1. A `mapInArrow` task reads its split with the local engine's reader (`batch.buckets.iter_raw_batches`: same
   parsing, same text sentiment from the cache), hashes customer ids into buckets and emits each bucket's slice
   as compressed Arrow IPC bytes.
2. `groupBy(bucket).applyInArrow`: a Python worker gets every slice of one bucket, restores the rows in
   source order and runs `batch.buckets.score_bucket` (loaders with rejects, `build_customer_features`,
   `ChurnModel.score`). The model is broadcast once (pickled by the driver after its contract check) and
   unpickled once per Python worker, which is reused across tasks.
3. Results and rejects are staged once, then written as Parquet folders under temporary names and renamed.

Why the raw rows travel as Arrow bytes rather than Spark columns: Spark's Parquet reader cannot read
nanosecond timestamps (pandas' default), its CSV reader parses numbers, blanks and "NA" differently from
pandas, and it does not know a row's number in its file. Reading with the project's own reader keeps every
customer's input identical to the local engine's and the rejects precise, so both engines agree exactly.
No feature is computed in Spark SQL.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch.buckets import Split, bucket_of, id_column, plan_splits, score_bucket, split_by_bucket
from batch.output import REJECT_SCHEMA, RESULT_COLUMNS, RESULT_SCHEMA, BatchSummary, rejects_path_for
from batch.plan import CUSTOMERS, EVENTS, SOURCE_ROW, BatchError, BatchPlan
from batch.read import raw_schema
from batch.texts import score_new_texts, unscored_texts
from batch.workers import install_models, limit_threads, mark_worker, model_bytes
from churnsense.files import atomic_write_text
from models.survival import ANSWER_COLUMNS

logger = logging.getLogger(__name__)

SLICE_DDL = "bucket int, kind string, seq long, payload binary"
SPLIT_DDL = "kind string, file_index int, first_group int, last_group int, row_offset long, id_offset long"
RECORD = "record"
OUTPUT_DDL = (
    "record string, customer_id string, churn_risk double, risk_band string, "
    "reasons array<struct<feature:string,value:string,contribution:double,evidence:string>>, base_value double, "
    "other_contribution double, eligible boolean, ineligible_reason string, as_of date, model_version string, "
    "sentiment_model_version string, sentiment_scoring_id string, aspect_model string, "
    + "".join(f"{name} double, " for name in ANSWER_COLUMNS)
    + "survival_model string, "
    "table string, file string, row long, column string, reason string"
)
_SEQ_FILE_SHIFT = 40  # seq = file index << 40 | first source row of the slice: source order within a bucket


def _require_pyspark() -> Any:
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError:
        raise BatchError(
            "--engine spark needs PySpark and a Java runtime: pip install 'churnsense[spark]' "
            "(or use the default --engine local)"
        ) from None
    return SparkSession


def default_driver_memory() -> str:
    """A quarter of the machine's memory, between 1 and 16 GiB (in local mode the driver is the executor)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "2g"
    gib = int(min(16, max(1, total / 4 / 2**30)))
    return f"{gib}g"


def spark_session(
    master: str = "local[*]", app_name: str = "churnsense-score", driver_memory: str | None = None
):
    """A quiet Spark session (no UI, WARN logs, Arrow on, UTC) whose Python workers use this interpreter.

    Returns the active session if there is one (its settings stay as they are: driver memory, for one, can
    only be set before the JVM starts).
    """
    SparkSession = _require_pyspark()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # PySpark warns about pandas 3 on every import, in the driver and in each Python worker.
    warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
    os.environ.setdefault("PYTHONWARNINGS", f"ignore:{_PANDAS_WARNING}:FutureWarning")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if master.startswith("local"):
        # A local session needs no network interface: bind the driver to loopback, not the machine's address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_log4j_config()}")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory or default_driver_memory())
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.adaptive.enabled", "false")  # one bucket group per shuffle partition, as planned
    )
    try:
        spark = builder.getOrCreate()
    except Exception as error:  # PySpark raises plain runtime errors when the JVM cannot start
        raise BatchError(
            f"--engine spark: Spark did not start ({type(error).__name__}: {str(error)[:300]}); it needs Java 17+ "
            "(JAVA_HOME or java on PATH)"
        ) from error
    spark.sparkContext.setLogLevel("WARN")
    return spark


_PANDAS_WARNING = "PySpark does not yet fully support pandas"
_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""


def _log4j_config() -> Path:
    """A log4j2 file that keeps the JVM at WARN from its first line (setLogLevel only acts after start-up)."""
    path = Path(tempfile.gettempdir()) / "churnsense-spark-log4j2.properties"
    if not path.exists() or path.read_text() != _LOG4J2:
        atomic_write_text(_LOG4J2, path)
    return path


# --- stage 1: splits -> bucket slices ---------------------------------------------------------------------------


def read_splits(plan: BatchPlan, batches: Any) -> Any:
    """`mapInArrow` body: read each split, emit (bucket, kind, seq, payload) per non-empty bucket slice."""
    for batch in batches:
        for row in batch.to_pylist():
            split = Split(**row)
            for table in split.batches(plan):
                if table.num_rows == 0:
                    continue
                buckets = bucket_of(table.column(id_column(plan, split.kind)), plan.n_buckets)
                first_row = table.column(SOURCE_ROW)[0].as_py()
                seq = (split.file_index << _SEQ_FILE_SHIFT) | first_row
                out_buckets, payloads = [], []
                for bucket, part in split_by_bucket(table, buckets, plan.n_buckets):
                    out_buckets.append(bucket)
                    payloads.append(ipc_bytes(part))
                yield pa.RecordBatch.from_pydict(
                    {
                        "bucket": pa.array(out_buckets, pa.int32()),
                        "kind": pa.array([split.kind] * len(out_buckets), pa.string()),
                        "seq": pa.array([seq] * len(out_buckets), pa.int64()),
                        "payload": pa.array(payloads, pa.binary()),
                    }
                )


def find_unscored_texts(plan: BatchPlan, batches: Any) -> Any:
    """`mapInArrow` body: the distinct texts of each split that the sentiment cache lacks."""
    mark_worker()
    for batch in batches:
        for row in batch.to_pylist():
            texts = unscored_texts(plan, Split(**row))
            if texts:
                yield pa.RecordBatch.from_pydict({"text": pa.array(texts, pa.string())})


def score_texts(plan: BatchPlan, batches: Any) -> Any:
    """`mapInArrow` body: score a partition of (distinct, new) texts into the cache; yields how many."""
    mark_worker()
    for batch in batches:
        texts = batch.column("text").to_pylist()
        yield pa.RecordBatch.from_pydict({"scored": pa.array([score_new_texts(plan, texts)], pa.int64())})


# --- stage 2: one bucket group ----------------------------------------------------------------------------------


def _output_schema() -> pa.Schema:
    fields = [pa.field(RECORD, pa.string())]
    fields += list(RESULT_SCHEMA)
    fields += [f for f in REJECT_SCHEMA if f.name != "customer_id"]
    return pa.schema(fields)


def score_group(plan: BatchPlan, key: tuple, slices: pa.Table) -> pa.Table:
    """`applyInArrow` body: one bucket's slices -> its result rows and reject rows in one table."""
    order = np.lexsort(
        (slices.column("seq").to_numpy(), slices.column("kind").to_numpy(zero_copy_only=False))
    )
    slices = slices.take(pa.array(order))
    kinds = slices.column("kind").to_pylist()
    payloads = slices.column("payload").to_pylist()
    with tempfile.TemporaryDirectory(prefix="churnsense-bucket-") as folder:
        files: dict[str, Path | None] = {}
        for kind, names in ((CUSTOMERS, plan.customers_files), (EVENTS, plan.events_files)):
            if not names:
                files[kind] = None
                continue
            schema = raw_schema(plan, kind)
            table = ipc_table([p for k, p in zip(kinds, payloads, strict=True) if k == kind], schema)
            files[kind] = Path(folder) / f"{kind}.parquet"
            pq.write_table(table.cast(schema), files[kind])
        results, rejects, rows_in = score_bucket(plan, files[CUSTOMERS], files[EVENTS])
    return _union(results, rejects, rows_in)


_ready_workers: set[tuple[str, str, str, str | None]] = set()


def score_group_with_model(plan: BatchPlan, model: Any, key: tuple, slices: pa.Table) -> pa.Table:
    """`score_group` after making sure this Python worker has the broadcast model and one OpenMP thread
    (Spark runs one task per core; more threads per task would fight over the cores)."""
    key = (plan.tracking_uri, plan.model_uri, plan.model_digest, plan.survival_uri)
    if key not in _ready_workers:
        mark_worker()
        install_models(plan, model.value)
        limit_threads()
        _ready_workers.add(key)
    return score_group(plan, key, slices)


def _union(results: pa.Table, rejects: pa.Table, rows_in: dict[str, int]) -> pa.Table:
    """Results, rejects, and one `count` record per table (input rows in `row`), told apart by `RECORD`."""
    schema = _output_schema()
    counts = pa.table({"table": list(rows_in), "row": pa.array(list(rows_in.values()), pa.int64())})
    parts = []
    for record, table in (("score", results), ("reject", rejects), ("count", counts)):
        n = table.num_rows
        if n == 0:
            continue
        columns = {}
        for field in schema:
            if field.name == RECORD:
                columns[field.name] = pa.array([record] * n, pa.string())
            elif field.name in table.column_names:
                columns[field.name] = table.column(field.name)
            else:
                columns[field.name] = pa.nulls(n, field.type)
        parts.append(pa.table(columns, schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


# --- the run ----------------------------------------------------------------------------------------------------


def run_spark(
    plan: BatchPlan,
    out: str | Path,
    master: str = "local[*]",
    progress: bool = False,
    started: float | None = None,
    spark: Any = None,
) -> BatchSummary:
    """Score with Spark and write `out` (a Parquet folder) and `<out>.rejects.parquet` (a folder).

    Nothing appears at `out` until every task has succeeded: the results are written to a temporary folder
    beside it and renamed (an older `out` is moved aside first and removed after).
    """
    from pyspark.sql import functions as F

    started = time.perf_counter() if started is None else started
    out = Path(out).expanduser().resolve()
    if out.is_file():
        raise BatchError(f"--out: {out} is a file (the Spark engine writes a Parquet folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    spark = spark or spark_session(master)
    if master != "local[*]" and spark.sparkContext.master != master:
        logger.warning(
            "using the running Spark session (master %s), not %s", spark.sparkContext.master, master
        )
    shuffle_partitions = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(plan.n_buckets))  # one bucket per reduce task
    splits = plan_splits(plan)
    _remove_orphaned_scratch(out)
    scratch = out.parent / f".{out.name}.spark-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        split_frame = _split_frame(spark, splits)
        if plan.sentiment is not None:
            _score_new_texts(spark, plan, [s for s in splits if s.kind == EVENTS])

        # The driver's contract-checked model, unpickled once per Python worker (no MLflow load per worker).
        model = spark.sparkContext.broadcast(model_bytes(plan))

        # Plain closures, not functools.partial: PySpark inspects the function's type hints. They only call
        # module functions: a closure is pickled by value, with any module global it names (a model cache
        # named here would travel with every task and hide the worker's own).
        def read(batches):  # noqa: ANN001, ANN202
            return read_splits(plan, batches)

        def score(key, table):  # noqa: ANN001, ANN202
            return score_group_with_model(plan, model, key, table)

        slices = split_frame.mapInArrow(read, SLICE_DDL)
        scored = slices.groupBy("bucket").applyInArrow(score, OUTPUT_DDL)
        stage = scratch / "stage"
        scored.write.mode("overwrite").parquet(str(stage))
        staged = spark.read.parquet(str(stage))
        results = staged.where(F.col(RECORD) == "score")
        if plan.ineligible == "exclude":
            results = results.where(F.col("eligible"))
        results = results.select(*RESULT_COLUMNS)
        rejects = staged.where(F.col(RECORD) == "reject").select(*REJECT_SCHEMA.names)
        results.write.parquet(str(scratch / "scores"))
        rejects.coalesce(1).write.parquet(str(scratch / "rejects"))
        # One pass over the staged rows for the summary: bands (with their lowest risk) and reject reasons.
        counts = staged.groupBy(RECORD, "risk_band", "ineligible_reason", "table", "reason").agg(
            F.count(F.lit(1)).alias("n"), F.min("churn_risk").alias("low"), F.sum("row").alias("rows")
        )
        bands, band_floor, reasons, ineligible, rows_in = {}, {}, {}, {}, {}
        for row in counts.collect():
            if row[RECORD] == "count":
                rows_in[row["table"]] = int(row["rows"])
            elif row[RECORD] == "score" and row["ineligible_reason"] is not None:
                ineligible[row["ineligible_reason"]] = int(row["n"])
            elif row[RECORD] == "score":
                bands[row["risk_band"]] = int(row["n"])
                band_floor[row["risk_band"]] = row["low"]
            else:
                reasons[f"{row['table']}: {row['reason']}"] = int(row["n"])
        rejects_path = rejects_path_for(out)
        _swap_in(scratch / "rejects", rejects_path)
        _swap_in(scratch / "scores", out)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", shuffle_partitions)
        shutil.rmtree(scratch, ignore_errors=True)
    return BatchSummary(
        out=out,
        rejects_path=rejects_path,
        engine=f"spark {spark.sparkContext.master}",
        model_uri=plan.model_uri,
        model_version=plan.model_version,
        as_of=plan.as_of,
        n_customers=sum(bands.values()),
        band_counts=bands,
        n_rejected=sum(reasons.values()),
        rejected_by_reason=reasons,
        seconds=time.perf_counter() - started,
        n_buckets=plan.n_buckets,
        bands_order=tuple(sorted(band_floor, key=lambda b: band_floor[b])),
        ineligible_by_reason=ineligible,
        ineligible=plan.ineligible,
        rows_in=rows_in,
        survival_version=plan.survival_version,
    )


def _remove_orphaned_scratch(out: Path) -> None:
    """Remove scratch folders (copies of customer data) that killed runs for `out` left: those whose driver
    process no longer exists. A failed run removes its own; only SIGKILL or a power cut leave one."""
    for folder in out.parent.glob(f".{out.name}.spark-*"):
        owner = folder.name.rsplit(".spark-", 1)[1].split("-", 1)[0]
        if owner.isdigit() and not _process_exists(int(owner)):
            logger.info("removing %s, left by a run that was killed", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _split_frame(spark: Any, splits: list[Split]) -> Any:
    """The splits as a DataFrame with one split per partition (each becomes one read task)."""
    rows = [dataclasses.astuple(split) for split in splits]
    return spark.sparkContext.parallelize(rows, max(1, len(rows))).toDF(SPLIT_DDL)


def _score_new_texts(spark: Any, plan: BatchPlan, splits: list[Split]) -> int:
    """Texts the cache lacks, found by the read tasks, made distinct by Spark and scored once each, in parallel.

    The main job then finds every text in the cache, so no text is scored twice, whichever tasks meet it.
    """
    if not splits:
        return 0

    def find(batches):  # noqa: ANN001, ANN202
        return find_unscored_texts(plan, batches)

    def score(batches):  # noqa: ANN001, ANN202
        return score_texts(plan, batches)

    new = _split_frame(spark, splits).mapInArrow(find, "text string").distinct()
    parallelism = spark.sparkContext.defaultParallelism
    counts = new.repartition(parallelism).mapInArrow(score, "scored long").collect()
    scored = sum(row["scored"] for row in counts)
    if scored:
        logger.info("scored %d texts the sentiment cache had not seen", scored)
    return scored


def _swap_in(staged: Path, target: Path) -> None:
    """Rename `staged` to `target`; an existing target is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def ipc_bytes(table: pa.Table) -> bytes:
    """A table as compressed Arrow IPC stream bytes (how the Spark engine ships bucket slices)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ipc_table(payloads: Sequence[bytes], schema: pa.Schema) -> pa.Table:
    tables = [pa.ipc.open_stream(pa.py_buffer(p)).read_all() for p in payloads]
    return pa.concat_tables(tables) if tables else schema.empty_table()
