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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    @model_validator(mode="after")
    def _aspect_beside_sentiment(self) -> EventsSpec:
        if self.aspect and not self.sentiment:
            raise ValueError(
                "aspect: a precomputed aspect column is read beside a precomputed `sentiment` column"
            )
        return self


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
    events: EventsSpec | None = None
    reviews: ReviewsSpec | None = None
    labels: LabelsSpec = LabelsSpec()
    base_dir: Path = Path(".")
    source: Path | None = Field(None, description="the spec file this was read from")

    def resolve(self, path: str) -> Path:
        """An absolute path for `path` as written in the spec."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)

    @model_validator(mode="after")
    def _something_to_read(self) -> DatasetSpec:
        if self.customers is None and self.events is None and self.reviews is None:
            raise ValueError("the spec names no data: give at least one of customers, events, reviews")
        return self


def _format_pydantic_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-")) or "spec"
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
    """Read a dataset spec YAML file. Relative data paths are resolved against the file's folder."""
    spec_path = Path(path).expanduser().resolve()
    raw = read_yaml_file(spec_path, SpecError, "spec file")
    return parse_spec(raw or {}, base_dir=spec_path.parent, source=spec_path)
