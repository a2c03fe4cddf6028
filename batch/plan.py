"""The batch plan: everything a worker needs to score its share, resolved once by the driver and picklable.

`make_plan` resolves the input files, decides whether event texts must be scored (and with which sentiment
model: the churn model's own, `text_sentiment_source`), and sizes the customer buckets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from churnsense.errors import UserError
from features.engine import FEATURE_VERSION
from features.io import resolve_files
from features.raw import is_parquet, parquet_file
from features.spec import DatasetSpec
from models.catalog import CHURN_MODEL, SURVIVAL_MODEL, absolute_tracking_uri, champion_uri, resolve_model_uri
from models.lineage import AspectLineage, SentimentLineage

logger = logging.getLogger(__name__)


DEFAULT_CHURN_MODEL = champion_uri(CHURN_MODEL)
DEFAULT_CHUNK_CUSTOMERS = 50_000
READ_BATCH_ROWS = 1_000_000
# Bumped when the work-dir layout or the bucket format changes, so a resume never mixes formats.
BATCH_FORMAT = (
    "5"  # 2: reasons carry `evidence`; 3: `aspect_model`; 4: phrases only with `phrases`; 5: time to churn
)
# Test hook: seconds a worker sleeps after each bucket it completes (lets a test kill a run between buckets).
SLEEP_HOOK_ENV = "CHURNSENSE_BATCH_SLEEP_AFTER_BUCKET"

# Extra columns carried through the bucket files (never user columns: the double underscore keeps them apart).
SOURCE_FILE = "__source_file"
SOURCE_ROW = "__source_row"
ROW_ID = "__row_id"  # customer id for specs without an id column: the row number, as `load_customers` does
SENTIMENT = (
    "__sentiment"  # event-text sentiment from the cache, declared as the bucket spec's sentiment column
)
ASPECT = (
    "__aspect"  # what each event text is about (aspect features), from the cache, as the bucket spec's aspect
)
CUSTOMERS, EVENTS = "customers", "events"

INELIGIBLE_CHOICES = ("exclude", "flag")


class BatchError(UserError):
    """The batch job cannot run as asked (bad date, model without what it needs, output path in the way)."""


# --- the plan: everything a worker needs, picklable -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SentimentSource:
    """Where event-text sentiment comes from: the churn model's own sentiment model, and the cache it fills."""

    lineage: SentimentLineage
    cache_dir: str

    def cache(self) -> Any:
        from models.sentiment_cache import open_cache

        return open_cache(self.cache_dir, self.lineage.scoring_id)


@dataclasses.dataclass(frozen=True)
class AspectSource:
    """Where event texts' aspects come from: the churn model's own aspect model, and the cache it fills."""

    lineage: AspectLineage
    cache_dir: str

    def cache(self) -> Any:
        from models.sentiment_cache import open_cache

        return open_cache(self.cache_dir, self.lineage.scoring_id)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """What to score and how: resolved once by the driver, shipped to every worker.

    Attributes:
        spec: the dataset spec (customers / events sections are used, reviews ignored).
        as_of: features describe this date (midnight at its start, naive UTC).
        model_uri: a concrete churn model URI (an alias is resolved first, so all workers load one version).
        model_version: stamped on every output row.
        model_digest: for a model given as a folder, a hash of its files (a model retrained into the same
            folder must not resume the old one's buckets); registry versions and run ids are immutable.
        tracking_uri: the MLflow tracking URI, absolute, so workers with another working directory find it.
        customers_files / events_files: the input files, in the order the loaders read them.
        events_columns: raw event columns to read; the text column (if any) becomes `SENTIMENT` (and stays
            beside it with `evidence`).
        text_column: the raw event text column to score, or None when sentiment is not needed or precomputed.
        sentiment: the sentiment model (the one the churn model was trained with) and cache, when
            `text_column` is set.
        aspects: the churn model's aspect model and cache, when it counts negative texts per aspect and
            `text_column` is set (the texts' aspects then become `ASPECT`).
        survival_uri / survival_version: the survival model (a concrete URI) that adds time to churn from the
            same features, or None (`choose_survival`).
        n_buckets: customer buckets (local engine: files on disk; Spark: groups).
        top_k: reasons per customer.
        evidence: list the events behind each reason (`features.evidence`); event texts are then read too.
        ineligible: "exclude" (default: customers who had not signed up or had already churned at `as_of` are
            left out and counted in the summary) or "flag" (kept with `eligible=false` and no risk).
    """

    spec: DatasetSpec
    as_of: dt.date
    model_uri: str
    model_version: str
    tracking_uri: str
    customers_files: tuple[str, ...]
    events_files: tuple[str, ...]
    events_columns: tuple[str, ...]
    text_column: str | None
    sentiment: SentimentSource | None
    n_buckets: int
    top_k: int = 5
    model_digest: str = ""
    ineligible: str = "exclude"
    evidence: bool = False
    aspect_model: str | None = None
    phrases: bool = False
    aspects: AspectSource | None = None
    survival_uri: str | None = None
    survival_version: str | None = None

    def fingerprint(self) -> str:
        """A key for the work dir: input files (path, size, mtime), spec, model, date, bucketing, formats."""
        files = []
        for name in (*self.customers_files, *self.events_files):
            stat = Path(name).stat()
            files.append([name, stat.st_size, stat.st_mtime_ns])
        payload = {
            "format": BATCH_FORMAT,
            "features": FEATURE_VERSION,
            "spec": self.spec.model_dump(mode="json", exclude={"base_dir", "source", "reviews", "labels"}),
            "files": files,
            "as_of": self.as_of.isoformat(),
            "model": [self.model_uri, self.model_version, self.model_digest],
            "sentiment": [self.sentiment.lineage.scoring_id, self.sentiment.cache_dir]
            if self.sentiment
            else None,
            "n_buckets": self.n_buckets,
            "top_k": self.top_k,
            "ineligible": self.ineligible,
            "evidence": self.evidence,
            "aspect_model": self.aspect_model,
            "phrases": self.phrases,
            "aspects": [self.aspects.lineage.scoring_id, self.aspects.cache_dir] if self.aspects else None,
            "survival": [self.survival_uri, self.survival_version],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """Names, sizes and modification times of a model folder's files, hashed: changes when it is rewritten."""
    digest = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(folder) if path != folder else path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:16]


# --- planning ---------------------------------------------------------------------------------------------------


def parse_as_of(as_of: str | dt.date) -> dt.date:
    if isinstance(as_of, dt.datetime):
        return as_of.date()
    if isinstance(as_of, dt.date):
        return as_of
    try:
        return dt.date.fromisoformat(str(as_of))
    except ValueError:
        raise BatchError(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)") from None


def count_rows(files: Sequence[str]) -> int:
    """Data rows in the files: Parquet metadata, or newlines of a CSV (minus the header; quoted newlines in
    texts make this an overestimate, which only means a few more buckets)."""
    total = 0
    for name in files:
        if is_parquet(name):
            total += parquet_file(name).metadata.num_rows
        else:
            with open(name, "rb") as handle:
                lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))
            total += max(lines - 1, 0)
    return total


def text_sentiment_source(
    model: Any, sentiment_model: str | None, cache_dir: str | Path | None
) -> SentimentSource:
    """The sentiment model that computes the churn model's text features: the one it was trained with.

    `sentiment_model` may say where to load that model from (another store, a folder), but it must be the same
    model (artifact digest and arithmetic); anything else is refused, never used silently.
    """
    from models.text_scoring import default_cache_dir, sentiment_lineage

    trained_with = model.sentiment_lineage
    if trained_with is None:
        raise BatchError(
            f"churn model v{model.version} uses text sentiment features but does not record which sentiment "
            "model built them (it predates lineage); retrain it: churnsense train churn --sentiment-model ..."
        )
    lineage = trained_with
    if sentiment_model:
        given = sentiment_lineage(sentiment_model)
        if given.scoring_id != trained_with.scoring_id:
            raise BatchError(
                f"--sentiment-model: {given.describe()} is not the sentiment model churn model "
                f"v{model.version} was trained with ({trained_with.describe()}); its text features would "
                "differ. Leave --sentiment-model out, or retrain the churn model with this sentiment model"
            )
        lineage = given
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return SentimentSource(lineage=lineage, cache_dir=str(root.resolve()))


def check_evidence_options(evidence: bool, aspect_model: str | None, phrases: bool) -> None:
    """Aspects and phrases annotate evidence texts: without `evidence` they would do nothing, so they are refused."""
    if aspect_model is not None and not evidence:
        raise BatchError("--aspect-model names what evidence texts are about: it needs --evidence")
    if phrases and not evidence:
        raise BatchError("--phrases explains evidence texts: it needs --evidence")


NO_SURVIVAL = "none"


def survival_source(churn: Any, requested: str | None) -> tuple[str | None, str | None]:
    """(concrete URI, version) of the survival model that adds time to churn, or (None, None).

    Default (`requested` None): the registry's survival champion, if there is one and it fits the churn model
    (`SurvivalModel.check_fits`), as `churnsense build` chooses for the Bento; "none": no time to churn.

    Raises:
        BatchError: a named model that cannot answer beside the churn model.
    """
    from models.churn import ModelContractError
    from models.survival import SurvivalModel

    if requested == NO_SURVIVAL:
        return None, None
    try:
        uri, version = resolve_model_uri(requested or champion_uri(SURVIVAL_MODEL))
    except UserError:
        if requested is None:
            logger.info("no %s champion: the output has no time to churn", SURVIVAL_MODEL)
            return None, None
        raise
    try:
        SurvivalModel.load(uri).check_fits(
            churn, what="--survival-model" if requested else "the survival champion"
        )
    except ModelContractError as error:
        if requested is not None:
            raise BatchError(str(error)) from None
        logger.warning("%s; the output has no time to churn (retrain it: churnsense train survival)", error)
        return None, None
    return uri, version or uri


def make_plan(
    spec: DatasetSpec,
    as_of: dt.date,
    model: Any,
    model_uri: str,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    top_k: int = 5,
    sentiment_model: str | None = None,
    cache_dir: str | Path | None = None,
    ineligible: str = "exclude",
    evidence: bool = False,
    aspect_model: str | None = None,
    phrases: bool = False,
    survival: tuple[str | None, str | None] = (None, None),
) -> BatchPlan:
    """Resolve the input files, decide whether texts must be scored, and size the buckets.

    Args:
        model: the loaded churn model (its `schema` says whether sentiment features are needed).
        model_uri: the concrete URI workers load.
        chunk_customers: customers per bucket (events-only specs assume ~50 events per customer).
        sentiment_model: where to load the churn model's own sentiment model from (default: where it was).
        aspect_model: a concrete aspect model URI: texts quoted as evidence also say what they are about.
        phrases: texts quoted as evidence also carry the phrase that drove their sentiment (`models.phrases`).
        survival: (concrete URI, version) of the survival model (`survival_source`), or (None, None).
    """
    check_evidence_options(evidence, aspect_model, phrases)
    if spec.customers is None and spec.events is None:
        raise BatchError(f"{spec.source}: the spec has neither customers nor events to score")
    if ineligible not in INELIGIBLE_CHOICES:
        raise BatchError(f"--ineligible: {ineligible!r} is not one of {', '.join(INELIGIBLE_CHOICES)}")
    schema = model.schema
    customers_files = tuple(str(p) for p in resolve_files(spec, spec.customers)) if spec.customers else ()
    events_files: tuple[str, ...] = ()
    events_columns: tuple[str, ...] = ()
    text_column = None
    sentiment = aspects = None
    es = spec.events
    if es is not None and schema.use_events:
        events_files = tuple(str(p) for p in resolve_files(spec, es))
        columns = [es.id, es.time, es.type, *es.values]
        if es.sentiment:
            columns.append(es.sentiment)
            if schema.aspects:
                if not es.aspect:
                    raise BatchError(
                        "events.aspect: the churn model counts negative texts per aspect, and the spec's "
                        "precomputed events.sentiment column needs a precomputed aspect column beside it"
                    )
                columns.append(es.aspect)
        elif schema.use_sentiment:
            if not es.text:
                raise BatchError(
                    "events.text: the churn model uses text sentiment, but the spec names no text column "
                    "(or a precomputed events.sentiment column)"
                )
            text_column = es.text
            columns.append(es.text)
            sentiment = text_sentiment_source(model, sentiment_model, cache_dir)
            if schema.aspects:
                aspects = AspectSource(model.aspect_lineage, sentiment.cache_dir)
        if evidence and es.text:
            columns.append(es.text)  # kept beside its scores: the evidence quotes the texts
        events_columns = tuple(dict.fromkeys(columns))
        missing = [v for v in schema.value_columns if v not in es.values]
        if missing:
            raise BatchError(f"events.values: the churn model needs value column(s) {', '.join(missing)}")
    elif schema.use_events:
        raise BatchError("events: the churn model uses event features but the spec has no events section")
    if schema.aspects and model.aspect_lineage is not None:
        # Its aspect model names evidence texts too (as in the service) and is named on every row.
        own = model.aspect_lineage
        if aspect_model is not None and aspect_model != own.model_uri:
            from models.aspect_scoring import CachedAspectLabeler

            given = CachedAspectLabeler.from_uri(aspect_model).lineage  # loads it: the same model elsewhere?
            if given.scoring_id != own.scoring_id:
                raise BatchError(
                    f"--aspect-model: {given.describe()} is not the aspect model churn model v{model.version} "
                    f"counts texts per aspect with ({own.describe()}), which names evidence texts too; leave "
                    "--aspect-model out"
                )
        aspect_model = aspect_model or own.model_uri
    n_customers = count_rows(customers_files) if customers_files else max(1, count_rows(events_files) // 50)
    n_buckets = max(1, math.ceil(n_customers / max(1, chunk_customers)))
    return BatchPlan(
        spec=spec,
        as_of=as_of,
        model_uri=model_uri,
        model_version=str(model.version),
        tracking_uri=absolute_tracking_uri(),
        customers_files=customers_files,
        events_files=events_files,
        events_columns=events_columns,
        text_column=text_column,
        sentiment=sentiment,
        n_buckets=n_buckets,
        top_k=top_k,
        ineligible=ineligible,
        evidence=evidence,
        aspect_model=aspect_model,
        phrases=phrases,
        aspects=aspects,
        model_digest=folder_digest(Path(model_uri)) if Path(model_uri).exists() else "",
        survival_uri=survival[0],
        survival_version=survival[1],
    )
