"""Raw input rows in batches for the engines: Parquet row groups or CSV chunks (columns as text), cast to one
schema per table so every bucket file of a table agrees.

The rows come from the one raw reader (`features.raw`), as the loaders read them; the loaders then validate
each bucket's rows (`features.io`), so a customer's input is identical whichever engine or bucketing reads it.
A CSV row with a wrong number of fields carries its reason in `ROW_PROBLEM` and becomes a reject.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from batch.plan import ASPECT, CUSTOMERS, EVENTS, ROW_ID, SENTIMENT, SOURCE_FILE, SOURCE_ROW, BatchPlan
from features.raw import ROW_PROBLEM, DataLoadError, csv_header, is_parquet, iter_csv_rows, parquet_file

logger = logging.getLogger(__name__)


def raw_schema(plan: BatchPlan, kind: str) -> pa.Schema:
    """The schema every raw batch of `kind` is cast to, so all bucket files of a table agree.

    CSV columns are read as text (the loaders parse numbers and dates from text, as they do from a whole CSV);
    Parquet columns keep the first file's types (dictionaries decoded).
    """
    files = plan.customers_files if kind == CUSTOMERS else plan.events_files
    table = plan.spec.customers if kind == CUSTOMERS else plan.spec.events
    first = files[0]
    if is_parquet(first):
        schema = parquet_file(first).schema_arrow
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
        if (
            ROW_PROBLEM in schema.names and ROW_PROBLEM not in names
        ):  # a staged table's rows keep their reasons
            fields.append(pa.field(ROW_PROBLEM, pa.string()))
        schema = pa.schema(fields)
    else:
        header = csv_header(first, table.read_options)
        names = list(plan.events_columns) if kind == EVENTS else header
        missing = [n for n in names if n not in header]
        if missing:
            raise DataLoadError(f"{first}: column(s) {', '.join(map(repr, missing))} not found")
        schema = pa.schema([pa.field(n, pa.string()) for n in names])
    if kind == CUSTOMERS and table.id is None:
        schema = schema.append(pa.field(ROW_ID, pa.string()))
    if kind == EVENTS and plan.text_column:
        if not plan.evidence:  # the text is read only to be scored; the evidence quotes it
            schema = schema.remove(schema.get_field_index(plan.text_column))
        schema = schema.append(pa.field(SENTIMENT, pa.float64()))
        if plan.aspects is not None:
            schema = schema.append(pa.field(ASPECT, pa.string()))
    if any(not is_parquet(file) for file in files) and ROW_PROBLEM not in schema.names:
        schema = schema.append(pa.field(ROW_PROBLEM, pa.string()))
    return schema.append(pa.field(SOURCE_FILE, pa.int32())).append(pa.field(SOURCE_ROW, pa.int64()))


def _is_index(name: str) -> bool:
    return bool(re.fullmatch(r"__index_level_\d+__", name))


def cast_column(
    column: pa.ChunkedArray | pa.Array, target: pa.DataType, file: str
) -> pa.Array | pa.ChunkedArray:
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


def read_file_batches(
    name: str,
    read_options: dict[str, Any],
    columns: list[str],
    row_groups: Sequence[int] | None,
    batch_rows: int,
) -> Iterator[pa.Table]:
    if is_parquet(name):
        handle = parquet_file(name)
        try:
            groups = list(range(handle.num_row_groups)) if row_groups is None else list(row_groups)
            if not groups:
                return
            for batch in handle.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
                yield pa.Table.from_batches([batch])
        except (OSError, pa.ArrowInvalid) as error:
            raise DataLoadError(f"{name}: cannot read Parquet ({error})") from None
        return
    for frame in iter_csv_rows(name, read_options, columns, batch_rows):
        yield pa.Table.from_pandas(frame, preserve_index=False)
