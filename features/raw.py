"""The one raw reader: the rows of a CSV/TSV or Parquet file, read as the spec says, before any validation.

The loaders (`features.io`, for training, `validate` and each batch bucket) and the batch engines' chunked
reads (`batch.read`) all read files through here, so a row is read the same way on every path.

A CSV row with more or fewer fields than the header is never read with shifted or missing values: pandas would
put a 10-field row under a 9-name header with every value one column to the right, or fill a short row with
missing values. `field_count_problems` finds those rows (Python's `csv` module, with the spec's quoting
options), and the readers mark them in a `ROW_PROBLEM` column that the loaders turn into rejects.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnsense.errors import UserError

logger = logging.getLogger(__name__)

ROW_PROBLEM = "__churnsense_row_problem__"
"""Column the CSV readers add when a row's field count differs from the header's: the reason, else missing."""

_CSV_DIALECT_OPTIONS = {
    "sep",
    "delimiter",
    "quotechar",
    "quoting",
    "escapechar",
    "doublequote",
    "skipinitialspace",
}
_ROW_OPTIONS = {
    "header",
    "skiprows",
    "skipfooter",
    "nrows",
    "comment",
    "names",
    "lineterminator",
    "skip_blank_lines",
}


class DataLoadError(UserError):
    """A file the spec names cannot be read, or lacks a column the spec names. The message says which."""


def is_parquet(file: str | Path) -> bool:
    """Whether a file is read as Parquet (by its name: .parquet or .pq); otherwise as CSV/TSV."""
    return str(file).lower().endswith((".parquet", ".pq"))


def parquet_file(file: str | Path) -> pq.ParquetFile:
    """An open Parquet file; `DataLoadError` naming it when it is not Parquet, truncated or unreadable."""
    try:
        return pq.ParquetFile(file)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataLoadError(f"{file}: cannot read Parquet ({error})") from None


def undecodable_line(file: str | Path, encoding: str = "utf-8") -> str:
    """Where the first line that is not valid `encoding` is, for an error message ("" if none is found)."""
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as error:
                byte = raw[error.start : error.start + 1].hex()
                return f"line {number}, byte {error.start + 1} (0x{byte}) is not valid {encoding}"
    return ""


def decode_error(file: str | Path, read_options: dict[str, Any]) -> str:
    """A one-line message for a file that does not decode: where, and what to set."""
    encoding = str(read_options.get("encoding") or "utf-8")
    where = undecodable_line(file, encoding) or f"it is not valid {encoding}"
    return f"{file}: {where}; fix the file, or name its encoding in the spec (read_options: {{encoding: latin-1}})"


def csv_options(file: str | Path, read_options: dict[str, Any]) -> dict[str, Any]:
    """`pandas.read_csv` keyword arguments: a tab separator for .tsv, then the spec's `read_options`."""
    options: dict[str, Any] = {"sep": "\t" if str(file).lower().endswith(".tsv") else ","}
    options.update(read_options)
    return options


def read_csv(file: str | Path, read_options: dict[str, Any], **extra: Any) -> pd.DataFrame:
    """`pandas.read_csv` with the spec's options; a file that does not decode or parse is a `DataLoadError`."""
    try:
        return pd.read_csv(file, **{**csv_options(file, read_options), **extra})
    except UnicodeDecodeError:
        raise DataLoadError(decode_error(file, read_options)) from None
    except (pd.errors.ParserError, ValueError) as error:
        raise DataLoadError(f"{file}: cannot parse ({error})") from None


def csv_header(file: str | Path, read_options: dict[str, Any]) -> list[str]:
    return [str(c) for c in read_csv(file, read_options, nrows=0).columns]


def field_count_problems(file: str | Path, read_options: dict[str, Any]) -> dict[int, str]:
    """{data row (0-based, as pandas numbers rows): reason} for every row whose field count is not the header's.

    Blank lines are skipped as pandas skips them. Read options that change which lines are rows (`skiprows`,
    `comment`, ...) cannot be followed here: the check is then skipped with a warning, never silently.
    """
    options = csv_options(file, read_options)
    unsupported = sorted(set(options) & _ROW_OPTIONS)
    if unsupported:
        logger.warning(
            "%s: rows with a wrong number of fields are not checked (read_options %s)",
            file,
            ", ".join(unsupported),
        )
        return {}
    dialect: dict[str, Any] = {"delimiter": options.get("delimiter", options["sep"])}
    for name in _CSV_DIALECT_OPTIONS - {"sep", "delimiter"}:
        if name in options:
            dialect[name] = options[name]
    if len(str(dialect["delimiter"])) != 1:
        logger.warning(
            "%s: rows with a wrong number of fields are not checked (separator %r)",
            file,
            dialect["delimiter"],
        )
        return {}
    problems: dict[int, str] = {}
    encoding = str(options.get("encoding") or "utf-8")
    try:
        with open(
            file, newline="", encoding=encoding, errors=options.get("encoding_errors", "strict")
        ) as handle:
            records = csv.reader(handle, **dialect)
            header = next(records, None)
            if header is None:
                return {}
            row = 0
            for record in records:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line is no row
                if len(record) != len(header):
                    problems[row] = (
                        f"row has {len(record)} fields, the header has {len(header)}: values would be shifted"
                        if len(record) > len(header)
                        else f"row has {len(record)} fields, the header has {len(header)}: values are missing"
                    )
                row += 1
    except UnicodeDecodeError:
        raise DataLoadError(decode_error(file, read_options)) from None
    except csv.Error as error:
        raise DataLoadError(f"{file}: cannot parse ({error})") from None
    return problems


def mark_rows(frame: pd.DataFrame, problems: dict[int, str], first_row: int = 0) -> pd.DataFrame:
    """`frame` (rows `first_row`, `first_row + 1`, ... of its file) with the `ROW_PROBLEM` column of `problems`."""
    reasons = np.full(len(frame), None, dtype=object)
    for row, reason in problems.items():
        if first_row <= row < first_row + len(frame):
            reasons[row - first_row] = reason
    frame[ROW_PROBLEM] = pd.array(reasons, dtype="string")
    return frame


def read_csv_rows(
    file: str | Path, read_options: dict[str, Any], columns: list[str] | None = None, **extra: Any
) -> pd.DataFrame:
    """A whole CSV file, one frame row per file row (extra fields cut, short rows padded), plus `ROW_PROBLEM`
    when any row has the wrong number of fields."""
    problems = field_count_problems(file, read_options)
    usecols = columns if columns is not None else csv_header(file, read_options)
    frame = read_csv(file, read_options, usecols=usecols, index_col=False, **extra)
    return mark_rows(frame, problems) if problems else frame


def iter_csv_rows(
    file: str | Path, read_options: dict[str, Any], columns: list[str], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """`read_csv_rows` in chunks of `chunk_rows` rows (columns as text), each with a `ROW_PROBLEM` column."""
    problems = field_count_problems(file, read_options)
    first = 0
    try:
        with pd.read_csv(
            file,
            **csv_options(file, read_options),
            usecols=columns,
            index_col=False,
            dtype=str,
            chunksize=chunk_rows,
        ) as reader:
            for frame in reader:
                yield mark_rows(frame, problems, first)
                first += len(frame)
    except UnicodeDecodeError:
        raise DataLoadError(decode_error(file, read_options)) from None
    except (pd.errors.ParserError, ValueError) as error:
        raise DataLoadError(f"{file}: cannot parse ({error})") from None
