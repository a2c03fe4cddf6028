"""Batch scoring of a whole customer base: spec files -> features as of a date -> churn risk, one row per customer.

    summary = score_customers("data/spec.yaml", "2024-10-01", "scores.parquet")   # local engine (default)
    print(summary.render()); summary.top_risk(10)

Both engines run the same steps on groups of customers ("buckets": customers whose hashed id falls in the same
bucket, with all their events):

1. Plan read tasks (`plan_splits`: Parquet row-group runs of about a million rows, one task per CSV file).
2. Texts: each task lists the distinct event texts the sentiment cache lacks (`unscored_texts`); they are
   scored once, in one place (`score_new_texts`), into the shared cache (`models.sentiment_cache`).
3. Each task reads its rows (`iter_raw_batches`: pandas for CSV, pyarrow for Parquet), looks up the texts'
   sentiment and splits the rows by bucket (`bucket_of`).
4. For each bucket, `score_bucket` runs the project's loaders (`features.io`, which validate rows and report
   rejects), `features.engine.build_customer_features` and `ChurnModel.score`: nothing here computes a feature.
5. Results (`customer_id, churn_risk, risk_band, reasons, as_of, model_version`) and rejected input rows (with
   file, row and reason) are written as Parquet, to a temporary name first and renamed when complete.

The local engine (this module) runs steps 2-4 in a process pool (2 workers by default, one BLAS/OpenMP thread
each) with bucket parts on disk in a work dir keyed by inputs, model and date, so a rerun after a crash resumes
from the buckets already scored. The Spark engine (`serving.spark_batch`) runs the same read tasks in Spark,
shuffles the bucket slices and scores each bucket in a Python worker. Results per customer depend neither on
the bucketing nor on the engine (tested to be bit-identical with direct in-process scoring).

Run the local engine from a script under `if __name__ == "__main__":` (its workers are spawned processes that
import the main module).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnsense.errors import UserError
from features.columns import AS_OF
from features.engine import FEATURE_VERSION, build_customer_features, to_timestamp_ns
from features.io import REJECT_COLUMNS, DataLoadError, resolve_files
from features.labels import ineligible_reasons
from features.pipeline import load_data
from features.spec import DatasetSpec, load_spec
from features.text import normalise_texts
from models.catalog import CHURN_MODEL, absolute_tracking_uri, champion_uri, resolve_model_uri
from models.lineage import SentimentLineage

logger = logging.getLogger(__name__)

DEFAULT_CHURN_MODEL = champion_uri(CHURN_MODEL)
DEFAULT_CHUNK_CUSTOMERS = 50_000
READ_BATCH_ROWS = 1_000_000
# Bumped when the work-dir layout or the bucket format changes, so a resume never mixes formats.
BATCH_FORMAT = "1"
# Test hook: seconds a worker sleeps after each bucket it completes (lets a test kill a run between buckets).
SLEEP_HOOK_ENV = "CHURNSENSE_BATCH_SLEEP_AFTER_BUCKET"

# Extra columns carried through the bucket files (never user columns: the double underscore keeps them apart).
SOURCE_FILE = "__source_file"
SOURCE_ROW = "__source_row"
ROW_ID = "__row_id"  # customer id for specs without an id column: the row number, as `load_customers` does
SENTIMENT = (
    "__sentiment"  # event-text sentiment from the cache, declared as the bucket spec's sentiment column
)
CUSTOMERS, EVENTS = "customers", "events"

REASON_TYPE = pa.struct([("feature", pa.string()), ("value", pa.string()), ("contribution", pa.float64())])
RESULT_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("churn_risk", pa.float64()),  # null for an ineligible customer (kept with --ineligible flag)
        ("risk_band", pa.string()),
        ("reasons", pa.list_(REASON_TYPE)),
        ("base_value", pa.float64()),  # base_value + sum(reasons) + other_contribution = logit(churn_risk)
        ("other_contribution", pa.float64()),
        ("eligible", pa.bool_()),  # a customer at as_of: signed up before it, not churned before it
        ("ineligible_reason", pa.string()),
        (AS_OF, pa.date32()),
        ("model_version", pa.string()),
        ("sentiment_model_version", pa.string()),  # the sentiment model behind the text features, if any
        ("sentiment_scoring_id", pa.string()),
    ]
)
RESULT_COLUMNS = RESULT_SCHEMA.names
INELIGIBLE_CHOICES = ("exclude", "flag")
REJECT_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("customer_id", pa.string()),
        ("column", pa.string()),
        ("reason", pa.string()),
    ]
)
assert list(REJECT_SCHEMA.names) == REJECT_COLUMNS


class BatchError(UserError):
    """The batch job cannot run as asked (bad date, model without what it needs, output path in the way)."""


# --- the plan: everything a worker needs, picklable -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SentimentSource:
    """Where event-text sentiment comes from: the churn model's own sentiment model, and the cache it fills."""

    lineage: SentimentLineage
    cache_dir: str

    def cache(self) -> Any:
        from models.sentiment_cache import open_cache

        return open_cache(self.cache_dir, self.lineage.scoring_id)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """What to score and how: resolved once by the driver, shipped to every worker.

    Attributes:
        spec: the dataset spec (customers / events sections are used, reviews ignored).
        as_of: features describe this date (midnight at its start, naive UTC).
        model_uri: a concrete churn model URI (an alias is resolved first, so all workers load one version).
        model_version: stamped on every output row.
        model_digest: for a model given as a folder, a hash of its files (a model retrained into the same
            folder must not resume the old one's buckets); registry versions and run ids are immutable.
        tracking_uri: the MLflow tracking URI, absolute, so workers with another working directory find it.
        customers_files / events_files: the input files, in the order the loaders read them.
        events_columns: raw event columns to read; the text column (if any) becomes `SENTIMENT`.
        text_column: the raw event text column to score, or None when sentiment is not needed or precomputed.
        sentiment: the sentiment model (the one the churn model was trained with) and cache, when
            `text_column` is set.
        n_buckets: customer buckets (local engine: files on disk; Spark: groups).
        top_k: reasons per customer.
        ineligible: "exclude" (default: customers who had not signed up or had already churned at `as_of` are
            left out and counted in the summary) or "flag" (kept with `eligible=false` and no risk).
    """

    spec: DatasetSpec
    as_of: dt.date
    model_uri: str
    model_version: str
    tracking_uri: str
    customers_files: tuple[str, ...]
    events_files: tuple[str, ...]
    events_columns: tuple[str, ...]
    text_column: str | None
    sentiment: SentimentSource | None
    n_buckets: int
    top_k: int = 5
    model_digest: str = ""
    ineligible: str = "exclude"

    def fingerprint(self) -> str:
        """A key for the work dir: input files (path, size, mtime), spec, model, date, bucketing, formats."""
        files = []
        for name in (*self.customers_files, *self.events_files):
            stat = Path(name).stat()
            files.append([name, stat.st_size, stat.st_mtime_ns])
        payload = {
            "format": BATCH_FORMAT,
            "features": FEATURE_VERSION,
            "spec": self.spec.model_dump(mode="json", exclude={"base_dir", "source", "reviews", "labels"}),
            "files": files,
            "as_of": self.as_of.isoformat(),
            "model": [self.model_uri, self.model_version, self.model_digest],
            "sentiment": [self.sentiment.lineage.scoring_id, self.sentiment.cache_dir]
            if self.sentiment
            else None,
            "n_buckets": self.n_buckets,
            "top_k": self.top_k,
            "ineligible": self.ineligible,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --- models: loaded once per process ----------------------------------------------------------------------------

_churn_models: dict[str, Any] = {}
_IN_WORKER = False  # set in pool workers and Spark Python workers
_sentiment_models: dict[str, Any] = {}


def _set_tracking_uri(tracking_uri: str) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def churn_model(uri: str, tracking_uri: str | None = None) -> Any:
    """The churn model behind `uri`, loaded once per process (workers and Spark Python workers reuse it)."""
    model = _churn_models.get(uri)
    if model is None:
        if tracking_uri:
            _set_tracking_uri(tracking_uri)
        from models.churn import ChurnModel

        model = _churn_models[uri] = ChurnModel.load(uri)
    return model


def model_bytes(model: Any) -> bytes:
    """The loaded (contract-checked) churn model pickled for the workers: they unpickle it instead of loading
    it from MLflow again, which would import mlflow, skops and torch in every process (~15 s each)."""
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def install_churn_model(uri: str, blob: bytes) -> Any:
    """Make `churn_model(uri)` return the model pickled in `blob` in this process (once per process)."""
    model = _churn_models.get(uri)
    if model is None:
        model = _churn_models[uri] = pickle.loads(blob)
    return model


def sentiment_scorer(source: SentimentSource, tracking_uri: str | None = None) -> Any:
    """The sentiment classifier of `source.lineage` (digest checked), loaded once per process."""
    scorer = _sentiment_models.get(source.lineage.scoring_id)
    if scorer is None:
        if tracking_uri:
            _set_tracking_uri(tracking_uri)
        from models.text_scoring import load_sentiment

        # In a pool or Spark worker, one thread: the other cores run other workers.
        threads = 1 if _IN_WORKER else None
        scorer = _sentiment_models[source.lineage.scoring_id] = load_sentiment(
            source.lineage, num_threads=threads, batch_size=64
        )
    return scorer


def _folder_digest(folder: Path) -> str:
    """Names, sizes and modification times of a model folder's files, hashed: changes when it is rewritten."""
    digest = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(folder) if path != folder else path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:16]


# --- planning ---------------------------------------------------------------------------------------------------


def parse_as_of(as_of: str | dt.date) -> dt.date:
    if isinstance(as_of, dt.datetime):
        return as_of.date()
    if isinstance(as_of, dt.date):
        return as_of
    try:
        return dt.date.fromisoformat(str(as_of))
    except ValueError:
        raise BatchError(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)") from None


def count_rows(files: Sequence[str]) -> int:
    """Data rows in the files: Parquet metadata, or newlines of a CSV (minus the header; quoted newlines in
    texts make this an overestimate, which only means a few more buckets)."""
    total = 0
    for name in files:
        if _is_parquet(name):
            total += pq.ParquetFile(name).metadata.num_rows
        else:
            with open(name, "rb") as handle:
                lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))
            total += max(lines - 1, 0)
    return total


def text_sentiment_source(
    model: Any, sentiment_model: str | None, cache_dir: str | Path | None
) -> SentimentSource:
    """The sentiment model that computes the churn model's text features: the one it was trained with.

    `sentiment_model` may say where to load that model from (another store, a folder), but it must be the same
    model (artifact digest and arithmetic); anything else is refused, never used silently.
    """
    from models.text_scoring import default_cache_dir, sentiment_lineage

    trained_with = model.sentiment_lineage
    if trained_with is None:
        raise BatchError(
            f"churn model v{model.version} uses text sentiment features but does not record which sentiment "
            "model built them (it predates lineage); retrain it: churnsense train churn --sentiment-model ..."
        )
    lineage = trained_with
    if sentiment_model:
        given = sentiment_lineage(sentiment_model)
        if given.scoring_id != trained_with.scoring_id:
            raise BatchError(
                f"--sentiment-model: {given.describe()} is not the sentiment model churn model "
                f"v{model.version} was trained with ({trained_with.describe()}); its text features would "
                "differ. Leave --sentiment-model out, or retrain the churn model with this sentiment model"
            )
        lineage = given
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return SentimentSource(lineage=lineage, cache_dir=str(root.resolve()))


def make_plan(
    spec: DatasetSpec,
    as_of: dt.date,
    model: Any,
    model_uri: str,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    top_k: int = 5,
    sentiment_model: str | None = None,
    cache_dir: str | Path | None = None,
    ineligible: str = "exclude",
) -> BatchPlan:
    """Resolve the input files, decide whether texts must be scored, and size the buckets.

    Args:
        model: the loaded churn model (its `schema` says whether sentiment features are needed).
        model_uri: the concrete URI workers load.
        chunk_customers: customers per bucket (events-only specs assume ~50 events per customer).
        sentiment_model: where to load the churn model's own sentiment model from (default: where it was).
    """
    if spec.customers is None and spec.events is None:
        raise BatchError(f"{spec.source}: the spec has neither customers nor events to score")
    if ineligible not in INELIGIBLE_CHOICES:
        raise BatchError(f"--ineligible: {ineligible!r} is not one of {', '.join(INELIGIBLE_CHOICES)}")
    schema = model.schema
    customers_files = tuple(str(p) for p in resolve_files(spec, spec.customers)) if spec.customers else ()
    events_files: tuple[str, ...] = ()
    events_columns: tuple[str, ...] = ()
    text_column = None
    sentiment = None
    es = spec.events
    if es is not None and schema.use_events:
        events_files = tuple(str(p) for p in resolve_files(spec, es))
        columns = [es.id, es.time, es.type, *es.values]
        if es.sentiment:
            columns.append(es.sentiment)
        elif schema.use_sentiment:
            if not es.text:
                raise BatchError(
                    "events.text: the churn model uses text sentiment, but the spec names no text column "
                    "(or a precomputed events.sentiment column)"
                )
            text_column = es.text
            columns.append(es.text)
            sentiment = text_sentiment_source(model, sentiment_model, cache_dir)
        events_columns = tuple(dict.fromkeys(columns))
        missing = [v for v in schema.value_columns if v not in es.values]
        if missing:
            raise BatchError(f"events.values: the churn model needs value column(s) {', '.join(missing)}")
    elif schema.use_events:
        raise BatchError("events: the churn model uses event features but the spec has no events section")
    n_customers = count_rows(customers_files) if customers_files else max(1, count_rows(events_files) // 50)
    n_buckets = max(1, math.ceil(n_customers / max(1, chunk_customers)))
    return BatchPlan(
        spec=spec,
        as_of=as_of,
        model_uri=model_uri,
        model_version=str(model.version),
        tracking_uri=absolute_tracking_uri(),
        customers_files=customers_files,
        events_files=events_files,
        events_columns=events_columns,
        text_column=text_column,
        sentiment=sentiment,
        n_buckets=n_buckets,
        top_k=top_k,
        ineligible=ineligible,
        model_digest=_folder_digest(Path(model_uri)) if Path(model_uri).exists() else "",
    )


# --- step 1: raw batches and buckets ----------------------------------------------------------------------------


def _is_parquet(name: str | Path) -> bool:
    return str(name).lower().endswith((".parquet", ".pq"))


def _csv_options(name: str, read_options: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"sep": "\t" if str(name).lower().endswith(".tsv") else ","}
    options.update(read_options)
    return options


def _raw_schema(plan: BatchPlan, kind: str) -> pa.Schema:
    """The schema every raw batch of `kind` is cast to, so all bucket files of a table agree.

    CSV columns are read as text (the loaders parse numbers and dates from text, as they do from a whole CSV);
    Parquet columns keep the first file's types (dictionaries decoded).
    """
    files = plan.customers_files if kind == CUSTOMERS else plan.events_files
    table = plan.spec.customers if kind == CUSTOMERS else plan.spec.events
    first = files[0]
    if _is_parquet(first):
        schema = pq.read_schema(first)
        names = list(plan.events_columns) if kind == EVENTS else [n for n in schema.names if not _is_index(n)]
        fields = []
        for name in names:
            if name not in schema.names:
                raise DataLoadError(
                    f"{first}: column {name!r} not found (has: {', '.join(schema.names[:30])})"
                )
            kind_type = schema.field(name).type
            if pa.types.is_dictionary(kind_type):
                kind_type = kind_type.value_type
            if pa.types.is_large_string(kind_type):
                kind_type = pa.string()
            fields.append(pa.field(name, kind_type))
        schema = pa.schema(fields)
    else:
        header = pd.read_csv(first, nrows=0, **_csv_options(first, table.read_options))
        names = list(plan.events_columns) if kind == EVENTS else [str(c) for c in header.columns]
        missing = [n for n in names if n not in header.columns]
        if missing:
            raise DataLoadError(f"{first}: column(s) {', '.join(map(repr, missing))} not found")
        schema = pa.schema([pa.field(n, pa.string()) for n in names])
    if kind == CUSTOMERS and table.id is None:
        schema = schema.append(pa.field(ROW_ID, pa.string()))
    if kind == EVENTS and plan.text_column:
        schema = schema.remove(schema.get_field_index(plan.text_column)).append(
            pa.field(SENTIMENT, pa.float64())
        )
    return schema.append(pa.field(SOURCE_FILE, pa.int32())).append(pa.field(SOURCE_ROW, pa.int64()))


def _is_index(name: str) -> bool:
    return bool(re.fullmatch(r"__index_level_\d+__", name))


def iter_raw_batches(
    plan: BatchPlan,
    kind: str,
    file_index: int,
    row_groups: Sequence[int] | None = None,
    row_offset: int = 0,
    id_offset: int = 0,
    batch_rows: int = READ_BATCH_ROWS,
) -> Iterator[pa.Table]:
    """Raw rows of one input file in batches, with `SOURCE_FILE` / `SOURCE_ROW` (0-based data row in the file).

    Args:
        row_groups: Parquet row groups to read (all when None); `row_offset` is the row number of the first.
        id_offset: rows of earlier customer files, for specs that use the row number as the id.
    Yields:
        Tables cast to `_raw_schema(plan, kind)`, before any validation (the loaders do that per bucket) and
        with event texts already turned into `SENTIMENT` scores.
    """
    files = plan.customers_files if kind == CUSTOMERS else plan.events_files
    table_spec = plan.spec.customers if kind == CUSTOMERS else plan.spec.events
    name = files[file_index]
    schema = _raw_schema(plan, kind)
    read_names = [f.name for f in schema if f.name not in (SOURCE_FILE, SOURCE_ROW, ROW_ID, SENTIMENT)]
    if kind == EVENTS and plan.text_column:
        read_names.append(plan.text_column)
    row = row_offset
    for batch in _read_file_batches(name, table_spec.read_options, read_names, row_groups, batch_rows):
        n = batch.num_rows
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        for field in schema:
            if field.name == SOURCE_FILE:
                columns[field.name] = pa.array(np.full(n, file_index, dtype=np.int32))
            elif field.name == SOURCE_ROW:
                columns[field.name] = pa.array(np.arange(row, row + n, dtype=np.int64))
            elif field.name == ROW_ID:
                columns[field.name] = pa.array(np.arange(id_offset + row, id_offset + row + n).astype(str))
            elif field.name == SENTIMENT:
                columns[field.name] = pa.array(_text_sentiment(plan, batch.column(plan.text_column)))
            else:
                columns[field.name] = _cast(batch.column(field.name), field.type, name)
        row += n
        yield pa.table(columns, schema=schema)


def _cast(column: pa.ChunkedArray | pa.Array, target: pa.DataType, file: str) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if column.type == target:
        return column
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataLoadError(
            f"{file}: a column does not match the first file's type {target} ({error})"
        ) from None


def _read_file_batches(
    name: str,
    read_options: dict[str, Any],
    columns: list[str],
    row_groups: Sequence[int] | None,
    batch_rows: int,
) -> Iterator[pa.Table]:
    if _is_parquet(name):
        try:
            handle = pq.ParquetFile(name)
            groups = list(range(handle.num_row_groups)) if row_groups is None else list(row_groups)
            if not groups:
                return
            for batch in handle.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
                yield pa.Table.from_batches([batch])
        except (OSError, pa.ArrowInvalid) as error:
            raise DataLoadError(f"{name}: cannot read Parquet ({error})") from None
        return
    options = _csv_options(name, read_options)
    options.update(usecols=columns, dtype=str, chunksize=batch_rows)
    try:
        with pd.read_csv(name, **options) as reader:
            for frame in reader:
                yield pa.Table.from_pandas(frame, preserve_index=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DataLoadError(f"{name}: cannot parse ({error})") from None


def _distinct_texts(texts: pa.ChunkedArray | pa.Array) -> tuple[list[str | None], np.ndarray]:
    """(distinct values normalised (`features.text`), None for missing or blank; each row's index into them,
    -1 for null)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_encode()
    codes = texts.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    # Only the values rows use: a file's dictionary may be shared by row groups and list many more.
    used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(texts.dictionary)))
    remap = np.full(len(texts.dictionary) + 1, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    values = normalise_texts(texts.dictionary.take(pa.array(used)).to_pylist())
    return values, remap[codes]


def _text_sentiment(plan: BatchPlan, texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Sentiment of each event text (NaN without text), as `features.pipeline.add_sentiment` would give it:
    normalised texts, blanks skipped, scored through the shared cache so each distinct text is scored once.

    Works on the distinct values (dictionary encoding): event texts repeat, and most events have none.
    """
    assert plan.sentiment is not None
    values, codes = _distinct_texts(texts)
    per_value = plan.sentiment.cache().score(values, _LazyScorer(plan.sentiment, plan.tracking_uri))
    out = np.full(len(codes), np.nan)
    valid = codes >= 0
    out[valid] = per_value[codes[valid]]
    return out


class _LazyScorer:
    """Loads the sentiment model only when the cache misses: a warm cache never loads torch weights."""

    def __init__(self, source: SentimentSource, tracking_uri: str) -> None:
        self.source, self.tracking_uri = source, tracking_uri

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        scorer = sentiment_scorer(self.source, self.tracking_uri)
        return np.asarray(getattr(scorer, "sentiment_scores", scorer)(texts), dtype="float64")


def bucket_of(ids: pa.ChunkedArray | pa.Array, n_buckets: int) -> np.ndarray:
    """The bucket (0..n_buckets-1) of each raw customer id, from a stable hash of the id as the loaders see it
    (text, stripped). Missing ids go to bucket 0, where the loaders reject them.

    Hashes each distinct id once (dictionary encoding), so it costs little on millions of events.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_encode()
    names = pd.Series(ids.dictionary.to_pandas()).astype("string").str.strip().fillna("")
    hashed = pd.util.hash_array(names.to_numpy(dtype=object), categorize=False)
    per_name = (hashed % np.uint64(n_buckets)).astype(np.int32)
    codes = ids.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = codes >= 0
    out = np.zeros(len(ids), dtype=np.int32)
    out[valid] = per_name[codes[valid]]
    return out


def id_column(plan: BatchPlan, kind: str) -> str:
    if kind == EVENTS:
        return plan.spec.events.id
    return plan.spec.customers.id or ROW_ID


def split_by_bucket(table: pa.Table, buckets: np.ndarray, n_buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, rows of that bucket) for every non-empty bucket, rows in their original order."""
    order = np.argsort(buckets, kind="stable")
    counts = np.bincount(buckets, minlength=n_buckets)
    sorted_table = table.take(pa.array(order))
    start = 0
    for bucket, count in enumerate(counts):
        if count:
            yield bucket, sorted_table.slice(start, int(count))
        start += int(count)


@dataclasses.dataclass(frozen=True)
class Split:
    """One read task: a CSV file, or a run of row groups [first_group, last_group) of a Parquet file.

    `row_offset` is the file row of the split's first row; `id_offset` counts the rows of earlier customer
    files, for specs whose customer id is the row number.
    """

    kind: str
    file_index: int
    first_group: int = -1
    last_group: int = -1
    row_offset: int = 0
    id_offset: int = 0

    @property
    def row_groups(self) -> range | None:
        return None if self.first_group < 0 else range(self.first_group, self.last_group)

    def batches(self, plan: BatchPlan, batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.Table]:
        return iter_raw_batches(
            plan, self.kind, self.file_index, self.row_groups, self.row_offset, self.id_offset, batch_rows
        )


def plan_splits(plan: BatchPlan, rows_per_split: int = READ_BATCH_ROWS) -> list[Split]:
    """The read tasks of both engines: Parquet files cut at row-group boundaries into runs of about
    `rows_per_split` rows, one task per CSV file (it cannot be cut without parsing)."""
    splits = []
    for kind, files in ((CUSTOMERS, plan.customers_files), (EVENTS, plan.events_files)):
        id_offset = 0
        for index, name in enumerate(files):
            if _is_parquet(name):
                meta = pq.ParquetFile(name).metadata
                start_group, start_row, run = 0, 0, 0
                for group in range(meta.num_row_groups):
                    run += meta.row_group(group).num_rows
                    if run >= rows_per_split or group == meta.num_row_groups - 1:
                        splits.append(Split(kind, index, start_group, group + 1, start_row, id_offset))
                        start_row += run
                        start_group, run = group + 1, 0
                file_rows = meta.num_rows
            else:
                splits.append(Split(kind, index, id_offset=id_offset))
                row_ids = kind == CUSTOMERS and plan.spec.customers.id is None
                file_rows = sum(b.num_rows for b in Split(kind, index).batches(plan)) if row_ids else 0
            id_offset += file_rows
    return splits


def unscored_texts(plan: BatchPlan, split: Split) -> list[str]:
    """Distinct event texts of a split (normalised, as `add_sentiment` scores them) that the cache lacks.

    Reads only the text column. Both engines collect these first and score them in one place, so each new
    text is scored exactly once even when several tasks meet it.
    """
    if plan.sentiment is None or split.kind != EVENTS:
        return []
    cache = plan.sentiment.cache()
    cache.refresh()
    table_spec = plan.spec.events
    missing: dict[str, None] = {}
    for batch in _read_file_batches(
        plan.events_files[split.file_index], table_spec.read_options, [plan.text_column], split.row_groups,
        READ_BATCH_ROWS,
    ):  # fmt: skip
        texts = [t for t in _distinct_texts(batch.column(plan.text_column))[0] if t is not None]
        for text, known in zip(texts, cache.known_texts(texts), strict=True):
            if not known:
                missing[text] = None
    return list(missing)


def score_new_texts(plan: BatchPlan, texts: Sequence[str]) -> int:
    """Score texts (in this process) into the sentiment cache; returns how many were not there yet."""
    if plan.sentiment is None or not texts:
        return 0
    cache = plan.sentiment.cache()
    before = len(cache)
    cache.score(list(texts), _LazyScorer(plan.sentiment, plan.tracking_uri))
    return len(cache) - before


def partition_split(plan: BatchPlan, split: Split, index: int, folder: Path) -> int:
    """Write a split's rows by bucket to `folder/<table>/bucket-NNNNN/part-<index>.parquet` (temporary names
    first, renamed at the end, so a rerun of a killed task simply overwrites). Returns rows read."""
    schema = _raw_schema(plan, split.kind)
    writers: dict[int, tuple[pq.ParquetWriter, Path, Path]] = {}
    rows = 0
    try:
        for batch in split.batches(plan):
            buckets = bucket_of(batch.column(id_column(plan, split.kind)), plan.n_buckets)
            for bucket, part in split_by_bucket(batch, buckets, plan.n_buckets):
                if bucket not in writers:
                    final = folder / split.kind / f"bucket-{bucket:05d}" / f"part-{index:05d}.parquet"
                    final.parent.mkdir(parents=True, exist_ok=True)
                    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
                    writers[bucket] = (pq.ParquetWriter(tmp, schema), tmp, final)
                writers[bucket][0].write_table(part)
            rows += batch.num_rows
    except BaseException:
        for writer, tmp, _ in writers.values():
            writer.close()
            tmp.unlink(missing_ok=True)
        raise
    for writer, tmp, final in writers.values():
        writer.close()
        os.replace(tmp, final)
    return rows


# --- step 2: one bucket -----------------------------------------------------------------------------------------


def bucket_spec(plan: BatchPlan, customers_file: Path | None, events_file: Path | None) -> DatasetSpec:
    """The user's spec pointed at one bucket's files (Parquet, user column names, texts already scored)."""
    update: dict[str, Any] = {"reviews": None}
    cs, es = plan.spec.customers, plan.spec.events
    if cs is not None:
        update["customers"] = cs.model_copy(
            update={
                "path": str(customers_file),
                "read_options": {},
                "id": cs.id or ROW_ID,
                "drop": (*cs.drop, SOURCE_FILE, SOURCE_ROW),
            }
        )
    if es is not None:
        if events_file is None:
            update["events"] = None
        else:
            changes: dict[str, Any] = {"path": str(events_file), "read_options": {}, "text": None}
            if plan.text_column:
                changes["sentiment"] = SENTIMENT
            update["events"] = es.model_copy(update=changes)
    return plan.spec.model_copy(update=update)


def score_bucket(
    plan: BatchPlan, customers_file: Path | None, events_file: Path | None
) -> tuple[pa.Table, pa.Table]:
    """Validate, build features and score the customers of one bucket.

    Args:
        customers_file / events_file: the bucket's raw rows: a Parquet file, or a folder of Parquet parts read
            in name order (written from `iter_raw_batches` tables); None when the spec has no such table.
    Returns:
        (results with `RESULT_SCHEMA`, rejected input rows with `REJECT_SCHEMA`, pointing at the source files).
    """
    spec = bucket_spec(plan, customers_file, events_file)
    data = load_data(spec, with_text=False)
    rejects = _source_rejects(plan, data.rejects, customers_file, events_file)
    model = churn_model(plan.model_uri, plan.tracking_uri)
    if data.customers is not None and len(data.customers) == 0:
        return RESULT_SCHEMA.empty_table(), rejects
    features = build_customer_features(data.events, plan.as_of, model.schema, customers=data.customers)
    if len(features) == 0:
        return RESULT_SCHEMA.empty_table(), rejects
    churn_event = plan.spec.events.churn_event if plan.spec.events else None
    why_not = ineligible_reasons(data.customers, data.events, plan.as_of, churn_event)
    why_not = why_not.reindex(pd.Index(features.index).astype(str)).to_numpy(dtype=object)
    eligible = np.array([reason is None for reason in why_not], dtype=bool)
    scored = model.score(features, top_k=plan.top_k)
    return result_table(scored, plan, eligible, why_not), rejects


def result_table(
    scored: pd.DataFrame, plan: BatchPlan, eligible: np.ndarray, why_not: np.ndarray
) -> pa.Table:
    """`ChurnModel.score` output (indexed by customer_id) as an Arrow table with `RESULT_SCHEMA`; ineligible
    customers keep their row (the engines drop or flag them) with no risk or band and empty reasons."""
    n = len(scored)
    ids = pd.Index(scored.index).astype(str)
    lineage = plan.sentiment.lineage if plan.sentiment is not None else None

    def scored_only(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind, mask=~eligible)

    reasons = reasons_array([row if ok else [] for row, ok in zip(scored["reasons"], eligible, strict=True)])
    return pa.table(
        {
            "customer_id": pa.array(ids.to_numpy(dtype=object), pa.string()),
            "churn_risk": scored_only(scored["churn_risk"].to_numpy(dtype="float64"), pa.float64()),
            "risk_band": scored_only(scored["risk_band"].astype(str).to_numpy(dtype=object), pa.string()),
            "reasons": reasons,
            "base_value": scored_only(scored["base_value"].to_numpy(dtype="float64"), pa.float64()),
            "other_contribution": scored_only(
                scored["other_contribution"].to_numpy(dtype="float64"), pa.float64()
            ),
            "eligible": pa.array(eligible, pa.bool_()),
            "ineligible_reason": pa.array(why_not, pa.string()),
            AS_OF: pa.array(np.full(n, np.datetime64(plan.as_of, "D")), pa.date32()),
            "model_version": pa.array(np.full(n, str(plan.model_version), dtype=object), pa.string()),
            "sentiment_model_version": pa.array(
                [lineage.version if lineage is not None else None] * n, pa.string()
            ),
            "sentiment_scoring_id": pa.array(
                [lineage.scoring_id if lineage is not None else None] * n, pa.string()
            ),
        },
        schema=RESULT_SCHEMA,
    )


def reasons_array(reasons: Sequence[Any]) -> pa.Array:
    """Each customer's reasons as list<struct<feature, value, contribution>>; values as text so that numeric
    and categorical features share one column."""
    rows = [_reason_items(row) for row in reasons]
    flat = [item for row in rows for item in row]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    values = [item.get("value") for item in flat]
    structs = pa.StructArray.from_arrays(
        [
            pa.array([str(item["feature"]) for item in flat], pa.string()),
            pa.array([None if _missing(v) else reason_value_text(v) for v in values], pa.string()),
            pa.array(np.fromiter((item.get("contribution", np.nan) for item in flat), float, len(flat))),
        ],
        fields=list(REASON_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), structs, type=pa.list_(REASON_TYPE))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _reason_items(row: Any) -> list[dict[str, Any]]:
    if row is None:
        return []
    if isinstance(row, str):
        row = json.loads(row)
    if all(type(item) is dict for item in row):
        return row
    items = []
    for item in row:
        if isinstance(item, dict):
            items.append(item)
        elif dataclasses.is_dataclass(item):
            items.append(dataclasses.asdict(item))
        elif hasattr(item, "model_dump"):
            items.append(item.model_dump())
        else:
            feature, value, contribution = item
            items.append({"feature": feature, "value": value, "contribution": contribution})
    return items


def reason_value_text(value: Any) -> str:
    """A reason's feature value as text: floats in their shortest exact form (`repr`), so the batch output
    carries the very value the model saw (one truth: comparable bit for bit with the service's JSON)."""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


def _source_rejects(
    plan: BatchPlan, rejects: pd.DataFrame, customers_file: Path | None, events_file: Path | None
) -> pa.Table:
    """The loaders' rejects of a bucket, with `file` and `row` pointing at the user's file and data row."""
    if len(rejects) == 0:
        return REJECT_SCHEMA.empty_table()
    parts = []
    for table, bucket_file, files in (
        (CUSTOMERS, customers_file, plan.customers_files),
        (EVENTS, events_file, plan.events_files),
    ):
        mine = rejects[rejects["table"] == table]
        if len(mine) == 0:
            continue
        source = _bucket_table(bucket_file, [SOURCE_FILE, SOURCE_ROW])
        file_index = source.column(SOURCE_FILE).to_numpy()
        source_row = source.column(SOURCE_ROW).to_numpy()
        rows = mine["row"].to_numpy(dtype=np.int64)
        parts.append(
            pd.DataFrame(
                {
                    "table": table,
                    "file": np.asarray(files, dtype=object)[file_index[rows]],
                    "row": source_row[rows],
                    "customer_id": mine["customer_id"].astype("string").to_numpy(dtype=object, na_value=None),
                    "column": mine["column"].astype(str).to_numpy(dtype=object),
                    "reason": mine["reason"].astype(str).to_numpy(dtype=object),
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    return pa.Table.from_pandas(frame, schema=REJECT_SCHEMA, preserve_index=False)


def _bucket_files(path: Path) -> list[Path]:
    """A bucket's files in the order the loaders read them: the file itself, or a folder's files by name."""
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.suffix == ".parquet") if path.is_dir() else [path]


def _bucket_table(path: Path, columns: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in _bucket_files(path)])


# --- summary ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchSummary:
    """What a batch run did. `render()` for the terminal, `top_risk(n)` for the riskiest customers."""

    out: Path
    rejects_path: Path
    engine: str
    model_uri: str
    model_version: str
    as_of: dt.date
    n_customers: int
    band_counts: dict[str, int]
    n_rejected: int
    rejected_by_reason: dict[str, int]
    seconds: float
    n_buckets: int = 0
    resumed_buckets: int = 0
    bands_order: tuple[str, ...] = ()
    ineligible_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    ineligible: str = "exclude"

    @property
    def customers_per_second(self) -> float:
        return self.n_customers / self.seconds if self.seconds > 0 else float("nan")

    def render(self) -> str:
        """Band counts, time, customers per second, rejected rows by reason, where the files are."""
        order = [b for b in self.bands_order if b in self.band_counts]
        order += sorted(b for b in self.band_counts if b not in order)
        lines = [
            f"scored {self.n_customers:,} customers as of {self.as_of} with churn model v{self.model_version} "
            f"({self.engine} engine) in {self.seconds:.1f}s ({self.customers_per_second:,.0f} customers/s)",
        ]
        for band in order:
            count = self.band_counts[band]
            share = count / self.n_customers if self.n_customers else 0.0
            lines.append(f"  {band:<10}{count:>12,}  {share:6.1%}")
        if self.ineligible_by_reason:
            n = sum(self.ineligible_by_reason.values())
            how = "flagged eligible=false, no risk" if self.ineligible == "flag" else "left out"
            lines.append(f"  not scored, not customers at {self.as_of} ({how}): {n:,}")
            for reason, count in sorted(self.ineligible_by_reason.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {count:>10,}  {reason}")
        if self.resumed_buckets:
            lines.append(f"  resumed: {self.resumed_buckets} of {self.n_buckets} buckets were already done")
        lines.append(
            f"  rejected input rows: {self.n_rejected:,}"
            + (f" -> {self.rejects_path}" if self.n_rejected else "")
        )
        for reason, count in sorted(self.rejected_by_reason.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"    {count:>10,}  {reason}")
        lines.append(f"  wrote {self.out}")
        return "\n".join(lines)

    def top_risk(self, n: int = 10) -> pd.DataFrame:
        """The `n` riskiest customers: customer_id, churn_risk, risk_band and reasons as readable text."""
        return top_risk(self.out, n)


def top_risk(path: str | Path, n: int = 10) -> pd.DataFrame:
    """The `n` highest `churn_risk` rows of a scores file (or Spark output folder), ties broken by id."""
    dataset = pq.ParquetDataset(str(path))
    head = dataset.read(columns=["customer_id", "churn_risk"])
    risk = head.column("churn_risk").fill_null(-1.0).to_numpy()  # ineligible (flagged) rows last
    ids = head.column("customer_id").to_numpy(zero_copy_only=False)
    order = np.lexsort((ids, -risk))[:n]
    table = dataset.read(columns=["customer_id", "churn_risk", "risk_band", "reasons"]).take(pa.array(order))
    frame = table.to_pandas()
    frame["reasons"] = [
        "; ".join(f"{r['feature']}={r['value']} ({r['contribution']:+.3f})" for r in reasons)
        for reasons in frame["reasons"]
    ]
    return frame.reset_index(drop=True)


def _band_counts(table: pa.Table) -> dict[str, int]:
    """Customers per risk band, and per reason for ineligible ones (keys `ineligible: <reason>`)."""
    counts = {}
    for column, prefix in (("risk_band", ""), ("ineligible_reason", INELIGIBLE_PREFIX)):
        for item in table.column(column).drop_null().value_counts().to_pylist():
            counts[prefix + str(item["values"])] = int(item["counts"])
    return counts


INELIGIBLE_PREFIX = "ineligible: "


def split_band_counts(counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(`_band_counts` bands, ineligible reasons) apart."""
    bands = {k: v for k, v in counts.items() if not k.startswith(INELIGIBLE_PREFIX)}
    reasons = {k[len(INELIGIBLE_PREFIX) :]: v for k, v in counts.items() if k.startswith(INELIGIBLE_PREFIX)}
    return bands, reasons


def _reason_counts(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    keys = pa.compute.binary_join_element_wise(table.column("table"), table.column("reason"), ": ")
    return {str(item["values"]): int(item["counts"]) for item in keys.value_counts().to_pylist()}


# --- the local engine -------------------------------------------------------------------------------------------


def rejects_path_for(out: Path) -> Path:
    """`<out>.rejects.parquet` beside the output (`scores.parquet` -> `scores.rejects.parquet`)."""
    out = Path(out)
    stem = out.name[: -len(".parquet")] if out.name.endswith(".parquet") else out.name
    return out.with_name(f"{stem}.rejects.parquet")


def _bucket_name(bucket: int) -> str:
    return f"bucket-{bucket:05d}.parquet"


_worker_plan: BatchPlan | None = None


def _init_worker(plan: BatchPlan, model_file: str, parent_pid: int) -> None:
    """Pool worker start-up: one BLAS/OpenMP thread (two workers share two cores), the driver's model, and
    exit if the driver dies (a killed driver must not leave workers behind)."""
    global _worker_plan, _IN_WORKER
    _worker_plan, _IN_WORKER = plan, True
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    _watch_parent(parent_pid)
    install_churn_model(plan.model_uri, Path(model_file).read_bytes())
    _limit_threads()


def _limit_threads() -> None:
    import sys

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    pa.set_cpu_count(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _watch_parent(parent_pid: int) -> None:
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _unscored_texts_in_worker(split: Split) -> list[str]:
    assert _worker_plan is not None, "worker not initialised"
    return unscored_texts(_worker_plan, split)


def _partition_split_in_worker(work: str, index: int, split: Split) -> int:
    """Partition one split, then mark it done (a rerun skips marked splits)."""
    assert _worker_plan is not None, "worker not initialised"
    folder = Path(work)
    rows = partition_split(_worker_plan, split, index, folder / "partition")
    _atomic_write_bytes(str(rows).encode(), folder / "splits" / f"{index:05d}.done")
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
            pq.write_table(_raw_schema(plan, kind).empty_table(), parts / "part-empty.parquet")
        inputs[kind] = parts
    results, rejects = score_bucket(plan, inputs[CUSTOMERS], inputs[EVENTS])
    name = _bucket_name(bucket)
    _atomic_write_table(rejects, folder / "rejects" / name)
    _atomic_write_table(results, folder / "scored" / name)
    sleep_after = float(os.environ.get(SLEEP_HOOK_ENV) or 0)
    if sleep_after:
        time.sleep(sleep_after)
    return results.num_rows


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    that dies leaves nothing at `out` (the merge writes a temporary file and renames it).
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
    done = {b for b in range(plan.n_buckets) if (work / "scored" / _bucket_name(b)).exists()}
    resumed = len(done)
    if resumed:
        logger.info("resuming %s: %d of %d buckets already scored", work, resumed, plan.n_buckets)
    todo = [b for b in range(plan.n_buckets) if b not in done]
    # A file, not an initarg: spawn writes initargs into a pipe and would block until each worker has started.
    model_file = work / "model.pkl"
    _atomic_write_bytes(model_bytes(churn_model(plan.model_uri, plan.tracking_uri)), model_file)
    context = multiprocessing.get_context("spawn")
    bars = _Bars(progress)
    with cf.ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=context,
        initializer=_init_worker,
        initargs=(plan, str(model_file), os.getpid()),
    ) as pool:
        try:
            if not (work / "partition.done").exists():
                _partition_in_pool(plan, work, pool, bars)
            tick = time.perf_counter()
            futures = [pool.submit(_score_bucket_in_worker, str(work), b) for b in todo]
            bars.run(futures, "score", "bucket", total=plan.n_buckets, initial=resumed)
        except BrokenProcessPool:
            raise BatchError(
                "a batch worker died (out of memory?); rerun to resume, with a smaller --chunk-customers"
            ) from None
    logger.info("scored %d bucket(s) in %.1fs", len(todo), time.perf_counter() - tick)
    n_customers, counts, n_rejected, reasons = merge_outputs(plan, work, out)
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
    )


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
    rejects_path = rejects_path_for(out)
    tmp_out = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    tmp_rejects = rejects_path.with_name(f".{rejects_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        n_rejected, reasons = _concatenate_buckets(
            plan, work / "rejects", REJECT_SCHEMA, tmp_rejects, _reason_counts
        )
        n_customers, bands = _concatenate_buckets(plan, work / "scored", RESULT_SCHEMA, tmp_out, _band_counts)
        os.replace(tmp_rejects, rejects_path)
        os.replace(tmp_out, out)
    finally:
        tmp_out.unlink(missing_ok=True)
        tmp_rejects.unlink(missing_ok=True)
    return n_customers, bands, n_rejected, reasons


def _concatenate_buckets(
    plan: BatchPlan, folder: Path, schema: pa.Schema, path: Path, count: Callable[[pa.Table], dict[str, int]]
) -> tuple[int, dict[str, int]]:
    """Write the buckets' files in `folder` (bucket order) into one Parquet file; its rows and summed counts."""
    rows, counts = 0, {}
    with pq.ParquetWriter(path, schema) as writer:
        for bucket in range(plan.n_buckets):
            table = pq.read_table(folder / _bucket_name(bucket), schema=schema)
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
    Returns:
        A `BatchSummary`; `.render()` prints it, `.top_risk(10)` lists the riskiest customers with reasons.
    """
    started = time.perf_counter()
    if engine not in ("local", "spark"):
        raise BatchError(f"--engine: {engine!r} is not one of local, spark")
    spec = load_spec(spec_path)
    as_of_date = parse_as_of(as_of)
    to_timestamp_ns(as_of_date)
    tracking = absolute_tracking_uri()
    _set_tracking_uri(tracking)
    uri, _ = resolve_model_uri(model_uri or DEFAULT_CHURN_MODEL)
    model = churn_model(uri, tracking)
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
    )
    injected = text_scorer is not None and plan.sentiment is not None
    previous = None
    if injected:
        if engine == "spark":
            raise BatchError(
                "text_scorer: the Spark engine loads the sentiment model in its workers; pass a URI"
            )
        if getattr(text_scorer, "digest", None) is not None:
            from models.lineage import check_lineage

            check_lineage(plan.sentiment.lineage, text_scorer, what="text_scorer")
        previous = _sentiment_models.get(plan.sentiment.lineage.scoring_id)
        _sentiment_models[plan.sentiment.lineage.scoring_id] = text_scorer
    logger.info(
        "scoring %s as of %s with %s (v%s): %d bucket(s), engine %s",
        spec.source,
        as_of_date,
        uri,
        plan.model_version,
        plan.n_buckets,
        engine,
    )
    try:
        if engine == "spark":
            from serving.spark_batch import run_spark

            return run_spark(plan, out, master=master, progress=progress, started=started)
        return run_local(
            plan,
            out,
            workers=workers,
            work_dir=work_dir,
            progress=progress,
            keep_work=keep_work,
            started=started,
        )
    finally:
        if injected:
            _sentiment_models.pop(plan.sentiment.lineage.scoring_id, None)
            if previous is not None:
                _sentiment_models[plan.sentiment.lineage.scoring_id] = previous


def read_scores(path: str | Path) -> pd.DataFrame:
    """A scores file (local) or folder (Spark) as a frame sorted by customer_id, reasons as lists of dicts."""
    frame = pq.ParquetDataset(str(path)).read().to_pandas()
    frame["reasons"] = [list(reasons) for reasons in frame["reasons"]]
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)


def _ipc_bytes(table: pa.Table) -> bytes:
    """A table as compressed Arrow IPC stream bytes (how the Spark engine ships bucket slices)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _ipc_table(payloads: Sequence[bytes], schema: pa.Schema) -> pa.Table:
    tables = [pa.ipc.open_stream(pa.py_buffer(p)).read_all() for p in payloads]
    return pa.concat_tables(tables) if tables else schema.empty_table()
