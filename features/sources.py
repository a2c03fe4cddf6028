"""Several tables, one truth: a spec that combines tables is read into one customers table and one events table.

A spec may list several event sources (`events` as a list: tickets, usage, invoices...), reach a customer through
a link table (`via`), take churn dates from their own table (`churn`) and profile columns from more than one
table (`customers.join`). `stage_sources` reads all of them once, in one place, and writes the result as two
Parquet files with canonical columns; it returns a spec of the familiar one-table shape that points at them. Every
path (validate, train, score on both engines, ingest, monitor) then reads those same rows, so the combination
cannot differ between paths, and the features are those of the same events given as one pre-joined table.

Nothing is dropped on the way: a row that cannot be used (a field count that is off, no id, an id the link table
does not know, an id that matches no customer, a time or value that does not parse) is staged with its reason
in `ROW_PROBLEM`, naming the source, file, row and column, and the loaders turn it into a reject as they do with
a CSV row with a wrong number of fields.

The staged files live in the cache folder under a key of the spec and the files' sizes and modification times,
so a second command on unchanged files reads them without combining again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnsense.environment import paths
from features.columns import ASPECT, CUSTOMER_ID, EVENT_TYPE, SENTIMENT, TEXT, TIMESTAMP
from features.io import (
    BAD_TIME,
    aspect_names,
    available_columns_of,
    parse_timestamps,
    read_table,
    resolve_files,
)
from features.raw import ROW_PROBLEM, DataLoadError
from features.spec import (
    ChurnTableSpec,
    CustomersSpec,
    DatasetSpec,
    EventSourceSpec,
    EventsSpec,
    LinkSpec,
    TableSpec,
)

logger = logging.getLogger(__name__)

STAGE_VERSION = "1"  # bump when what is staged changes: old stages are then not reused
KEPT_STAGES = 2  # per spec: the newest, and the one before it
STAGED_CHURN_DATE = "__churn_date__"
EVENT_ID = "event_id"
CUSTOMERS_FILE, EVENTS_FILE = "customers.parquet", "events.parquet"
_WHERE = "__where__"


def stage_sources(spec: DatasetSpec) -> DatasetSpec:
    """`spec` itself when it reads one table of each kind; else the one-table spec of its staged tables."""
    if not spec.needs_staging:
        return spec
    folder = paths().cache_dir / "sources" / _stage_key(spec)
    if not (folder / CUSTOMERS_FILE).exists() and not (folder / EVENTS_FILE).exists():
        _write_stage(spec, folder)
        _drop_old_stages(folder)
    return _staged_spec(spec, folder)


def _drop_old_stages(folder: Path) -> None:
    """Keep the newest `KEPT_STAGES` stages of one spec: files that change every night would otherwise leave
    a full copy of the data behind each night. The one before the newest stays for a job still reading it."""
    spec_part = folder.name.split("-")[0]
    stages = [f for f in folder.parent.glob(f"{spec_part}-*") if f.is_dir() and f != folder]
    stages.sort(key=lambda f: f.stat().st_mtime_ns, reverse=True)
    for old in stages[KEPT_STAGES - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _tables(spec: DatasetSpec) -> list[TableSpec]:
    tables: list[TableSpec] = []
    if spec.customers is not None:
        tables += [spec.customers, *spec.customers.join]
    if spec.churn is not None:
        tables.append(spec.churn)
    if isinstance(spec.events, tuple):
        for source in spec.events:
            tables += [source, *([source.via] if source.via else [])]
    return tables


def _stage_key(spec: DatasetSpec) -> str:
    """`<spec digest>-<files digest>`: what the stage is made of (the spec's tables), then the state of each of
    their files (see `_file_state`)."""
    described = spec.model_dump(mode="json", include={"customers", "events", "churn"})
    files = [_file_state(file) for table in _tables(spec) for file in resolve_files(spec, table)]
    tables = json.dumps([STAGE_VERSION, str(spec.base_dir), described], sort_keys=True)
    return f"{_digest(tables)}-{_digest(json.dumps(files))}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_state(file: Path) -> list:
    """What changes when a file does: its inode (a file replaced), size, and modification and status-change
    times (the status-change time moves even when a copy restores the modification time, as `cp -p` does)."""
    state = file.stat()
    return [str(file), state.st_ino, state.st_size, state.st_mtime_ns, state.st_ctime_ns]


def _write_stage(spec: DatasetSpec, folder: Path) -> None:
    """Combine the tables into `folder`, atomically: a stage is either whole or absent."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        known = None
        if spec.customers is not None:
            customers = _stage_customers(spec, spec.customers)
            good = customers[ROW_PROBLEM].isna() if ROW_PROBLEM in customers.columns else True
            ids = customers[spec.customers.id].astype("string").str.strip() if spec.customers.id else None
            known = pd.Index(ids[good].dropna().unique()) if ids is not None else None
            _write_parquet(customers, scratch / CUSTOMERS_FILE)
        if isinstance(spec.events, tuple):
            events = _stage_events(spec, spec.events, known)
            _write_parquet(events, scratch / EVENTS_FILE)
            logger.info("staged %d events from %d sources in %s", len(events), len(spec.events), folder)
        try:
            os.rename(scratch, folder)
        except OSError:  # another process staged the same files first: theirs is the same
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_parquet(frame: pd.DataFrame, file: Path) -> None:
    """`frame` as Parquet. A column of mixed values (numbers in one file of a glob, words in another) is stored
    as text, which the loaders read exactly as they read the mixed column (they parse text either way)."""
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        frame = frame.copy()
        for name in frame.columns:
            if frame[name].dtype == object:
                try:
                    pa.array(frame[name], from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    frame[name] = frame[name].astype("string")
        table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, file)


def _staged_spec(spec: DatasetSpec, folder: Path) -> DatasetSpec:
    customers = spec.customers
    if customers is not None:
        update = {"path": str(folder / CUSTOMERS_FILE), "read_options": {}, "join": ()}
        if spec.churn is not None:
            update["churn_date"] = STAGED_CHURN_DATE
        customers = customers.model_copy(update=update)
    events = spec.events
    if isinstance(events, tuple):
        events = _staged_events_spec(events, folder / EVENTS_FILE)
    sources = tuple(s.name for s in spec.events) if isinstance(spec.events, tuple) else ()
    update = {
        "customers": customers,
        "events": events,
        "churn": None,
        "staged": folder,
        "staged_sources": sources,
    }
    return spec.model_copy(update=update)


def _staged_events_spec(sources: tuple[EventSourceSpec, ...], file: Path) -> EventsSpec:
    values = tuple(dict.fromkeys(v for source in sources for v in source.values))
    churn_events = [s.churn_event for s in sources if s.churn_event]
    return EventsSpec(
        path=str(file),
        id=CUSTOMER_ID,
        time=TIMESTAMP,
        type=EVENT_TYPE,
        text=TEXT if any(s.text for s in sources) else None,
        values=values,
        churn_event=churn_events[0] if churn_events else None,
        sentiment=SENTIMENT if any(s.sentiment for s in sources) else None,
        aspect=ASPECT if any(s.aspect for s in sources) else None,
        event_id=EVENT_ID if all(s.event_id for s in sources) else None,
    )


class _Problems:
    """The first problem of each row of one file, as the reason a reject will carry."""

    def __init__(self, where: str, frame: pd.DataFrame) -> None:
        self.where = where
        self.reasons = np.full(len(frame), None, dtype=object)
        if ROW_PROBLEM in frame.columns:
            raw = frame.pop(ROW_PROBLEM).to_numpy(dtype=object, na_value=None)
            for row in np.flatnonzero(pd.notna(raw)):
                self.reasons[row] = f"{where}, row {row}: {raw[row]}"

    def add(self, mask: np.ndarray, column: str, reason: str | np.ndarray) -> None:
        for row in np.flatnonzero(mask & pd.isna(self.reasons)):
            text = reason if isinstance(reason, str) else reason[row]
            self.reasons[row] = f"{self.where}, row {row}, column {column}: {text}"

    @property
    def any(self) -> bool:
        return bool(pd.notna(self.reasons).any())

    def column(self) -> pd.Series:
        return pd.Series(self.reasons, dtype="string")


def _stripped(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _read_file(
    spec: DatasetSpec, table: TableSpec, file: Path, columns: list[str] | None, ids: tuple[str, ...]
):
    return read_table(spec, table.model_copy(update={"path": str(file)}), columns=columns, string_columns=ids)


def _stage_customers(spec: DatasetSpec, cs: CustomersSpec) -> pd.DataFrame:
    """The customers table as it is read, plus joined profile columns, the churn table's dates, and one row per
    joined or churn row that cannot be used (its id and its reason)."""
    frame = _checked_customers(spec, cs)
    ids = _stripped(frame[cs.id])
    good_ids = ids[frame[ROW_PROBLEM].isna()].dropna()
    problems: list[pd.DataFrame] = []
    for join in cs.join:
        clash = [c for c in join.columns if c in frame.columns]
        if clash:
            raise DataLoadError(
                f"customers.join {spec.resolve(join.path)}: column(s) {', '.join(map(repr, clash))} are already "
                "profile columns (of the customers table or an earlier join)"
            )
        values, bad = _keyed_rows(spec, join, join.id, list(join.columns), good_ids, "customers.join")
        for column in join.columns:
            frame[column] = values[column].reindex(ids.to_numpy()).to_numpy() if len(values) else np.nan
        problems.append(bad)
    if spec.churn is not None:
        frame[STAGED_CHURN_DATE] = _churn_dates(spec, spec.churn, ids, good_ids, problems)
    if not any(len(p) for p in problems):
        return frame
    extra = pd.concat([p for p in problems if len(p)], ignore_index=True)
    rows = pd.DataFrame({cs.id: extra[CUSTOMER_ID], ROW_PROBLEM: extra[ROW_PROBLEM]})
    return pd.concat([frame, rows], ignore_index=True)


def _checked_customers(spec: DatasetSpec, cs: CustomersSpec) -> pd.DataFrame:
    """The customers table as it is read (ids as text), each row the loader would reject already carrying its
    reason, so the reject names the user's file and row rather than the staged one."""
    frames = []
    for file in resolve_files(spec, cs):
        frame = _read_file(spec, cs, file, None, (cs.id,))
        if cs.id not in frame.columns:
            raise DataLoadError(
                f"{file}: customers.id column {cs.id!r} not found (has: {', '.join(frame.columns[:30])})"
            )
        found = _Problems(f"customers {file}", frame)
        ids = _stripped(frame[cs.id])
        found.add(ids.isna().to_numpy(), cs.id, "customer id is empty")
        for column in (c for c in (cs.signup_date, cs.churn_date) if c and c in frame.columns):
            raw = frame[column]
            unparsed = parse_timestamps(raw).isna() & _stripped(raw.astype("string")).notna()
            found.add(unparsed.to_numpy(), column, f"{column} is not a date")
        frame[ROW_PROBLEM] = found.column().to_numpy()
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame[cs.id] = frame[cs.id].astype("string")
    ids = _stripped(frame[cs.id])
    usable = frame[ROW_PROBLEM].isna()
    repeated = (ids.where(usable).duplicated(keep="first") & usable & ids.notna()).to_numpy()
    if repeated.any():
        where = [f"customers {spec.resolve(cs.path)}, row {row}" for row in np.flatnonzero(repeated)]
        frame.loc[repeated, ROW_PROBLEM] = [
            f"{w}, column {cs.id}: duplicate customer id (first kept)" for w in where
        ]
    return frame


def _keyed_rows(
    spec: DatasetSpec, table: TableSpec, id_column: str, columns: list[str], known: pd.Series, what: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of a table keyed by customer id: (usable rows indexed by id, problem rows as id + reason).

    A row is unusable when its fields are off, its id is empty, it repeats an id (the first is kept) or its id
    matches no customer.
    """
    frames, bad = [], []
    for file in resolve_files(spec, table):
        frame = _read_file(spec, table, file, [id_column, *columns], (id_column,))
        found = _Problems(f"{what} {file}", frame)
        ids = _stripped(frame[id_column])
        found.add(ids.isna().to_numpy(), id_column, "customer id is empty")
        unknown = ~ids.isin(known).fillna(False).to_numpy()
        found.add(unknown & ids.notna().to_numpy(), id_column, "customer id matches no customer")
        usable = pd.isna(found.reasons)
        where = [f"{what} {file}, row {row}, column {id_column}" for row in np.flatnonzero(usable)]
        frames.append(frame[usable].assign(**{CUSTOMER_ID: ids[usable].to_numpy(), _WHERE: where}))
        if found.any:
            bad.append(pd.DataFrame({CUSTOMER_ID: ids, ROW_PROBLEM: found.column()})[~usable])
    rows = pd.concat(frames, ignore_index=True)
    repeated = rows[CUSTOMER_ID].duplicated(keep="first").to_numpy()
    if repeated.any():
        reasons = rows[_WHERE][repeated] + ": customer id given twice (first kept)"
        bad.append(pd.DataFrame({CUSTOMER_ID: rows[CUSTOMER_ID][repeated], ROW_PROBLEM: reasons}))
    bad_rows = pd.concat(bad, ignore_index=True) if bad else pd.DataFrame(columns=[CUSTOMER_ID, ROW_PROBLEM])
    return rows[~repeated].drop(columns=_WHERE).set_index(CUSTOMER_ID), bad_rows


def _churn_dates(
    spec: DatasetSpec, churn: ChurnTableSpec, ids: pd.Series, known: pd.Series, problems: list[pd.DataFrame]
) -> np.ndarray:
    """Each customer row's churn date: the earliest of its churn table's rows, else missing."""
    frames = []
    for file in resolve_files(spec, churn):
        frame = _read_file(spec, churn, file, [churn.id, churn.date], (churn.id,))
        found = _Problems(f"churn {file}", frame)
        churn_ids = _stripped(frame[churn.id])
        dates = parse_timestamps(frame[churn.date])
        found.add(churn_ids.isna().to_numpy(), churn.id, "customer id is empty")
        unknown = ~churn_ids.isin(known).fillna(False).to_numpy()
        found.add(unknown & churn_ids.notna().to_numpy(), churn.id, "customer id matches no customer")
        found.add(dates.isna().to_numpy(), churn.date, f"{churn.date} {BAD_TIME}")
        usable = pd.isna(found.reasons)
        frames.append(pd.DataFrame({CUSTOMER_ID: churn_ids[usable], "date": dates[usable]}))
        if found.any:
            problems.append(pd.DataFrame({CUSTOMER_ID: churn_ids, ROW_PROBLEM: found.column()})[~usable])
    rows = pd.concat(frames, ignore_index=True)
    earliest = rows.groupby(CUSTOMER_ID)["date"].min()
    return earliest.reindex(ids.to_numpy()).to_numpy(dtype="datetime64[ns]")


def _link_map(spec: DatasetSpec, source: EventSourceSpec, link: LinkSpec) -> tuple[pd.Series, pd.Series]:
    """(source id -> customer id, source id -> why its link row cannot be used) from a link table.

    A key that leads to two customers is an error (never a guess). A key whose link row is broken (a field too
    many or too few) or names no customer leads nowhere, and its events are rejected with that row's problem.
    """
    good, bad = [], []
    for file in resolve_files(spec, link):
        frame = _read_file(spec, link, file, [link.key, link.customer], (link.key, link.customer))
        found = _Problems(f"link table {file}", frame)
        keys, customers = _stripped(frame[link.key]), _stripped(frame[link.customer])
        found.add(customers.isna().to_numpy(), link.customer, f"no customer for this {link.key}")
        usable = pd.isna(found.reasons)
        good.append(pd.DataFrame({"key": keys[usable], "customer": customers[usable]}))
        bad.append(pd.DataFrame({"key": keys[~usable], "reason": found.reasons[~usable]}))
    pairs = pd.concat(good, ignore_index=True).dropna().drop_duplicates()
    twice = pairs["key"][pairs["key"].duplicated()]
    if len(twice):
        raise DataLoadError(
            f"events source {source.name!r}: link table {spec.resolve(link.path)} leads {link.key} "
            f"{twice.iloc[0]!r} to more than one {link.customer} ({len(twice.unique())} such keys)"
        )
    broken = pd.concat(bad, ignore_index=True).dropna(subset=["key"]).drop_duplicates("key")
    return pairs.set_index("key")["customer"], broken.set_index("key")["reason"]


def _stage_events(
    spec: DatasetSpec, sources: tuple[EventSourceSpec, ...], known: pd.Index | None
) -> pd.DataFrame:
    parts, types_of = [], {}
    for source in sources:
        link = _link_map(spec, source, source.via) if source.via else None
        for file in resolve_files(spec, source):
            part = _source_events(spec, source, file, link, known)
            parts.append(part)
            types = set(part.loc[part[ROW_PROBLEM].isna(), EVENT_TYPE].dropna().unique())
            types_of[source.name] = types_of.get(source.name, set()) | types
    _check_overlaps(sources, types_of)
    events = pd.concat(parts, ignore_index=True)
    events[ROW_PROBLEM] = events[ROW_PROBLEM].astype("string")
    return events


def _check_overlaps(sources: tuple[EventSourceSpec, ...], types_of: dict[str, set[str]]) -> None:
    names = [s.name for s in sources]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(types_of.get(first, set()) & types_of.get(second, set()))
            if shared:
                raise DataLoadError(
                    f"events sources {first!r} and {second!r} both give event type(s) {', '.join(shared[:5])}: a "
                    "type must say which source it is from (set `type_prefix` on a source read with `type_column`)"
                )


def _source_events(
    spec: DatasetSpec,
    source: EventSourceSpec,
    file: Path,
    link: tuple[pd.Series, pd.Series] | None,
    known: pd.Index | None,
) -> pd.DataFrame:
    """One file of one source as canonical events, each unusable row with its reason in `ROW_PROBLEM`."""
    wanted = [source.id, source.time, source.type_column, source.text, *source.values]
    wanted += [source.sentiment, source.aspect, source.event_id]
    columns = list(dict.fromkeys(c for c in wanted if c))
    texts = tuple(c for c in (source.id, source.type_column, source.aspect, source.event_id) if c)
    if source.type is not None and source.type in available_columns_of(file, source):
        raise DataLoadError(
            f"events source {source.name!r}: type {source.type!r} is also a column of {file}: `type` gives every "
            "row the one type written there; for a column of types use `type_column`"
        )
    frame = _read_file(spec, source, file, columns, texts)
    found = _Problems(f"events source {source.name!r} {file}", frame)
    raw_ids = _stripped(frame[source.id])
    found.add(raw_ids.isna().to_numpy(), source.id, "id is empty")
    ids = raw_ids
    if link is not None:
        leads, broken = link
        if len(broken):
            why = raw_ids.isin(broken.index).fillna(False).to_numpy()
            reasons = np.where(
                why, raw_ids.map(broken.astype("string")).to_numpy(dtype=object, na_value=""), ""
            )
            found.add(why, source.id, reasons)
        ids = raw_ids.map(leads).astype("string")
        unlinked = ids.isna().to_numpy() & raw_ids.notna().to_numpy()
        found.add(unlinked, source.id, f"not in the link table's {source.via.key} column ({source.via.path})")
    if known is not None:
        unknown = ~ids.isin(known).fillna(False).to_numpy() & ids.notna().to_numpy()
        found.add(unknown, source.id, "customer id matches no customer (or its customer row was rejected)")
    times = parse_timestamps(frame[source.time])
    found.add(times.isna().to_numpy(), source.time, f"timestamp {BAD_TIME}")
    if source.type_column:
        types = _stripped(frame[source.type_column])
        found.add(types.isna().to_numpy(), source.type_column, "event type is empty")
        types = (source.type_prefix + types).str.strip()  # as the loaders will read it
    else:
        types = pd.Series(source.type, index=frame.index, dtype="string")
    out = {CUSTOMER_ID: ids.where(ids.notna(), raw_ids), TIMESTAMP: times, EVENT_TYPE: types}
    for name in source.values:
        raw = frame[name]
        numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
        found.add((numbers.isna() & raw.notna()).to_numpy(), name, f"{name} is not a number")
        out[name] = numbers
    if source.text:
        out[TEXT] = frame[source.text].astype("string")
    if source.sentiment:
        out[SENTIMENT] = pd.to_numeric(frame[source.sentiment], errors="coerce").astype("float64")
    if source.aspect:
        try:
            out[ASPECT] = aspect_names(frame[source.aspect], source.aspect)
        except DataLoadError as error:
            raise DataLoadError(f"events source {source.name!r} {file}: {error}") from None
    if source.event_id:
        event_ids = _stripped(frame[source.event_id])
        found.add(event_ids.isna().to_numpy(), source.event_id, "event id is empty")
        out[EVENT_ID] = (source.name + ":" + event_ids).astype("string")
    staged = pd.DataFrame(out)
    staged[ROW_PROBLEM] = found.column().to_numpy()
    return staged
