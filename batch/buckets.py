"""Customers grouped into buckets by a stable hash of their id, and one bucket scored end to end.

`iter_raw_batches` reads a split's rows (texts already turned into sentiment), `partition_split` writes them by
bucket, and `score_bucket` runs the project's loaders (with rejects), the one feature engine and the churn model
on one bucket: nothing here computes a feature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch.output import REJECT_SCHEMA, RESULT_SCHEMA, result_table
from batch.plan import (
    ASPECT,
    CUSTOMERS,
    EVENTS,
    READ_BATCH_ROWS,
    ROW_ID,
    SENTIMENT,
    SOURCE_FILE,
    SOURCE_ROW,
    BatchPlan,
)
from batch.read import cast_column, raw_schema, read_file_batches
from batch.texts import text_aspects, text_sentiment
from batch.workers import (
    aspect_labeler,
    aspect_model,
    churn_model,
    collector_paused,
    phrase_finder,
    sentiment_scorer,
    survival_model,
)
from churnsense.files import atomic_path
from features.engine import build_customer_features
from features.evidence import EvidenceFinder
from features.labels import ineligible_reasons
from features.pipeline import load_data
from features.raw import ROW_PROBLEM, is_parquet, parquet_file
from features.spec import DatasetSpec
from models.aspects import annotate_aspects
from models.phrases import annotate

logger = logging.getLogger(__name__)


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
        Tables cast to `raw_schema(plan, kind)`, before any validation (the loaders do that per bucket) and
        with event texts already turned into `SENTIMENT` scores.
    """
    files = plan.customers_files if kind == CUSTOMERS else plan.events_files
    table_spec = plan.spec.customers if kind == CUSTOMERS else plan.spec.events
    name = files[file_index]
    schema = raw_schema(plan, kind)
    added = (SOURCE_FILE, SOURCE_ROW, ROW_ID, SENTIMENT, ASPECT, ROW_PROBLEM)
    read_names = [f.name for f in schema if f.name not in added]
    if (
        ROW_PROBLEM in schema.names
        and is_parquet(name)
        and ROW_PROBLEM in parquet_file(name).schema_arrow.names
    ):
        read_names.append(ROW_PROBLEM)  # a staged table (features.sources): its rows' reasons travel along
    if kind == EVENTS and plan.text_column and plan.text_column not in read_names:
        read_names.append(plan.text_column)
    row = row_offset
    for batch in read_file_batches(name, table_spec.read_options, read_names, row_groups, batch_rows):
        n = batch.num_rows
        columns: dict[str, pa.Array | pa.ChunkedArray] = {}
        for field in schema:
            if field.name == SOURCE_FILE:
                columns[field.name] = pa.array(np.full(n, file_index, dtype=np.int32))
            elif field.name == SOURCE_ROW:
                columns[field.name] = pa.array(np.arange(row, row + n, dtype=np.int64))
            elif field.name == ROW_ID:
                columns[field.name] = pa.array(np.arange(id_offset + row, id_offset + row + n).astype(str))
            elif field.name == ROW_PROBLEM and ROW_PROBLEM not in batch.column_names:
                columns[field.name] = pa.nulls(n, pa.string())  # a Parquet file: no field counts to check
            elif field.name == SENTIMENT:
                columns[field.name] = pa.array(text_sentiment(plan, batch.column(plan.text_column)))
            elif field.name == ASPECT:
                columns[field.name] = pa.array(
                    text_aspects(plan, batch.column(plan.text_column)), pa.string()
                )
            else:
                columns[field.name] = cast_column(batch.column(field.name), field.type, name)
        row += n
        yield pa.table(columns, schema=schema)


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
            if is_parquet(name):
                meta = parquet_file(name).metadata
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


def partition_split(plan: BatchPlan, split: Split, index: int, folder: Path) -> int:
    """Write a split's rows by bucket to `folder/<table>/bucket-NNNNN/part-<index>.parquet` (temporary names
    first, renamed at the end, so a rerun of a killed task simply overwrites). Returns rows read."""
    schema = raw_schema(plan, split.kind)
    # Parquet dictionary pages only for the columns the loaders read as dictionaries (the events' id and type):
    # elsewhere (timestamps, values, row numbers, CSV text) they are built and then dropped, for a third of the
    # write time.
    coded = [] if split.kind == CUSTOMERS else [plan.spec.events.id, plan.spec.events.type]
    coded = [name for name in coded if name in schema.names]
    writers: dict[int, pq.ParquetWriter] = {}
    rows = 0
    # One open writer per bucket, each on a temporary name renamed when the split is done (removed on error).
    with contextlib.ExitStack() as files:
        for batch in split.batches(plan):
            buckets = bucket_of(batch.column(id_column(plan, split.kind)), plan.n_buckets)
            for bucket, part in split_by_bucket(batch, buckets, plan.n_buckets):
                if bucket not in writers:
                    final = folder / split.kind / f"bucket-{bucket:05d}" / f"part-{index:05d}.parquet"
                    writers[bucket] = files.enter_context(
                        pq.ParquetWriter(
                            files.enter_context(atomic_path(final)), schema, use_dictionary=coded or False
                        )
                    )
                writers[bucket].write_table(part)
            rows += batch.num_rows
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
            # Texts stay only when the evidence quotes them; the features read their scores.
            text = es.text if plan.evidence and es.text in plan.events_columns else None
            changes: dict[str, Any] = {"path": str(events_file), "read_options": {}, "text": text}
            if plan.text_column:
                changes["sentiment"] = SENTIMENT
            if plan.aspects is not None:
                changes["aspect"] = ASPECT
            update["events"] = es.model_copy(update=changes)
    return plan.spec.model_copy(update=update)


class BucketResult(NamedTuple):
    """One bucket's result rows, rejected input rows, and input rows read by table (for the summary's sums)."""

    results: pa.Table
    rejects: pa.Table
    rows_in: dict[str, int]


def score_bucket(plan: BatchPlan, customers_file: Path | None, events_file: Path | None) -> BucketResult:
    """Validate, build features and score the customers of one bucket.

    Args:
        customers_file / events_file: the bucket's raw rows: a Parquet file, or a folder of Parquet parts read
            in name order (written from `iter_raw_batches` tables); None when the spec has no such table.
    Returns:
        results with `RESULT_SCHEMA`, rejected input rows with `REJECT_SCHEMA` (pointing at the source files),
        and the rows of each table in the bucket: every one of them is scored, not a customer at `as_of`, or
        rejected, and the summary shows that sum.
    """
    with collector_paused():
        return _score_bucket(plan, customers_file, events_file)


def _score_bucket(plan: BatchPlan, customers_file: Path | None, events_file: Path | None) -> BucketResult:
    spec = bucket_spec(plan, customers_file, events_file)
    rows_in = {
        kind: sum(pq.ParquetFile(p).metadata.num_rows for p in _bucket_files(path))
        for kind, path in ((CUSTOMERS, customers_file), (EVENTS, events_file))
        if path is not None
    }
    model = churn_model(plan.model_uri, plan.tracking_uri, plan.model_digest)
    # Profile values the model reads as numbers must be numbers: a customer with "$30" is rejected (as the
    # service answers 400), not scored as if the value were missing.
    data = load_data(spec, with_text=plan.evidence, numeric_columns=model.schema.profile_numeric)
    rejects = _source_rejects(plan, data.rejects, customers_file, events_file)
    if data.customers is not None and len(data.customers) == 0:
        return BucketResult(RESULT_SCHEMA.empty_table(), rejects, rows_in)
    features = build_customer_features(data.events, plan.as_of, model.schema, customers=data.customers)
    if len(features) == 0:
        return BucketResult(RESULT_SCHEMA.empty_table(), rejects, rows_in)
    churn_event = plan.spec.events.churn_event if plan.spec.events else None
    why_not = ineligible_reasons(data.customers, data.events, plan.as_of, churn_event)
    ids = pd.Index(features.index).astype(str)
    why_not = why_not.reindex(ids).to_numpy(dtype=object)
    eligible = np.array([reason is None for reason in why_not], dtype=bool)
    # Only customers at `as_of` are scored (the others keep their row, without a score): their features
    # were built with everyone's, but their contributions (TreeSHAP, most of a bucket's time) are not needed.
    features = features if eligible.all() else features[eligible]
    # Reasons as columns, straight into Arrow; as dicts only when the evidence finder adds to them.
    scored, columns = (
        (model.score(features, top_k=plan.top_k), None)
        if plan.evidence
        else model.score_columns(features, top_k=plan.top_k)
    )
    if plan.evidence:
        reasons = dict(zip(pd.Index(scored.index).astype(str), scored["reasons"], strict=True))
        EvidenceFinder(model.schema).attach(data.events, plan.as_of, reasons)
        quoted = [r["evidence"] for rows in reasons.values() for r in rows]
        if plan.phrases and plan.sentiment is not None:  # quoted texts: the phrase that drove their sentiment
            classifier = sentiment_scorer(plan.sentiment, plan.tracking_uri)
            annotate(quoted, phrase_finder(plan.sentiment, classifier.labels), classifier.predict_proba)
        if plan.aspects is not None:  # ... and what they are about: the churn model's own aspect model (the
            # only one `make_plan` accepts then), through the cache its features were just labelled from
            annotate_aspects(quoted, aspect_labeler(plan.aspects, plan.tracking_uri))
        elif plan.aspect_model is not None:
            annotate_aspects(quoted, aspect_model(plan.aspect_model, plan.tracking_uri))
    survival = survival_model(plan)
    times = survival.summary(features) if survival is not None else None
    table = result_table(ids, scored, plan, eligible, why_not, times, plan.survival_version, columns)
    return BucketResult(table, rejects, rows_in)


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
