"""Read the files a dataset spec names and return them with canonical column names.

Every loader returns a `Loaded(frame, rejects)`: rows that cannot be used (no customer id, a timestamp that does
not parse, a value that is not a number) are never dropped silently; they go to `rejects` with the file, row
number, column and reason, so a batch job can write them out and count them.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from features.columns import (
    ASPECT,
    CHURN_DATE,
    CHURNED,
    CUSTOMER_ID,
    EVENT_TYPE,
    SENTIMENT,
    SIGNUP_DATE,
    TEXT,
    TIMESTAMP,
)
from features.parquet_read import read_parquet, read_parquet_parts
from features.raw import (
    ROW_PROBLEM,
    DataLoadError,
    csv_header,
    is_parquet,
    parquet_file,
    read_csv_rows,
)
from features.spec import SUPPORTED_SUFFIXES, CustomersSpec, DatasetSpec, EventsSpec, TableSpec

logger = logging.getLogger(__name__)

REJECT_COLUMNS = ["table", "file", "row", "customer_id", "column", "reason"]
TRUE_LABELS = {"true", "1", "1.0", "yes", "y", "churned", "t"}


class Loaded(NamedTuple):
    frame: pd.DataFrame
    rejects: pd.DataFrame


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in REJECT_COLUMNS})


def resolve_files(spec: DatasetSpec, table: TableSpec) -> list[Path]:
    """The files behind a table's `path`: one file, a glob, or every supported file in a directory."""
    target = spec.resolve(table.path)
    if any(char in table.path for char in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(target)))
    elif target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
    else:
        files = [target]
    if not files:
        raise DataLoadError(f"{target}: no data files match")
    for file in files:
        if not file.is_file():
            raise DataLoadError(f"{file}: file not found")
        if file.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataLoadError(
                f"{file}: unsupported file type {file.suffix!r} (use {', '.join(SUPPORTED_SUFFIXES)})"
            )
    return files


def available_columns(spec: DatasetSpec, table: TableSpec) -> list[str]:
    """Column names of the first file, read without loading the data."""
    return available_columns_of(resolve_files(spec, table)[0], table)


def read_table(
    spec: DatasetSpec,
    table: TableSpec,
    columns: list[str] | None = None,
    string_columns: tuple[str, ...] = (),
    dictionary_columns: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read every file of `table` into one frame, keeping the user's column names.

    Args:
        columns: read only these (all when None). A missing one raises `DataLoadError` naming it.
        string_columns: read as text in CSV files, so ids like "00123" keep their zeros.
        dictionary_columns: read as pandas categoricals (cheap for ids and event types in large Parquet files).
    Returns:
        The files' rows concatenated in file order.
    """
    files = resolve_files(spec, table)
    present_in = {}
    for file in files:
        present_in[file] = present = available_columns_of(file, table)
        if columns is not None:
            missing = [c for c in columns if c not in present]
            if missing:
                raise DataLoadError(
                    f"{file}: column(s) {', '.join(map(repr, missing))} not found (has: {', '.join(present[:30])})"
                )
    if len(files) > 1 and all(is_parquet(file) for file in files):  # e.g. a batch bucket's parts
        together = read_parquet_parts(files, columns, dictionary_columns)
        if together is not None:
            return together
    frames = []
    for file in files:
        present = present_in[file]
        if is_parquet(file):
            frames.append(read_parquet(file, columns, dictionary_columns))
        else:
            dtype = {c: "string" for c in string_columns if c in present}
            frame = read_csv_rows(file, table.read_options, columns, dtype=dtype or None)
            for name in dictionary_columns:
                if name in frame.columns:
                    frame[name] = frame[name].astype("category")
            frames.append(frame)
    if len(frames) == 1:
        return frames[0]
    combined = pd.concat(frames, ignore_index=True)
    for name in dictionary_columns:
        if name in combined.columns and not isinstance(combined[name].dtype, pd.CategoricalDtype):
            combined[name] = combined[name].astype("category")
    return combined


def available_columns_of(file: Path, table: TableSpec) -> list[str]:
    if is_parquet(file):
        return list(parquet_file(file).schema_arrow.names)
    return csv_header(file, table.read_options)


BAD_TIME = "is missing, not a date, or outside 1678-2261"  # the years nanosecond times hold


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Parse to naive UTC `datetime64[ns]`; unparseable values and times nanoseconds cannot hold (a 9999-12-31
    placeholder) become NaT, and callers reject those rows (`BAD_TIME`)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return _nanoseconds(values.dt.tz_convert("UTC").dt.tz_localize(None))
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return _nanoseconds(values)
    as_text = values.astype("string").str.strip()
    parsed = pd.to_datetime(as_text, errors="coerce", utc=True, format="ISO8601")
    retry = parsed.isna() & as_text.notna() & (as_text != "")
    if retry.any():
        parsed.loc[retry] = pd.to_datetime(as_text[retry], errors="coerce", utc=True, format="mixed")
    return _nanoseconds(parsed.dt.tz_localize(None))


def _nanoseconds(values: pd.Series) -> pd.Series:
    """Naive times of any unit as `datetime64[ns]`, NaT where nanoseconds cannot hold them."""
    if values.dtype == "datetime64[ns]":
        return values
    inside = (values >= pd.Timestamp.min) & (values <= pd.Timestamp.max)
    return values.where(inside).astype("datetime64[ns]")


def parse_churn_label(values: pd.Series, positive: Any = None) -> pd.Series:
    """Map a label column to 0/1. `positive` is the value that means churned (default: true/1/yes)."""
    text = values.astype("string").str.strip().str.lower()
    if positive is None:
        churned = text.isin(TRUE_LABELS)
    else:
        wanted = {str(positive).strip().lower()}
        if isinstance(positive, bool) or str(positive).lower() in ("true", "1"):
            wanted |= {"true", "1", "1.0"}
        churned = text.isin(wanted)
    return churned.fillna(False).astype("int8")


def _reject_rows(
    table: str, file: str, mask: np.ndarray, ids: pd.Series, column: str, reason: str | np.ndarray
) -> pd.DataFrame:
    rows = np.flatnonzero(mask)
    return pd.DataFrame(
        {
            "table": table,
            "file": file,
            "row": rows,
            "customer_id": ids.iloc[rows].astype("string").to_numpy(dtype=object),
            "column": column,
            "reason": reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[rows],
        }
    )


def _pop_row_problems(frame: pd.DataFrame) -> np.ndarray | None:
    """The reasons of CSV rows with a wrong number of fields (`features.raw.ROW_PROBLEM`), removed from `frame`;
    None when every row is whole."""
    if ROW_PROBLEM not in frame.columns:
        return None
    reasons = frame.pop(ROW_PROBLEM).astype("string")
    present = reasons.notna().to_numpy()
    return reasons.to_numpy(dtype=object, na_value=None) if present.any() else None


def not_a_number_text(value: str) -> bool:
    """`not_a_number` for one text (the service checks a request's few values this way, ~50x faster)."""
    stripped = value.strip()
    if not stripped:
        return False
    parsed = pd.to_numeric(stripped, errors="coerce")
    return not (pd.notna(parsed) and np.isfinite(float(parsed)))


def not_a_number(values: pd.Series) -> np.ndarray:
    """True where a value is present (not blank) but is not a finite number: "abc", "$30", "12,50", "inf".

    The one rule for numbers given as text, used by the loaders (profile columns a model reads as numbers) and
    by the service, so `score` and `/churn_risk` judge the same value the same way.
    """
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        return np.isinf(numbers)
    text = values.astype("string").str.strip()
    present = (text.notna() & (text != "")).to_numpy()
    parsed = pd.to_numeric(text.where(present), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return present & ~np.isfinite(parsed)


def load_customers(spec: DatasetSpec, numeric_columns: Sequence[str] = ()) -> Loaded:
    """Customers with canonical names: `customer_id` (string), `churned` (0/1, when a label is declared),
    `churn_date` / `signup_date` (datetime), then profile columns as they are.

    Rows go to rejects, each with its first problem: a wrong number of fields (CSV), no id, a duplicate id, an
    unparseable date, or a value in one of `numeric_columns` (the profile columns a model reads as numbers)
    that is not a number.
    """
    cs: CustomersSpec | None = spec.customers
    if cs is None:
        raise DataLoadError("spec has no `customers` section")
    wanted = [c for c in (cs.id, cs.label, cs.churn_date, cs.signup_date) if c]
    frame = read_table(spec, cs, string_columns=tuple(c for c in (cs.id,) if c))
    file = spec.shown_file(str(spec.resolve(cs.path)))
    row_problems = _pop_row_problems(frame)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataLoadError(f"{file}: column(s) {', '.join(map(repr, missing))} not found")
    frame = frame.drop(columns=[c for c in cs.drop if c in frame.columns])
    if cs.id:
        ids = frame.pop(cs.id).astype("string").str.strip()
    else:
        ids = pd.Series(np.arange(len(frame)).astype(str), dtype="string")
    out = pd.DataFrame({CUSTOMER_ID: ids.to_numpy()}, index=frame.index)
    checks: list[tuple[np.ndarray, str, str | np.ndarray]] = []
    if row_problems is not None:  # shifted or missing values: nothing else in the row can be trusted
        checks.append((np.array([reason is not None for reason in row_problems]), "", row_problems))
    broken = checks[0][0] if checks else np.zeros(len(frame), dtype=bool)
    empty = ids.isna().to_numpy() | (ids == "").fillna(True).to_numpy()
    checks.append((empty, cs.id or "", "customer id is empty"))
    first_of_id = ids.mask(broken | empty)  # a broken row never makes the good row of its id a duplicate
    checks.append(
        (
            first_of_id.duplicated(keep="first").to_numpy() & ~(broken | empty),
            cs.id or "",
            "duplicate customer id (first kept)",
        )
    )
    if cs.label:
        out[CHURNED] = parse_churn_label(frame.pop(cs.label), cs.positive).to_numpy()
    for source, target in ((cs.churn_date, CHURN_DATE), (cs.signup_date, SIGNUP_DATE)):
        if source:
            raw = frame.pop(source)
            parsed = parse_timestamps(raw)
            unparseable = (parsed.isna() & raw.notna() & (raw.astype("string").str.strip() != "")).to_numpy()
            checks.append((unparseable, source, f"{source} is not a date"))
            out[target] = parsed.to_numpy()
    for name in numeric_columns:
        if name in frame.columns:
            values = frame[name]
            bad = not_a_number(values)
            if bad.any():
                shown = values.astype("string").to_numpy(dtype=object, na_value=None)
                reasons = np.array(
                    [f"{name}: {v!r} is not a finite number" for v in np.where(bad, shown, "")], dtype=object
                )
                checks.append((bad, name, reasons))
    out = pd.concat([out, frame], axis=1)
    keep = np.ones(len(out), dtype=bool)
    rejects = []
    for mask, column, reason in checks:
        if (mask & keep).any():
            rejects.append(_reject_rows("customers", file, mask & keep, ids, column, reason))
            keep &= ~mask
    return Loaded(out[keep].reset_index(drop=True), _concat_rejects(rejects))


def _stripped_categorical(values: pd.Series) -> pd.Series:
    """`values` as a categorical of stripped strings, blanks missing (as `load_customers` treats ids).

    Works on the categories, not the rows: read_table already returns dictionary-encoded ids and types, and
    stripping or comparing millions of row strings would take seconds.
    """
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("category")
    raw_names = pd.Index(values.cat.categories.astype(str))
    names = raw_names.str.strip()
    if (names != "").all() and names.equals(raw_names):
        return values  # already clean (the usual case): no remapping of millions of codes
    clean = names[names != ""].unique()
    remap = np.append(clean.get_indexer(names), -1)  # blank names and missing rows (code -1) -> -1
    codes = remap[values.cat.codes.to_numpy()]
    return pd.Series(pd.Categorical.from_codes(codes, categories=clean), index=values.index, name=values.name)


UNKNOWN_CUSTOMER = "customer id not in the customers table (or its customer row was rejected)"


def load_events(spec: DatasetSpec, with_text: bool = True, known_ids: pd.Index | None = None) -> Loaded:
    """Events with canonical names: `customer_id` and `event_type` (categoricals), `timestamp`
    (datetime64[ns], naive UTC), the declared value columns (float64), and `text` / `sentiment` / `aspect` when
    declared.

    Rows without an id or type, with an unparseable timestamp or a non-numeric value go to rejects, and so do
    rows of customers not in `known_ids` when it is given (the loaded customers table: their events could
    never be scored or trained on, and must not vanish without a word).
    """
    es: EventsSpec | None = spec.events
    if es is None:
        raise DataLoadError("spec has no `events` section")
    columns = [es.id, es.time, es.type, *es.values]
    if with_text and es.text:
        columns.append(es.text)
    if es.sentiment:
        columns.append(es.sentiment)
    if es.sentiment and es.aspect:
        columns.append(es.aspect)
    columns = list(dict.fromkeys(columns))
    frame = read_table(
        spec,
        es,
        columns=columns,
        string_columns=tuple(c for c in (es.id, es.type, es.aspect) if c),
        dictionary_columns=(es.id, es.type),
    )
    file = spec.shown_file(str(spec.resolve(es.path)))
    row_problems = _pop_row_problems(frame)
    ids = _stripped_categorical(frame[es.id])
    types = _stripped_categorical(frame[es.type])
    timestamps = parse_timestamps(frame[es.time])
    columns: dict[str, Any] = {CUSTOMER_ID: ids, TIMESTAMP: timestamps, EVENT_TYPE: types}
    rejects = []
    checks: list[tuple[np.ndarray, str, str | np.ndarray]] = []
    if row_problems is not None:  # shifted or missing values: nothing else in the row can be trusted
        checks.append((np.array([reason is not None for reason in row_problems]), "", row_problems))
    checks += [
        (ids.isna().to_numpy(), es.id, "customer id is empty"),
        (timestamps.isna().to_numpy(), es.time, f"timestamp {BAD_TIME}"),
        (types.isna().to_numpy(), es.type, "event type is empty"),
    ]
    if known_ids is not None:
        names = pd.Index(ids.cat.categories.astype(str))
        # Code -1 (no id) is reported as empty above.
        unknown_code = np.append(~ids_in(names, known_ids), False)
        checks.append((unknown_code[ids.cat.codes.to_numpy()], es.id, UNKNOWN_CUSTOMER))
    for name in es.values:
        raw = frame[name]
        if pd.api.types.is_float_dtype(raw.dtype) and not pd.api.types.is_extension_array_dtype(raw.dtype):
            columns[name] = raw.to_numpy(dtype="float64")  # Parquet doubles: nothing to parse or reject
            continue
        numeric = pd.to_numeric(raw, errors="coerce").astype("float64")
        checks.append(((numeric.isna() & raw.notna()).to_numpy(), name, f"{name} is not a number"))
        columns[name] = numeric.to_numpy()
    if with_text and es.text:
        columns[TEXT] = frame[es.text].astype("string")
    if es.sentiment:
        columns[SENTIMENT] = pd.to_numeric(frame[es.sentiment], errors="coerce").astype("float64")
    if es.sentiment and es.aspect:
        columns[ASPECT] = aspect_names(frame[es.aspect], es.aspect)
    out = pd.DataFrame(columns, copy=False)
    keep = np.ones(len(out), dtype=bool)
    for mask, column, reason in checks:
        if mask.any():
            rejects.append(_reject_rows("events", file, mask & keep, frame[es.id], column, reason))
            keep &= ~mask
    if not keep.all():
        out = out[keep].reset_index(drop=True)
    return Loaded(out, _concat_rejects(rejects))


def ids_in(ids: pd.Index, known: pd.Index | pd.Series) -> np.ndarray:
    """Whether each of `ids` (text) is among `known` (compared as text): Arrow's hash lookup, ~100x faster than
    pandas' `isin` on `str` values, which turns them into Python strings first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def as_arrow(values: pd.Index | pd.Series) -> pa.Array:
        return pa.array(pd.Index(values).astype(str).array)

    found = pc.is_in(as_arrow(ids), value_set=as_arrow(known)).fill_null(False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def aspect_names(values: pd.Series, column: str) -> pd.Series:
    """A precomputed aspect column as names: stripped text, blank as missing. Numbers are refused: a column of
    coded aspects read as floats would turn "1" into "1.0" and count nowhere."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataLoadError(
            f"events.aspect: column {column!r} holds numbers ({values.dtype}); aspects are names, as the aspect "
            "model gives them: store them as text"
        )
    text = values.astype("string").str.strip()
    return text.mask(text == "").astype("str")


def _concat_rejects(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else empty_rejects()


def rating_to_sentiment(ratings: pd.Series) -> pd.Series:
    """1-2 stars -> negative, 3 -> neutral, 4-5 -> positive; anything else -> <NA>."""
    stars = pd.to_numeric(ratings, errors="coerce")
    labels = pd.Series(pd.NA, index=ratings.index, dtype="string")
    labels[stars.isin([1, 2])] = "negative"
    labels[stars == 3] = "neutral"
    labels[stars.isin([4, 5])] = "positive"
    return labels


def load_reviews(spec: DatasetSpec) -> Loaded:
    """Labelled texts with canonical names `text` and `label` (class name as a string), plus `review_id` when
    the spec names an id column. Ratings are mapped to negative / neutral / positive. Rows with an unknown
    rating or an empty label go to rejects; texts are returned as they are (cleaning is the trainer's job).
    """
    rs = spec.reviews
    if rs is None:
        raise DataLoadError("spec has no `reviews` section")
    label_column = rs.label or rs.rating
    columns = list(dict.fromkeys(c for c in (rs.text, label_column, rs.id) if c))
    frame = read_table(spec, rs, columns=columns, string_columns=tuple(c for c in (rs.id,) if c))
    file = str(spec.resolve(rs.path))
    row_problems = _pop_row_problems(frame)
    if rs.rating:
        labels = rating_to_sentiment(frame[rs.rating])
        reason = f"{rs.rating} is not a 1-5 star rating"
    else:
        labels = frame[rs.label].astype("string").str.strip()
        labels = labels.mask(labels == "")
        reason = f"{rs.label} is empty"
    out = pd.DataFrame({TEXT: frame[rs.text].astype("string"), "label": labels})
    if rs.id:
        out["review_id"] = frame[rs.id].astype("string")
    ids = out["review_id"] if rs.id else pd.Series(np.arange(len(out)).astype(str))
    broken = np.zeros(len(out), dtype=bool) if row_problems is None else pd.notna(row_problems)
    bad = labels.isna().to_numpy() & ~broken
    rejects = [_reject_rows("reviews", file, bad, ids, label_column, reason)] if bad.any() else []
    if broken.any():  # shifted or missing values
        rejects.insert(0, _reject_rows("reviews", file, broken, ids, "", row_problems))
    bad |= broken
    return Loaded(out[~bad].reset_index(drop=True), _concat_rejects(rejects))
