"""What a batch run writes: the scores and rejects schemas, result rows, the summary, and reading them back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch.plan import CUSTOMERS, EVENTS, BatchPlan
from features.columns import AS_OF
from features.io import REJECT_COLUMNS
from models.survival import ANSWER_COLUMNS

if TYPE_CHECKING:
    from models.reasons import ReasonColumns

logger = logging.getLogger(__name__)


# `evidence`: JSON of `features.evidence` ({"total", "events": [...]}), only with --evidence; else null.
REASON_TYPE = pa.struct(
    [
        ("feature", pa.string()),
        ("value", pa.string()),
        ("contribution", pa.float64()),
        ("evidence", pa.string()),
    ]
)
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
        # The aspect model behind the aspect features (the churn model's own) or that named evidence texts'
        # aspects (--aspect-model).
        ("aspect_model", pa.string()),
        # Time to churn (`models.survival`), null without a survival model (or for a customer it cannot answer).
        *[(name, pa.float64()) for name in ANSWER_COLUMNS],
        ("survival_model", pa.string()),  # its registry version (or run id), if any
    ]
)
RESULT_COLUMNS = RESULT_SCHEMA.names
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


def result_table(
    ids: pd.Index,
    scored: pd.DataFrame,
    plan: BatchPlan,
    eligible: np.ndarray,
    why_not: np.ndarray,
    times: pd.DataFrame | None = None,
    survival_version: str | None = None,
    reason_columns: ReasonColumns | None = None,
) -> pa.Table:
    """One row per customer of `ids` with `RESULT_SCHEMA`. `scored`: `ChurnModel.score` output for the eligible
    customers (`ids[eligible]`, in that order), or `ChurnModel.score_columns`' frame with its reasons in
    `reason_columns`; the others keep their row (the engines drop or flag them) with no risk or band and empty
    reasons. `times`: `SurvivalModel.summary` of the same rows as `scored`, by `survival_version`, or None."""
    n = len(ids)
    if len(scored) != int(eligible.sum()):
        raise ValueError(f"{len(scored)} scored rows for {int(eligible.sum())} eligible customers")
    lineage = plan.sentiment.lineage if plan.sentiment is not None else None

    def scored_only(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        full = np.full(n, np.nan) if values.dtype.kind == "f" else np.full(n, None, dtype=object)
        full[eligible] = values
        return pa.array(full, kind, mask=~eligible)

    if reason_columns is not None:
        reasons = reason_columns_array(reason_columns, eligible)
    else:
        listed: list[Any] = [[]] * n
        for row, found in zip(np.flatnonzero(eligible).tolist(), scored["reasons"], strict=True):
            listed[row] = found
        reasons = reasons_array(listed)
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
            "aspect_model": pa.array([plan.aspect_model] * n, pa.string()),
            **{name: _time_column(times, name, eligible) for name in ANSWER_COLUMNS},
            "survival_model": pa.array([survival_version] * n, pa.string()),
        },
        schema=RESULT_SCHEMA,
    )


def _time_column(times: pd.DataFrame | None, name: str, eligible: np.ndarray) -> pa.Array:
    """A time-to-churn column: null (never NaN) where there is no answer, as the service answers null.
    `times`: the eligible customers' rows."""
    values = np.full(len(eligible), np.nan)
    if times is not None:
        values[eligible] = times[name].to_numpy(dtype="float64")
    return pa.array(values, pa.float64(), mask=~eligible | np.isnan(values))


def evidence_text(evidence: dict[str, Any] | None) -> str | None:
    """A reason's evidence as the JSON the output holds (keys sorted: the same bytes from either engine)."""
    return None if evidence is None else json.dumps(evidence, sort_keys=True, ensure_ascii=False)


def reasons_array(reasons: Sequence[Any]) -> pa.Array:
    """Each customer's reasons as list<struct<feature, value, contribution, evidence>>; values as text so that
    numeric and categorical features share one column."""
    rows = [_reason_items(row) for row in reasons]
    flat = [item for row in rows for item in row]
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    # One pass over a million customers' reasons, the common value types (a float, a text) inline.
    features, texts, contributions, evidence = [], [], np.empty(len(flat)), []
    for i, item in enumerate(flat):
        features.append(str(item["feature"]))
        value = item.get("value")
        kind = type(value)
        if kind is float:
            texts.append(None if value != value else repr(value))
        elif kind is str:
            texts.append(value)
        else:
            texts.append(None if _missing(value) else reason_value_text(value))
        contributions[i] = item.get("contribution", np.nan)
        found = item.get("evidence")
        evidence.append(None if found is None else evidence_text(found))
    structs = pa.StructArray.from_arrays(
        [
            pa.array(features, pa.string()),
            pa.array(texts, pa.string()),
            pa.array(contributions),
            pa.array(evidence, pa.string()),
        ],
        fields=list(REASON_TYPE),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), structs, type=pa.list_(REASON_TYPE))


def reason_columns_array(reasons: ReasonColumns, eligible: np.ndarray) -> pa.Array:
    """`reasons_array` of the same reasons given as columns (the eligible rows' `ReasonColumns`; the other rows
    get none): the same Arrow array, without a dict per reason."""
    k = reasons.feature.shape[1]
    offsets = np.zeros(len(eligible) + 1, dtype=np.int32)
    np.cumsum(np.where(eligible, k, 0), out=offsets[1:])
    names = pa.array(list(reasons.names), pa.string())
    # The values `reasons_array` would write for them: floats in `repr`, text as it is, None for missing.
    texts = [
        value if value is None or type(value) is str else reason_value_text(value) for value in reasons.value
    ]
    structs = pa.StructArray.from_arrays(
        [
            names.take(pa.array(reasons.feature.reshape(-1))),
            pa.array(texts, pa.string()),
            pa.array(np.ascontiguousarray(reasons.contribution, dtype=np.float64).reshape(-1)),
            pa.nulls(len(texts), pa.string()),
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
    rows_in: dict[str, int] = dataclasses.field(default_factory=dict)
    """Input rows read, by table (`customers`, `events`)."""
    survival_version: str | None = None
    """The survival model behind the time-to-churn columns (None: they are empty)."""

    def rejected_rows(self, table: str) -> int:
        return sum(n for key, n in self.rejected_by_reason.items() if key.startswith(f"{table}: "))

    @property
    def unaccounted_customer_rows(self) -> int:
        """Customer rows read but neither scored, nor counted as not customers at `as_of`, nor rejected: 0
        unless something lost a row (no customers table: 0)."""
        if CUSTOMERS not in self.rows_in:
            return 0
        accounted = self.n_customers + sum(self.ineligible_by_reason.values()) + self.rejected_rows(CUSTOMERS)
        return self.rows_in[CUSTOMERS] - accounted

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
            "  time to churn: "
            + (
                f"survival model v{self.survival_version}"
                if self.survival_version
                else "none (no survival model)"
            ),
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
        if CUSTOMERS in self.rows_in:
            lines.append(
                f"  customer rows read: {self.rows_in[CUSTOMERS]:,} = {self.n_customers:,} scored"
                f" + {sum(self.ineligible_by_reason.values()):,} not customers at {self.as_of}"
                f" + {self.rejected_rows(CUSTOMERS):,} rejected"
                + (
                    f"  (MISMATCH: {self.unaccounted_customer_rows:,} unaccounted)"
                    if self.unaccounted_customer_rows
                    else ""
                )
            )
        if EVENTS in self.rows_in:
            n_events = self.rows_in[EVENTS]
            rejected = self.rejected_rows(EVENTS)
            lines.append(
                f"  event rows read: {n_events:,} = {n_events - rejected:,} used + {rejected:,} rejected"
            )
        lines.append(f"  wrote {self.out}")
        return "\n".join(lines)

    def top_risk(self, n: int = 10) -> pd.DataFrame:
        """The `n` riskiest customers: customer_id, churn_risk, risk_band and reasons as readable text."""
        return top_risk(self.out, n)


def top_risk(path: str | Path, n: int = 10) -> pd.DataFrame:
    """The `n` highest `churn_risk` rows of a scores file (or Spark output folder), ties broken by id, with
    `expected_days_to_churn`."""
    dataset = pq.ParquetDataset(str(path))
    head = dataset.read(columns=["customer_id", "churn_risk"])
    risk = head.column("churn_risk").fill_null(-1.0).to_numpy()  # ineligible (flagged) rows last
    ids = head.column("customer_id").to_numpy(zero_copy_only=False)
    order = np.lexsort((ids, -risk))[:n]
    columns = ["customer_id", "churn_risk", "risk_band", "expected_days_to_churn", "reasons"]
    table = dataset.read(columns=columns).take(pa.array(order))
    frame = table.to_pandas()
    frame["reasons"] = [
        "; ".join(f"{r['feature']}={_readable(r['value'])} ({r['contribution']:+.3f})" for r in reasons)
        for reasons in frame["reasons"]
    ]
    return frame.reset_index(drop=True)


def _readable(value: str | None) -> str:
    """A reason value for people: numbers to 4 significant digits (the file keeps the exact value)."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def band_counts(table: pa.Table) -> dict[str, int]:
    """Customers per risk band, and per reason for ineligible ones (keys `ineligible: <reason>`)."""
    counts = {}
    for column, prefix in (("risk_band", ""), ("ineligible_reason", INELIGIBLE_PREFIX)):
        for item in table.column(column).drop_null().value_counts().to_pylist():
            counts[prefix + str(item["values"])] = int(item["counts"])
    return counts


INELIGIBLE_PREFIX = "ineligible: "


def split_band_counts(counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(`band_counts` bands, ineligible reasons) apart."""
    bands = {k: v for k, v in counts.items() if not k.startswith(INELIGIBLE_PREFIX)}
    reasons = {k[len(INELIGIBLE_PREFIX) :]: v for k, v in counts.items() if k.startswith(INELIGIBLE_PREFIX)}
    return bands, reasons


def reason_counts(table: pa.Table) -> dict[str, int]:
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


def read_scores(path: str | Path) -> pd.DataFrame:
    """A scores file (local) or folder (Spark) as a frame sorted by customer_id, reasons as lists of dicts."""
    frame = pq.ParquetDataset(str(path)).read().to_pandas()
    frame["reasons"] = [list(reasons) for reasons in frame["reasons"]]
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)
