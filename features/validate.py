"""Check the data a dataset spec points at and report every problem at once.

`churnsense validate --spec FILE` prints `validate_spec_file(FILE).render()`: one line per problem naming the
file, the column and what is wrong (with a count and example rows), then a summary line. Errors make the
command exit 1: the pipeline would fail or learn from wrong data. Warnings are things the pipeline handles on
its own (rows it skips, blanks it reads as missing) that the data scientist should still know about.

Row numbers are 0-based data rows as pandas reads a file (the first row under the header is row 0), the same
numbers the loaders write to their `rejects`; for a table split over several files they count across the
files in sorted order.

Events (the big table) are read once, through `features.io.load_events`, so the checks see what the pipeline
sees; its `rejects` give the bad rows, and only when there are some is one raw column re-read for examples.
Customers and reviews are also read raw, for checks that need the values as written. Everything is vectorised:
a 20-million-row events Parquet file validates in about ten seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from churnsense.errors import UserError
from features.columns import AS_OF, CHURN_DATE, CHURNED, CUSTOMER_ID, EVENT_TYPE, SENTIMENT, TEXT, TIMESTAMP
from features.io import (
    TRUE_LABELS,
    available_columns_of,
    ids_in,
    load_customers,
    load_events,
    parse_churn_label,
    parse_timestamps,
    rating_to_sentiment,
    read_table,
    resolve_files,
)
from features.labels import MIN_POSITIVES, censored_as_of, label_snapshots
from features.raw import ROW_PROBLEM, DataLoadError
from features.spec import STAGED, DatasetSpec, SpecError, TableSpec, load_spec

MOSTLY_NUMERIC = 0.8  # share of non-blank values that must parse as numbers for a column to count as numeric
N_EXAMPLES = 3
_READ_ERRORS = (UserError, OSError, pa.ArrowException)

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where (file, column) and what, in words a user can act on."""

    severity: Severity
    file: str
    column: str | None
    message: str

    def render(self) -> str:
        where = f" [{self.column}]" if self.column else ""
        return f"{self.severity.upper()} {self.file}{where}: {self.message}"


@dataclass
class ValidationReport:
    """Every problem found in the files of one spec."""

    source: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def render(self) -> str:
        """Errors first, then warnings, one line each, then a summary line."""
        lines = [p.render() for p in (*self.errors, *self.warnings)]
        n_errors, n_warnings = len(self.errors), len(self.warnings)
        if n_errors:
            lines.append(
                f"FAILED {self.source}: {_plural(n_errors, 'error')}, {_plural(n_warnings, 'warning')}"
            )
        elif n_warnings:
            lines.append(f"OK {self.source}: no errors, {_plural(n_warnings, 'warning')}")
        else:
            lines.append(f"OK {self.source}: no problems found")
        return "\n".join(lines)


Report = Callable[[Severity, str, str | None, str], None]


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _value(value: Any) -> str:
    text = (
        "<missing>"
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))
        else str(value)
    )
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _examples(rows: np.ndarray, values: Sequence[Any] | None = None) -> str:
    """'e.g. row 3 '2024-13-01', row 9 'abc'' for the first few offending rows."""
    shown = [
        f"row {int(r)}" + (f" {_value(values[i])}" if values is not None else "")
        for i, r in enumerate(rows[:N_EXAMPLES])
    ]
    return "e.g. " + ", ".join(shown) + (", ..." if len(rows) > N_EXAMPLES else "")


def _blank(values: pd.Series) -> np.ndarray:
    """Missing or whitespace-only values."""
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_datetime64_any_dtype(values.dtype):
        return values.isna().to_numpy()
    text = values.astype("string").str.strip()
    return (text.isna() | (text == "")).to_numpy(dtype=bool, na_value=True)


def _open_table(
    spec: DatasetSpec, table: TableSpec, section: str, named: dict[str, str], report: Report
) -> tuple[str, set[str]] | None:
    """Resolve the table's files and check every column the spec names exists in each of them.

    Args:
        named: spec key (e.g. "events.time") -> column name.
    Returns:
        (the table's path for messages, the named columns missing from some file), or None when the files
        cannot be found or read at all (already reported).
    """
    where = spec.shown_file(str(spec.resolve(table.path)))
    try:
        files = resolve_files(spec, table)
    except UserError as error:
        report("error", where, None, f"{section}.path: {_strip_prefix(str(error), where)}")
        return None
    missing: set[str] = set()
    for file in files:
        try:
            present = set(available_columns_of(file, table))
        except _READ_ERRORS as error:
            report("error", str(file), None, f"cannot read the file ({_strip_prefix(str(error), str(file))})")
            return None
        for key, column in named.items():
            if column not in present:
                shown = ", ".join(sorted(present)[:30]) + (", ..." if len(present) > 30 else "")
                report(
                    "error", str(file), column, f"column not found (spec key {key}); the file has: {shown}"
                )
                missing.add(column)
    return where, missing


def _strip_prefix(message: str, path: str) -> str:
    """Loader messages start with the path, which the report already shows in front of the message."""
    return message[len(path) + 2 :] if message.startswith(f"{path}: ") else message


def _read_column(
    spec: DatasetSpec, table: TableSpec, column: str, rows: np.ndarray, string: bool
) -> list[Any] | None:
    """Raw values of one column at `rows`, for examples in messages (None if the file cannot be re-read)."""
    try:
        raw = read_table(spec, table, columns=[column], string_columns=(column,) if string else ())
    except _READ_ERRORS:
        return None
    return raw[column].iloc[rows[:N_EXAMPLES]].tolist()


def _check_field_counts(raw: pd.DataFrame, where: str, report: Report) -> pd.DataFrame:
    """Report CSV rows with more or fewer fields than the header (`features.raw`); `raw` without the marker."""
    if ROW_PROBLEM not in raw.columns:
        return raw
    reasons = raw[ROW_PROBLEM]
    rows = np.flatnonzero(reasons.notna().to_numpy())
    if rows.size:
        _report_field_counts(rows, reasons.iloc[rows].tolist(), where, report)
    return raw.drop(columns=ROW_PROBLEM)


def _report_field_counts(rows: np.ndarray, reasons: Sequence[Any], where: str, report: Report) -> None:
    shown = "; ".join(
        f"row {int(r)}: {reason}" for r, reason in zip(rows[:N_EXAMPLES], reasons, strict=False)
    )
    more = ", ..." if len(rows) > N_EXAMPLES else ""
    if STAGED in where:  # combined tables (features.sources): each reason names its source, file and column
        report(
            "error",
            where,
            None,
            f"{_plural(rows.size, 'row')} cannot be used ({shown}{more}); they are rejected",
        )
        return
    report(
        "error",
        where,
        None,
        f"{_plural(rows.size, 'row')} with the wrong number of fields ({shown}{more}); they are rejected "
        "(check the separator and quoting: read_options in the spec)",
    )


# --- customers -----------------------------------------------------------------------------------------


def _check_customers(spec: DatasetSpec, report: Report) -> pd.DataFrame | None:
    """Check the customers table; returns the loaded (canonical) customers, or None when unusable."""
    cs = spec.customers
    assert cs is not None
    named = {
        f"customers.{key}": column
        for key, column in (
            ("id", cs.id),
            ("label", cs.label),
            ("churn_date", cs.churn_date),
            ("signup_date", cs.signup_date),
        )
        if column
    }
    named.update({f"customers.drop[{i}]": column for i, column in enumerate(cs.drop)})
    opened = _open_table(spec, cs, "customers", named, report)
    if opened is None:
        return None
    where, missing = opened
    try:
        raw = read_table(spec, cs, string_columns=(cs.id,) if cs.id and cs.id not in missing else ())
    except _READ_ERRORS as error:
        report("error", where, None, _strip_prefix(str(error), where))
        return None
    if raw.empty:
        report("error", where, None, "the table has no rows")
        return None
    raw = _check_field_counts(raw, where, report)

    if cs.id and cs.id not in missing:
        ids = raw[cs.id].astype("string").str.strip()
        empty = np.flatnonzero(_blank(ids))
        if empty.size:
            report(
                "error",
                where,
                cs.id,
                f"{_plural(empty.size, 'row')} with an empty customer id ({_examples(empty)}); they are skipped",
            )
        _check_duplicates(ids, where, cs.id, report)

    for column in (cs.churn_date, cs.signup_date):
        if column and column not in missing:
            _check_dates(raw[column], where, column, report)

    if cs.label and cs.label not in missing:
        _check_static_label(spec, raw[cs.label], where, report)

    skip = {c for c in (cs.id, cs.label, cs.churn_date, cs.signup_date) if c} | set(cs.drop)
    for column in raw.columns:
        if column not in skip:
            _check_mixed_types(raw[column], where, column, report)

    if (
        cs.id in missing
        or (cs.label and cs.label in missing)
        or cs.churn_date in missing
        or cs.signup_date in missing
    ):
        return None
    usable = spec.model_copy(
        update={"customers": cs.model_copy(update={"drop": tuple(c for c in cs.drop if c not in missing)})}
    )
    try:
        return load_customers(usable).frame
    except _READ_ERRORS as error:
        report("error", where, None, _strip_prefix(str(error), where))
        return None


def _check_duplicates(ids: pd.Series, where: str, column: str, report: Report) -> None:
    duplicated = (ids.duplicated(keep=False) & (ids != "")).to_numpy(dtype=bool, na_value=False)
    if not duplicated.any():
        return
    repeated = ids[duplicated]
    n_ids = repeated.nunique()
    rows_of = repeated.index.to_series().groupby(repeated.to_numpy(), sort=False).agg(list)
    shown = ", ".join(
        f"{_value(name)} (rows {', '.join(map(str, rows[:N_EXAMPLES]))})"
        for name, rows in rows_of.head(N_EXAMPLES).items()
    )
    report(
        "error",
        where,
        column,
        f"{_plural(n_ids, 'customer id')} {'appears' if n_ids == 1 else 'appear'} more than once "
        f"({_plural(int(duplicated.sum()) - n_ids, 'extra row')}, only the first is kept): e.g. {shown}",
    )


def _check_dates(raw: pd.Series, where: str, column: str, report: Report) -> None:
    parsed = parse_timestamps(raw)
    bad = np.flatnonzero(parsed.isna().to_numpy() & ~_blank(raw))
    if bad.size:
        examples = _examples(bad, raw.iloc[bad[:N_EXAMPLES]].tolist())
        report(
            "error",
            where,
            column,
            f"{_plural(bad.size, 'value')} not parseable as dates ({examples}); those rows would be rejected",
        )


def _check_static_label(spec: DatasetSpec, raw: pd.Series, where: str, report: Report) -> None:
    cs = spec.customers
    assert cs is not None
    others = [
        name
        for name, declared in (
            ("customers.churn_date", cs.churn_date),
            ("events.churn_event", spec.events and spec.events.churn_event),
            ("labels.inactivity", spec.labels.inactivity),
        )
        if declared
    ]
    if others:
        report(
            "warning", where, cs.label, f"this static label is ignored: labels come from {', '.join(others)}"
        )
        return
    labels = parse_churn_label(raw, cs.positive).to_numpy()
    blank = _blank(raw)
    if blank.any():
        report(
            "warning",
            where,
            cs.label,
            f"{_plural(int(blank.sum()), 'blank label')} will be read as not churned",
        )
    positives = int(labels.sum())
    if positives in (0, len(labels)):
        counts = raw.astype("string").str.strip().value_counts(dropna=False).head(5)
        held = ", ".join(f"{_value(v)} ({n:,})" for v, n in counts.items())
        meaning = repr(cs.positive) if cs.positive is not None else f"one of {sorted(TRUE_LABELS)}"
        state = "churned" if positives else "not churned"
        report(
            "error",
            where,
            cs.label,
            f"labels are all one class: all {len(labels):,} customers are {state} (churned means {meaning}; "
            f"the column holds {held}); set customers.positive to the value that means churned",
        )
    elif positives < MIN_POSITIVES:
        report(
            "warning",
            where,
            cs.label,
            f"only {positives} churned customers (< {MIN_POSITIVES}): the trainer refuses to train on so few",
        )


def _check_mixed_types(raw: pd.Series, where: str, column: str, report: Report) -> None:
    """A mostly-numeric text column: blanks are read as missing; other non-numbers make it categorical."""
    if not (pd.api.types.is_object_dtype(raw.dtype) or pd.api.types.is_string_dtype(raw.dtype)):
        return
    text = raw.astype("string").str.strip()
    blank = (text.isna() | (text == "")).to_numpy(dtype=bool, na_value=True)
    n_present = int((~blank).sum())
    if n_present == 0:
        return
    number = pd.to_numeric(text.mask(blank), errors="coerce").notna().to_numpy()
    n_numbers = int(number.sum())
    if n_numbers == n_present:
        if blank.any():
            report(
                "warning",
                where,
                column,
                f"{_plural(int(blank.sum()), 'blank value')} will be treated as missing (the other {n_present:,} are numbers)",
            )
    elif n_numbers >= MOSTLY_NUMERIC * n_present:
        bad = np.flatnonzero(~number & ~blank)
        report(
            "warning",
            where,
            column,
            f"{_plural(bad.size, 'non-numeric value')} in a mostly numeric column "
            f"({_examples(bad, raw.iloc[bad[:N_EXAMPLES]].tolist())}): the column will be treated as categorical; "
            "fix or blank them to keep it numeric",
        )


# --- events --------------------------------------------------------------------------------------------


def _check_events(spec: DatasetSpec, customers: pd.DataFrame | None, report: Report) -> pd.DataFrame | None:
    """Check the events table; returns the loaded (canonical) events, or None when unusable."""
    es = spec.events
    assert es is not None
    named = {"events.id": es.id, "events.time": es.time, "events.type": es.type}
    named.update(
        {
            f"events.{key}": column
            for key, column in (("text", es.text), ("sentiment", es.sentiment), ("aspect", es.aspect))
            if column
        }
    )
    named.update({f"events.values[{i}]": column for i, column in enumerate(es.values)})
    opened = _open_table(spec, es, "events", named, report)
    if opened is None:
        return None
    where, missing = opened
    if {es.id, es.time, es.type} & missing:
        return None
    # Optional columns that are missing were reported; load without them so the other checks still run.
    usable_es = es.model_copy(
        update={
            "text": es.text if es.text not in missing else None,
            "sentiment": es.sentiment if es.sentiment not in missing else None,
            "aspect": es.aspect if es.aspect not in missing and es.sentiment not in missing else None,
            "values": tuple(v for v in es.values if v not in missing),
        }
    )
    usable = spec.model_copy(update={"events": usable_es})
    try:
        events, rejects = load_events(usable, with_text=True)
    except _READ_ERRORS as error:
        report("error", where, None, _strip_prefix(str(error), where))
        return None

    for column, group in rejects.groupby("column", sort=False):
        rows = group["row"].to_numpy()
        if column == "":  # the whole row: a wrong number of fields
            _report_field_counts(rows, group["reason"].tolist(), where, report)
        elif column == es.id:
            report(
                "error",
                where,
                column,
                f"{_plural(rows.size, 'event')} with an empty customer id ({_examples(rows)}); they are skipped",
            )
        elif column == es.type:
            report(
                "error",
                where,
                column,
                f"{_plural(rows.size, 'event')} with an empty event type ({_examples(rows)}); they are skipped",
            )
        elif column == es.time:
            values = _read_column(spec, usable_es, es.time, rows, string=True)
            report(
                "error",
                where,
                column,
                f"{_plural(rows.size, 'value')} missing or not parseable as dates ({_examples(rows, values)}); "
                "those events would be rejected",
            )
        else:  # a declared value column
            values = _read_column(spec, usable_es, column, rows, string=True)
            report(
                "error",
                where,
                column,
                f"{_plural(rows.size, 'non-numeric value')} in a declared numeric value column "
                f"({_examples(rows, values)}); those events would be rejected",
            )

    if events.empty:
        report("error", where, None, f"no usable events ({_plural(len(rejects), 'row')} rejected)")
        return None
    if usable_es.text and TEXT in events.columns:
        # Most events carry no text (usage, billing): only blank strings, not missing values, are suspicious.
        text = events[TEXT]
        empty = int((text.notna() & _blank(text)).sum())
        if empty:
            report(
                "warning",
                where,
                usable_es.text,
                f"{_plural(empty, 'event')} with an empty (blank) text (of {int(text.notna().sum()):,} with text)",
            )
    if usable_es.sentiment and SENTIMENT in events.columns:
        score = events[SENTIMENT].to_numpy(dtype="float64")
        outside = int(((score < -1) | (score > 1)).sum())
        if outside:
            report("warning", where, usable_es.sentiment, f"{_plural(outside, 'score')} outside [-1, 1]")
    if es.churn_event:
        present = events[EVENT_TYPE].cat.categories.astype(str)
        counts = np.bincount(events[EVENT_TYPE].cat.codes.to_numpy() + 1, minlength=len(present) + 1)[1:]
        if not (counts[np.asarray(present == es.churn_event)] > 0).any():
            shown = ", ".join(map(repr, list(present[counts > 0])[:20]))
            report(
                "error",
                where,
                es.type,
                f"churn_event {es.churn_event!r} never occurs; the types are: {shown}",
            )
    if customers is not None:
        _check_unknown_customers(events, customers, where, es.id, report)
    return events


def _check_unknown_customers(
    events: pd.DataFrame, customers: pd.DataFrame, where: str, column: str, report: Report
) -> None:
    keys = events[CUSTOMER_ID]
    names = keys.cat.categories.astype(str)
    unknown = ~ids_in(names, customers[CUSTOMER_ID])
    if not unknown.any():
        return
    per_name = np.bincount(keys.cat.codes.to_numpy() + 1, minlength=len(names) + 1)[1:]
    hit = unknown & (per_name > 0)
    n_events = int(per_name[hit].sum())
    if n_events:
        shown = ", ".join(map(repr, list(names[hit])[:N_EXAMPLES]))
        report(
            "warning",
            where,
            column,
            f"{_plural(n_events, 'event')} of {_plural(int(hit.sum()), 'customer id')} absent from the customers table "
            f"(e.g. {shown}); they are ignored",
        )


# --- reviews -------------------------------------------------------------------------------------------


def _check_reviews(spec: DatasetSpec, report: Report) -> None:
    rs = spec.reviews
    assert rs is not None
    named = {
        f"reviews.{key}": column
        for key, column in (("text", rs.text), ("label", rs.label), ("rating", rs.rating), ("id", rs.id))
        if column
    }
    opened = _open_table(spec, rs, "reviews", named, report)
    if opened is None:
        return
    where, missing = opened
    wanted = [c for c in named.values() if c not in missing]
    try:
        raw = read_table(spec, rs, columns=list(dict.fromkeys(wanted)), string_columns=tuple(wanted))
    except _READ_ERRORS as error:
        report("error", where, None, _strip_prefix(str(error), where))
        return
    if raw.empty:
        report("error", where, None, "the table has no rows")
        return
    raw = _check_field_counts(raw, where, report)

    if rs.text not in missing:
        empty = int(_blank(raw[rs.text]).sum())
        if empty and empty == len(raw):
            report("error", where, rs.text, f"all {len(raw):,} texts are empty")
        elif empty:
            report("warning", where, rs.text, f"{_plural(empty, 'empty text')} (of {len(raw):,})")

    label_column = rs.label or rs.rating
    assert label_column is not None
    if label_column in missing:
        return
    blank = _blank(raw[label_column])
    if rs.rating:
        stars = pd.to_numeric(raw[rs.rating], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        invalid = np.flatnonzero(~np.isin(stars, [1, 2, 3, 4, 5]) & ~blank)
        if invalid.size:
            report(
                "error",
                where,
                rs.rating,
                f"{_plural(invalid.size, 'rating')} outside 1-5 stars "
                f"({_examples(invalid, raw[rs.rating].iloc[invalid[:N_EXAMPLES]].tolist())}); those rows would be rejected",
            )
        labels = rating_to_sentiment(raw[rs.rating])
    else:
        labels = raw[label_column].astype("string").str.strip().mask(pd.Series(blank, index=raw.index))
        if rs.classes is not None:
            unknown = labels[labels.notna() & ~labels.isin(rs.classes)].value_counts()
            if len(unknown):
                shown = ", ".join(f"{_value(v)} ({n:,})" for v, n in unknown.head(10).items())
                report(
                    "error",
                    where,
                    label_column,
                    f"{_plural(int(unknown.sum()), 'label')} not among reviews.classes {list(rs.classes)}: {shown}",
                )
    if blank.any():
        report(
            "warning",
            where,
            label_column,
            f"{_plural(int(blank.sum()), 'row')} without a {'rating' if rs.rating else 'label'} will be skipped",
        )
    classes = labels.dropna().unique()
    if len(classes) < 2:
        held = f"only {_value(classes[0])}" if len(classes) else "no usable labels"
        report(
            "error",
            where,
            label_column,
            f"labels are all one class ({held}): a sentiment model needs at least two",
        )


# --- labels --------------------------------------------------------------------------------------------


def _check_labels(
    spec: DatasetSpec, customers: pd.DataFrame | None, events: pd.DataFrame | None, report: Report
) -> None:
    """Labels made from the `labels` section for every as_of date: two classes, enough positives, covered."""
    source = str(spec.source or "spec")
    dates = spec.labels.as_of_dates()
    if not dates:
        if spec.events is not None:
            report(
                "warning",
                source,
                "labels.as_of",
                "not set: `churnsense features --as-of` works, but training needs snapshot dates for its labels",
            )
        return
    # A section that failed to load was reported already; labels without it would be misleading.
    if (spec.customers is not None and customers is None) or (spec.events is not None and events is None):
        return
    churn_event = spec.events.churn_event if spec.events else None
    dated = customers is not None and CHURN_DATE in customers.columns
    static = not (churn_event or spec.labels.inactivity or dated) and (
        customers is not None and CHURNED in customers.columns
    )
    horizon = spec.labels.horizon_days
    if events is not None:
        _check_coverage(spec, events, dates, horizon, report)
    if static:
        return  # a static label is the same for every as_of and was checked with the customers table
    try:
        labels = label_snapshots(customers, events, dates, horizon, churn_event, spec.labels.inactivity)
    except UserError as error:
        report("error", source, "labels", str(error))
        return
    per_date = labels.groupby(AS_OF)[CHURNED].agg(["size", "sum"])
    empty = [d for d in dates if pd.Timestamp(d) not in per_date.index]
    if empty:
        report(
            "error",
            source,
            "labels.as_of",
            f"no eligible customers at {_plural(len(empty), 'as_of date')} ({_dates(empty)}): nobody had joined and "
            "not yet left by then",
        )
    one_class = per_date[(per_date["sum"] == 0) | (per_date["sum"] == per_date["size"])]
    if len(one_class):
        shown = ", ".join(
            f"{stamp.date()} ({int(row['size']):,} customers, all {'churned' if row['sum'] else 'not churned'})"
            for stamp, row in one_class.head(N_EXAMPLES).iterrows()
        )
        report(
            "error",
            source,
            "labels",
            f"labels are all one class at {len(one_class)} of {len(dates)} as_of dates: {shown}"
            + (", ..." if len(one_class) > N_EXAMPLES else ""),
        )
    positives = int(labels[CHURNED].sum())
    if 0 < positives < MIN_POSITIVES:
        report(
            "warning",
            source,
            "labels",
            f"only {positives} churned examples over {_plural(len(dates), 'as_of date')} (< {MIN_POSITIVES}): "
            "the trainer refuses to train on so few; add as_of dates or a longer horizon",
        )


def _dates(days: Sequence[dt.date]) -> str:
    return ", ".join(str(d) for d in days[:N_EXAMPLES]) + (", ..." if len(days) > N_EXAMPLES else "")


def _check_coverage(
    spec: DatasetSpec, events: pd.DataFrame, dates: list[dt.date], horizon: int, report: Report
) -> None:
    """Label windows must end inside the data; events after the last window are never used."""
    assert spec.events is not None
    where, column = spec.shown_file(str(spec.resolve(spec.events.path))), spec.events.time
    stamps = events[TIMESTAMP].to_numpy("datetime64[ns]")
    newest = pd.Timestamp(stamps.max())
    window = dt.timedelta(days=horizon)
    censored, latest_ok = censored_as_of(dates, horizon, newest)
    if censored:
        report(
            "error",
            where,
            column,
            f"label window not covered by the data: the newest event is {newest}, but with horizon_days={horizon} "
            f"the windows of {_plural(len(censored), 'as_of date')} ({_dates(censored)}) end after it, so labels "
            f"would be censored (what happens after the data ends is unknown); use as_of dates on or before {latest_ok}",
        )
    end = pd.Timestamp(max(dates) + window).as_unit("ns").to_datetime64()
    after = int((stamps >= end).sum())
    if after:
        report(
            "warning",
            where,
            column,
            f"{_plural(after, 'event')} dated on or after {pd.Timestamp(end).date()} (newest as_of {max(dates)} + "
            f"horizon_days={horizon}) will be ignored by training",
        )


# --- entry points --------------------------------------------------------------------------------------


def validate_spec(spec: DatasetSpec) -> ValidationReport:
    """Check every file the spec names and return all problems found (never raises on bad data)."""
    report = ValidationReport(source=str(spec.source or "spec"))

    def add(severity: Severity, file: str, column: str | None, message: str) -> None:
        report.problems.append(Problem(severity, spec.shown_file(file), column, message))

    customers = _check_customers(spec, add) if spec.customers is not None else None
    events = _check_events(spec, customers, add) if spec.events is not None else None
    if spec.reviews is not None:
        _check_reviews(spec, add)
    _check_labels(spec, customers, events, add)
    return report


def validate_spec_file(path: str | Path) -> ValidationReport:
    """`validate_spec` for a spec file; a spec that cannot be read becomes one error in the report."""
    try:
        spec = load_spec(path)
    except (SpecError, DataLoadError) as error:  # a spec of several tables is read as it is loaded
        resolved = str(Path(path).expanduser().resolve())
        report = ValidationReport(source=resolved)
        report.problems.append(Problem("error", resolved, None, _strip_prefix(str(error), resolved)))
        return report
    return validate_spec(spec)
