"""The dataset spec: a YAML file that points churnsense at a data scientist's own files and column names.

Example (every section optional, see README for the full list of keys)::

    customers:
      path: customers.csv
      id: customerID
      label: Churn
      positive: "Yes"
    labels:
      as_of: 2024-06-01
      horizon_days: 90

Paths are absolute or relative to the spec file. `load_spec` parses and checks the *shape* of the spec;
`features.validate` checks the data the spec points at.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from churnsense.errors import UserError, read_yaml_file

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


class SpecError(UserError):
    """The spec file is missing, not YAML, or has a key with a wrong value. The message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TableSpec(_Frozen):
    """A file (or several: a glob or a directory of same-format files) and how to read it."""

    path: str = Field(description="CSV, TSV or Parquet file, glob or directory; relative to the spec file")
    read_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra reader options, e.g. {sep: ';', encoding: latin-1, quoting: 3} for CSV",
    )

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path is empty")
        return value


# Names the loaders give columns of their own: a value column so named would overwrite one (or be overwritten).
RESERVED_COLUMNS = ("customer_id", "timestamp", "event_type", "text", "sentiment", "aspect", "event_id")


def _check_value_names(values: tuple[str, ...]) -> tuple[str, ...]:
    for name in values:
        if name in RESERVED_COLUMNS or name.startswith("__"):
            raise ValueError(
                f"values: {name!r} is the name churnsense gives a column of its own (events are read into "
                f"{', '.join(RESERVED_COLUMNS)}): rename the column in your file or leave it out"
            )
    return values


class ProfileJoinSpec(TableSpec):
    """A table of more profile columns, one row per customer, joined on the customer id (`customers.join`)."""

    id: str = Field(description="customer id column of this table")
    columns: tuple[str, ...] = Field(min_length=1, description="the columns it adds to the profile")


class CustomersSpec(TableSpec):
    """One row per customer: profile columns become features as they are."""

    id: str | None = Field(None, description="customer id column; without it the row number is the id")
    label: str | None = Field(None, description="static churn label column (data sets without a history)")
    positive: Any = Field(None, description="value of `label` that means churned (default: true/1/yes)")
    churn_date: str | None = Field(None, description="date the customer left; empty = still a customer")
    signup_date: str | None = Field(None, description="date the customer joined (for tenure)")
    drop: tuple[str, ...] = Field((), description="columns that must not become features (free text, leaks)")
    duration: str | None = Field(
        None,
        description="one-table data with `label`: how long each customer has been (or was) a customer, the time "
        "to churn of a survival model (`churnsense train survival`), which then does not read it as a feature",
    )
    duration_unit: Literal["days", "weeks", "months"] = Field("days", description="the unit of `duration`")
    join: tuple[ProfileJoinSpec, ...] = Field(
        (),
        description="more profile columns from other tables with one row per customer, joined on the customer id "
        "(each names its id column and the columns it adds)",
    )


class EventsSpec(TableSpec):
    """Interaction history, one row per event."""

    id: str = Field(description="customer id column, matching customers.id")
    time: str = Field(description="event timestamp column")
    type: str = Field(description="event type column (categorical, counted per window)")
    text: str | None = Field(None, description="message / ticket / review text column")
    values: tuple[str, ...] = Field((), description="numeric columns aggregated per window")
    churn_event: str | None = Field(None, description="event type that means the customer left")
    sentiment: str | None = Field(None, description="precomputed sentiment score column in [-1, 1]")
    aspect: str | None = Field(
        None,
        description="precomputed aspect column (what each text is about, as the churn model's aspect model names "
        "it); read only with `sentiment`, by a churn model that counts negative texts per aspect",
    )
    event_id: str | None = Field(
        None, description="unique event id column: `churnsense ingest` keys events by it (else by content)"
    )

    @field_validator("values")
    @classmethod
    def _values_not_reserved(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_value_names(values)

    @model_validator(mode="after")
    def _aspect_beside_sentiment(self) -> EventsSpec:
        if self.aspect and not self.sentiment:
            raise ValueError(
                "aspect: a precomputed aspect column is read beside a precomputed `sentiment` column"
            )
        return self


SOURCE_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
STAGED = "staged in"  # how a staged table is named in messages (`DatasetSpec.shown_file`)


class LinkSpec(TableSpec):
    """A table that leads a source's id (a subscription, device or order) to its customer."""

    key: str = Field(description="column of the link table that holds the source's id")
    customer: str = Field(description="column of the link table that holds the customer id")


class EventSourceSpec(TableSpec):
    """One of several event tables (`events` as a list): tickets, usage, invoices... Each gives its events a
    type, from a column or fixed; the sources' types must not overlap, so a type says which source it is from."""

    name: str = Field(pattern=SOURCE_NAME, description="the source's name, used in messages and event ids")
    id: str = Field(description="customer id column (or the id `via` leads to the customer)")
    via: LinkSpec | None = Field(None, description="a link table from this source's id to the customer id")
    time: str = Field(description="event timestamp column")
    type: str | None = Field(None, description="the one event type of every row of this source (e.g. ticket)")
    type_column: str | None = Field(None, description="event type column (instead of a fixed `type`)")
    type_prefix: str = Field("", description="put before every type read from `type_column` (e.g. usage_)")
    text: str | None = Field(None, description="message / ticket / review text column")
    values: tuple[str, ...] = Field((), description="numeric columns aggregated per window")
    churn_event: str | None = Field(
        None, description="event type of this source that means the customer left"
    )
    sentiment: str | None = Field(None, description="precomputed sentiment score column in [-1, 1]")
    aspect: str | None = Field(None, description="precomputed aspect column, read beside `sentiment`")
    event_id: str | None = Field(None, description="unique event id column (give it on every source or none)")

    @field_validator("values")
    @classmethod
    def _values_not_reserved(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_value_names(values)

    @field_validator("type")
    @classmethod
    def _stripped_type(cls, value: str | None) -> str | None:
        return value.strip() if value is not None else None  # the loaders strip types: " ticket" is "ticket"

    @model_validator(mode="after")
    def _one_type(self) -> EventSourceSpec:
        if (self.type is None) == (self.type_column is None):
            raise ValueError(
                "give exactly one of `type` (one fixed type) or `type_column` (a column of types)"
            )
        if self.type is not None and not self.type.strip():
            raise ValueError("type is empty")
        if self.type_prefix and self.type_column is None:
            raise ValueError("type_prefix applies to types read from `type_column`")
        if self.aspect and not self.sentiment:
            raise ValueError(
                "aspect: a precomputed aspect column is read beside a precomputed `sentiment` column"
            )
        return self


class ChurnTableSpec(TableSpec):
    """Churn dates in their own table (a CRM's cancellations). A customer listed more than once left at the
    earliest date: the history after a first churn is not followed."""

    id: str = Field(description="customer id column")
    date: str = Field(description="the date the customer left")


def _events_kind(value: Any) -> str:
    return "sources" if isinstance(value, list | tuple) else "table"


EventsSection = Annotated[
    Annotated[EventsSpec, Tag("table")] | Annotated[tuple[EventSourceSpec, ...], Tag("sources")],
    Discriminator(_events_kind),
]


class ReviewsSpec(TableSpec):
    """Labelled text for the sentiment model: either class labels or 1-5 star ratings."""

    text: str
    label: str | None = None
    rating: str | None = None
    id: str | None = Field(None, description="optional id column used to de-duplicate (e.g. tweet_id)")
    classes: tuple[str, ...] | None = Field(None, description="allowed label values; others are an error")

    @model_validator(mode="after")
    def _label_or_rating(self) -> ReviewsSpec:
        if (self.label is None) == (self.rating is None):
            raise ValueError("give exactly one of `label` (class names) or `rating` (1-5 stars)")
        return self


class AsOfRange(_Frozen):
    start: dt.date
    end: dt.date
    every_days: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AsOfRange:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


class LabelsSpec(_Frozen):
    """How churn labels are made from events and dates."""

    as_of: dt.date | list[dt.date] | AsOfRange | None = None
    horizon_days: int = Field(90, gt=0)
    inactivity: bool = False

    def as_of_dates(self) -> list[dt.date]:
        """Every snapshot date, sorted, without duplicates."""
        if self.as_of is None:
            return []
        if isinstance(self.as_of, dt.date):
            return [self.as_of]
        if isinstance(self.as_of, AsOfRange):
            step = dt.timedelta(days=self.as_of.every_days)
            dates, day = [], self.as_of.start
            while day <= self.as_of.end:
                dates.append(day)
                day += step
            return dates
        return sorted(set(self.as_of))


class DatasetSpec(_Frozen):
    """The whole spec. `base_dir` is the folder relative paths are resolved against."""

    customers: CustomersSpec | None = None
    events: EventsSection | None = None
    churn: ChurnTableSpec | None = None
    reviews: ReviewsSpec | None = None
    labels: LabelsSpec = LabelsSpec()
    base_dir: Path = Path(".")
    source: Path | None = Field(None, description="the spec file this was read from")
    staged: Path | None = Field(
        None, description="for a spec that combines tables: the folder its combined tables were staged in"
    )
    staged_sources: tuple[str, ...] = Field((), description="the event sources whose rows were staged")

    def shown_file(self, file: str) -> str:
        """`file` as a user knows it: a staged table is named by what it was combined from."""
        if self.staged is None or not file.startswith(str(self.staged)):
            return file
        if file.endswith("events.parquet"):
            return f"events of sources {', '.join(self.staged_sources)} ({STAGED} {self.staged})"
        return f"customers, joined and churn tables ({STAGED} {self.staged})"

    def resolve(self, path: str) -> Path:
        """An absolute path for `path` as written in the spec."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)

    @property
    def needs_staging(self) -> bool:
        """True when the spec combines tables (several event sources, a churn table, joined profiles): its
        data is then read through `features.sources.stage_sources`, into one canonical table each."""
        joins = self.customers is not None and bool(self.customers.join)
        return isinstance(self.events, tuple) or self.churn is not None or joins

    @model_validator(mode="after")
    def _something_to_read(self) -> DatasetSpec:
        if self.customers is None and self.events is None and self.reviews is None:
            raise ValueError("the spec names no data: give at least one of customers, events, reviews")
        return self

    @model_validator(mode="after")
    def _tables_fit_together(self) -> DatasetSpec:
        if self.churn is not None:
            if self.customers is None:
                raise ValueError("churn: a churn table sets the churn dates of a `customers` table; add one")
            if self.customers.churn_date:
                raise ValueError("churn: give churn dates either as customers.churn_date or a churn table")
        if self.customers is not None and not self.customers.id:
            if self.customers.join:
                raise ValueError("customers.join: joined tables need customers.id to join on")
            if self.churn is not None:
                raise ValueError("churn: a churn table needs customers.id to find its customers")
            if isinstance(self.events, tuple):
                raise ValueError("events: several sources need customers.id to find each event's customer")
        if isinstance(self.events, tuple):
            _check_sources(self.events)
        return self


def _check_sources(sources: tuple[EventSourceSpec, ...]) -> None:
    """What can be checked of several event sources before reading them; overlaps of types read from columns
    are found when the data is read."""
    if not sources:
        raise ValueError("events: the list of sources is empty")
    names = [source.name for source in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"events: source name(s) used twice: {', '.join(twice)}")
    owner: dict[str, str] = {}
    for source in sources:
        if source.type is not None:
            if source.type in owner:
                raise ValueError(
                    f"events: sources {owner[source.type]!r} and {source.name!r} both give type {source.type!r}; "
                    "a type must say which source it is from (rename one)"
                )
            owner[source.type] = source.name
    churn_events = {s.churn_event for s in sources if s.churn_event}
    if len(churn_events) > 1:
        raise ValueError(f"events: more than one churn_event ({', '.join(sorted(churn_events))}); give one")
    with_text = [s for s in sources if s.text]
    scored = [s.name for s in with_text if s.sentiment]
    if scored and len(scored) != len(with_text):
        raise ValueError(
            "events: give a precomputed `sentiment` on every source with text or on none "
            f"(has it: {', '.join(scored)})"
        )
    with_ids = [s.name for s in sources if s.event_id]
    if with_ids and len(with_ids) != len(sources):
        raise ValueError(f"events: give event_id on every source or on none (has it: {', '.join(with_ids)})")


def _format_pydantic_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        parts = [
            str(p)
            for p in item["loc"]
            if not str(p).startswith("function-") and p not in ("table", "sources")
        ]
        where = ".".join(parts) or "spec"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_spec(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> DatasetSpec:
    """Build a `DatasetSpec` from an already-parsed mapping. Raises `SpecError` naming the bad key."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source or 'spec'}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return DatasetSpec(**raw, base_dir=base_dir, source=source)
    except ValidationError as error:
        raise SpecError(f"{source or 'spec'}: {_format_pydantic_error(error)}") from None
    except TypeError as error:
        raise SpecError(f"{source or 'spec'}: {error}") from None


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a dataset spec YAML file. Relative data paths are resolved against the file's folder.

    A spec that combines tables (several event sources, a churn table, joined profiles) comes back as the
    one-table spec of its staged tables (`features.sources.stage_sources`), so every command reads the same rows.
    """
    from features.sources import stage_sources  # reads data: features.sources imports this module

    spec_path = Path(path).expanduser().resolve()
    raw = read_yaml_file(spec_path, SpecError, "spec file")
    return stage_sources(parse_spec(raw or {}, base_dir=spec_path.parent, source=spec_path))
