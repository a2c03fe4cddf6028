"""Parquet files to pandas frames, fast for the sizes a nightly batch reads (20M events, a million ids).

`read_parquet` is what `features.io.read_table` calls for a Parquet file: its ids and event types come back as
pandas categoricals, its times as nanoseconds. Two things pyarrow's `to_pandas` does slowly are done here:
unifying the id dictionaries of many row groups (`categorical_of`), and holding the whole file twice while
converting it (`_read_row_groups` copies one row group at a time into the final arrays).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.raw import ROW_PROBLEM, DataLoadError, parquet_file


def read_parquet(file: Path, columns: list[str] | None, dictionary_columns: tuple[str, ...]) -> pd.DataFrame:
    schema = parquet_file(file).schema_arrow
    if columns is not None and ROW_PROBLEM in schema.names:  # a batch bucket's rows keep their CSV problems
        columns = [*columns, ROW_PROBLEM]
    wanted = [c for c in dictionary_columns if c in schema.names and pa.types.is_string(schema.field(c).type)]
    try:
        names = schema.names if columns is None else columns
        fast = _read_row_groups(file, names, dictionary_columns) if len(set(names)) == len(names) else None
        if fast is not None:
            return fast
        table = pq.read_table(file, columns=columns, read_dictionary=wanted or None)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataLoadError(f"{file}: cannot read Parquet ({error})") from None
    coded = [
        c for c in dictionary_columns if c in table.column_names and _is_text(table.schema.field(c).type)
    ]
    rest = table.drop_columns(coded)
    try:  # times become nanoseconds in the one conversion pass (not in a second copy afterwards)
        frame = rest.to_pandas(coerce_temporal_nanoseconds=True)
    except pa.ArrowInvalid:  # times beyond pandas' nanosecond range: as they are (refused later, named)
        frame = rest.to_pandas()
    for position, name in enumerate(table.column_names):  # in file order; inserting copies no other column
        if name in coded:
            frame.insert(position, name, categorical_of(table.column(name)))
    return frame


def read_parquet_parts(
    files: list[Path], columns: list[str] | None, dictionary_columns: tuple[str, ...]
) -> pd.DataFrame | None:
    """Several Parquet files of one schema (a batch bucket's parts) as one frame, their rows in file order, read
    as one file's row groups are: one id dictionary for all of them (`categorical_of`), not a frame per file
    joined by `pd.concat`, which turns categoricals of different categories into text and back. None when the
    files differ in schema, a column does not suit the row-group path or a file cannot be read (the caller reads them
    one by one)."""
    try:
        schemas = [parquet_file(file).schema_arrow for file in files]
        if any(not schema.equals(schemas[0]) for schema in schemas[1:]):
            return None
        names = list(schemas[0].names) if columns is None else list(columns)
        if ROW_PROBLEM in schemas[0].names and columns is not None:
            names.append(ROW_PROBLEM)
        if len(set(names)) != len(names) or any(name not in schemas[0].names for name in names):
            return None
        return _read_row_groups(files, names, dictionary_columns)
    except (OSError, pa.ArrowInvalid):  # read one by one, the error names the file it is in
        return None


def _read_row_groups(
    files: Path | list[Path], columns: list[str], dictionary_columns: tuple[str, ...]
) -> pd.DataFrame | None:
    """The files' `columns` read one row group at a time into their final arrays (the files' row groups one
    after the other), when every column is one this path takes (ids and types as text, float64 values, times
    without a time zone); None otherwise.

    The whole-table read holds the file twice at its peak (Arrow's chunks and pandas' copy) and converts the
    times in a second pass; this holds one row group, converts as it copies, and gives identical frames."""
    files = [files] if isinstance(files, Path | str) else list(files)
    schema = pq.ParquetFile(files[0]).schema_arrow
    coded, numeric = [], {}
    for name in columns:
        kind = schema.field(name).type
        if name in dictionary_columns and _is_text(kind):
            coded.append(name)
        elif pa.types.is_float64(kind):
            numeric[name] = (np.dtype("float64"), kind)
        elif pa.types.is_timestamp(kind) and kind.tz is None:
            numeric[name] = (np.dtype("datetime64[ns]"), pa.timestamp("ns"))
        else:
            return None
    groups = []  # (file, row group) in reading order
    sizes = []
    for file in files:
        meta = pq.ParquetFile(file).metadata
        for group in range(meta.num_row_groups):
            groups.append((file, group))
            sizes.append(meta.row_group(group).num_rows)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    arrays = {name: np.empty(int(starts[-1]), dtype=dtype) for name, (dtype, _) in numeric.items()}
    own = threading.local()  # open files per thread: a ParquetFile is not to be shared between threads

    def load(at_group: int) -> dict[str, list[pa.Array]] | None:
        file, group = groups[at_group]
        handles = own.__dict__.setdefault("handles", {})
        if file not in handles:
            handles[file] = pq.ParquetFile(file, read_dictionary=coded)
        part = handles[file].read_row_group(group, columns=columns)
        at = int(starts[at_group])
        for name, (_, arrow_type) in numeric.items():
            try:
                values = part.column(name).cast(arrow_type).to_numpy()
            except pa.ArrowInvalid:  # a time past pandas' nanosecond range: the whole-table read handles it
                return None
            arrays[name][at : at + len(values)] = values
        return {name: part.column(name).chunks for name in coded}

    # Row groups in threads (Arrow's CPU count: one in a batch worker), each into its own rows of the arrays.
    with cf.ThreadPoolExecutor(max(1, pa.cpu_count()), thread_name_prefix="parquet") as pool:
        loaded = list(pool.map(load, range(len(groups))))
    if any(part is None for part in loaded):
        return None
    chunks = {name: [chunk for part in loaded for chunk in part[name]] for name in coded}
    frame = pd.DataFrame(arrays, copy=False)
    for position, name in enumerate(columns):
        if name in coded:
            column = pa.chunked_array(chunks[name]) if chunks[name] else pa.chunked_array([], pa.string())
            frame.insert(position, name, categorical_of(column))
    return frame


def _encode(dictionaries: list[pa.Array]) -> tuple[np.ndarray, pa.Array]:
    """Each entry's position in the dictionaries' union (-1 for a null entry), and that union in order of
    first appearance. The two halves are encoded in threads, then their (smaller) unions once more."""

    def encode(arrays: list[pa.Array]) -> tuple[np.ndarray, pa.Array]:
        try:
            every = pa.concat_arrays(arrays)
        except (pa.ArrowInvalid, pa.ArrowCapacityError):  # more than 2 GB of text: 64-bit offsets
            every = pa.concat_arrays([a.cast(pa.large_string()) for a in arrays])
        encoded = pc.dictionary_encode(every)
        return encoded.indices.fill_null(-1).to_numpy(), encoded.dictionary  # int32

    if len(dictionaries) < 2 or pa.cpu_count() < 2:
        return encode(dictionaries)
    middle = len(dictionaries) // 2
    with cf.ThreadPoolExecutor(2, thread_name_prefix="encode") as pool:  # Arrow's kernels free the GIL
        (first, first_union), (second, second_union) = pool.map(
            encode, (dictionaries[:middle], dictionaries[middle:])
        )
    # The union of the two unions keeps the first half's order, then the second's new entries: the order of
    # first appearance over all dictionaries, as one pass would give it.
    where, union = encode([first_union, second_union])
    lookup = np.concatenate([where[first], where[len(first_union) + second]])
    lookup[np.concatenate([first, second]) < 0] = -1
    return lookup, union


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


_SMALL = 100_000  # summed dictionary entries of all chunks


def categorical_of(column: pa.ChunkedArray) -> pd.Categorical:
    """A text or dictionary column as a pandas categorical: the categories in order of first appearance (as
    pyarrow's `to_pandas` gives them), missing values as code -1.

    pyarrow's `to_pandas` unifies the dictionaries of the chunks one by one, and a Parquet row group's
    dictionary comes with each of its chunks: 22M events whose 25 row groups each hold 200k customer ids took
    4.8 s. Here each distinct dictionary is encoded once, in one pass over all of them, and every chunk's codes
    are looked up from that in one gather (1.3 s)."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    dictionaries: list[pa.Array] = []
    first_of: dict[tuple[int, ...], int] = {}  # a dictionary's buffers -> where it starts in `dictionaries`
    starts = np.empty(column.num_chunks, dtype=np.int64)
    total = 0
    for i, chunk in enumerate(column.chunks):
        values = chunk.dictionary
        key = (len(values), values.offset, *(b.address if b is not None else 0 for b in values.buffers()))
        if key not in first_of:
            first_of[key] = total
            dictionaries.append(values)
            total += len(values)
        starts[i] = first_of[key]
    if not dictionaries:
        return pd.Categorical.from_codes(np.zeros(0, dtype=np.int64), categories=pd.Index([], dtype="str"))
    if sum(len(c.dictionary) for c in column.chunks) <= _SMALL and not any(
        d.null_count for d in dictionaries
    ):
        return column.to_pandas().array  # a few types or ids: pyarrow's own unification is quicker
    lookup, dictionary = _encode(dictionaries)
    codes = np.empty(len(column), dtype=lookup.dtype)
    offsets = np.concatenate([[0], np.cumsum([len(chunk) for chunk in column.chunks])]).astype(np.int64)

    def fill(part: range) -> None:  # chunk by chunk: the temporaries stay small
        for i in part:
            chunk, rows = column.chunks[i], codes[offsets[i] : offsets[i + 1]]
            if len(chunk.dictionary) == 0:  # a chunk of missing ids only (say, the file's last row group)
                rows[:] = -1
                continue
            indices = chunk.indices.fill_null(0) if chunk.indices.null_count else chunk.indices
            np.take(lookup, indices.to_numpy().astype(np.intp) + starts[i], out=rows)
            if chunk.null_count:
                rows[chunk.is_null().to_numpy(zero_copy_only=False)] = -1

    halves = (range(0, column.num_chunks // 2), range(column.num_chunks // 2, column.num_chunks))
    with cf.ThreadPoolExecutor(min(2, max(1, pa.cpu_count())), thread_name_prefix="codes") as pool:
        list(pool.map(fill, halves))
    categories = pd.Index(dictionary.to_pandas(), dtype="str")
    return pd.Categorical.from_codes(codes, categories=categories, validate=False)
