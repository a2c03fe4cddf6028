"""Labelled reviews for the sentiment model: load, clean (the one text normaliser, empties, duplicates and
conflicting labels), check the label set, and split stratified, all before a run starts (nothing leaks).

    load_labelled_reviews -> clean_reviews -> check_labels -> split_reviews      (prepare_reviews does all four)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import pandas as pd

from churnsense.errors import UserError
from features.columns import TEXT
from features.io import available_columns, load_reviews
from features.spec import DatasetSpec
from features.text import normalise_text_series
from training.sentiment_config import SentimentConfig

logger = logging.getLogger(__name__)


LABEL = "label"
REVIEW_ID = "review_id"


class SentimentDataError(UserError):
    """The reviews cannot train a classifier: missing column, unknown labels, one class, too few rows."""


# --- data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleaningReport:
    """How many rows each cleaning rule removed (all counts are rows)."""

    rows_in: int
    empty_texts: int
    id_duplicates: int
    id_conflicts: int
    text_duplicates: int
    text_conflicts: int
    rows_out: int

    def as_metrics(self) -> dict[str, float]:
        return {f"clean_{key}": float(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class ReviewSplits:
    """Disjoint stratified splits, each a frame with `text` and `label`."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train), "n_validation": len(self.validation), "n_test": len(self.test)}


def load_labelled_reviews(spec: DatasetSpec) -> pd.DataFrame:
    """The spec's `reviews` as `text`, `label` (string) and `review_id` (when `reviews.id` is given).

    Raises:
        SentimentDataError: no `reviews` section, or the text / label / id column is not in the file.
    """
    reviews = spec.reviews
    if reviews is None:
        raise SentimentDataError(f"{spec.source or 'spec'}: no `reviews` section (text + label or rating)")
    present = available_columns(spec, reviews)
    for key in ("text", "label", "rating", "id"):
        column = getattr(reviews, key)
        if column is not None and column not in present:
            shown = ", ".join(present[:30])
            raise SentimentDataError(
                f"reviews.{key}: column {column!r} not found in {spec.resolve(reviews.path)} (has: {shown})"
            )
    loaded = load_reviews(spec)
    if len(loaded.rejects):
        logger.info("reviews: %d rows without a usable label were left out", len(loaded.rejects))
    return loaded.frame


def _drop_duplicate_keys(frame: pd.DataFrame, key: pd.Series) -> tuple[pd.DataFrame, int, int]:
    """Keep one row per key; drop every row of a key whose rows disagree on the label.

    Returns (frame, duplicate rows dropped, rows dropped for conflicting labels).
    """
    labels_per_key = frame.groupby(key.to_numpy(), sort=False)[LABEL].transform("nunique")
    conflicting = (labels_per_key > 1).to_numpy()
    kept = frame[~conflicting]
    deduplicated = kept[~key[~conflicting].duplicated(keep="first").to_numpy()]
    return deduplicated, len(kept) - len(deduplicated), int(conflicting.sum())


def clean_reviews(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Normalise texts (`features.text`), drop empty texts, then de-duplicate by `review_id` (when present) and by text.

    Duplicates are matched on the case-folded text (the default backbone is uncased), so "Great!" and
    "great!" can never land on both sides of a split. A key whose copies carry different labels is dropped
    entirely: there is no way to tell which label is right. All of this happens before splitting.

    Args:
        frame: `text`, `label` and optionally `review_id`, as from `load_labelled_reviews`.
    Returns:
        (clean frame with a fresh index, counts of what each rule removed).
    """
    rows_in = len(frame)
    out = frame.copy()
    out[TEXT] = normalise_text_series(out[TEXT])  # the one normaliser every scoring path uses
    out[LABEL] = out[LABEL].astype("string").str.strip()
    non_empty = (out[TEXT].notna() & (out[TEXT] != "") & out[LABEL].notna()).to_numpy(dtype=bool)
    out = out[non_empty]
    empty = rows_in - len(out)
    id_dups = id_conflicts = 0
    if REVIEW_ID in out.columns:
        ids = out[REVIEW_ID].astype("string").str.strip()
        with_id = ids.notna().to_numpy(dtype=bool)
        by_id, id_dups, id_conflicts = _drop_duplicate_keys(out[with_id], ids[with_id])
        out = pd.concat([by_id, out[~with_id]]).sort_index()
    out, text_dups, text_conflicts = _drop_duplicate_keys(out, out[TEXT].str.casefold())
    out = out.reset_index(drop=True)
    report = CleaningReport(rows_in, empty, id_dups, id_conflicts, text_dups, text_conflicts, len(out))
    logger.info("cleaning: %s", report)
    return out, report


def check_labels(
    frame: pd.DataFrame, spec: DatasetSpec, config: SentimentConfig
) -> tuple[pd.DataFrame, list[str]]:
    """Apply `config.label_map`, check labels against the allowed classes, and return the sorted label list.

    Raises:
        SentimentDataError: a label outside `classes` (config or spec), or fewer than two classes.
    """
    reviews = spec.reviews
    field_name = f"reviews.{'label' if reviews and reviews.label else 'rating'}"
    column = (reviews.label or reviews.rating) if reviews else LABEL
    out = frame.copy()
    if config.label_map:
        out[LABEL] = out[LABEL].map(lambda v: config.label_map.get(v, v)).astype("string")
    present = sorted(out[LABEL].dropna().unique().tolist())
    for source, allowed in (
        ("config classes", config.classes),
        ("spec reviews.classes", reviews and reviews.classes),
    ):
        if allowed:
            unknown = [label for label in present if label not in allowed]
            if unknown:
                raise SentimentDataError(
                    f"{field_name} ({column!r}): unknown label(s) {', '.join(map(repr, unknown))}; "
                    f"{source} allow {', '.join(map(repr, allowed))}"
                )
    if len(present) < 2:
        found = repr(present[0]) if present else "none"
        raise SentimentDataError(
            f"{field_name} ({column!r}): only one class ({found}) after cleaning; need at least two to train"
        )
    return out, present


def split_reviews(frame: pd.DataFrame, config: SentimentConfig) -> ReviewSplits:
    """Stratified train / validation / test split (seeded); optionally subsample the training split.

    Raises:
        SentimentDataError: a class has too few rows to appear in every split.
    """
    from sklearn.model_selection import train_test_split

    counts = frame[LABEL].value_counts()
    scarce = counts[counts < 3]
    if len(scarce):
        raise SentimentDataError(
            f"reviews.label: class(es) {', '.join(f'{k!r} ({v} rows)' for k, v in scarce.items())} have fewer "
            "than 3 texts after cleaning; every class needs one in train, validation and test"
        )
    columns = [TEXT, LABEL]
    holdout = config.val_fraction + config.test_fraction
    try:
        train, rest = train_test_split(
            frame[columns], test_size=holdout, stratify=frame[LABEL], random_state=config.seed
        )
        validation, test = train_test_split(
            rest,
            test_size=config.test_fraction / holdout,
            stratify=rest[LABEL],
            random_state=config.seed,
        )
    except ValueError as error:
        raise SentimentDataError(f"reviews: cannot split {len(frame)} texts stratified ({error})") from None
    if config.max_train_examples and len(train) > config.max_train_examples:
        train, _ = train_test_split(
            train, train_size=config.max_train_examples, stratify=train[LABEL], random_state=config.seed
        )
    return ReviewSplits(*(part.reset_index(drop=True) for part in (train, validation, test)))


# --- the whole run ---------------------------------------------------------------------------------------


def prepare_reviews(
    spec: DatasetSpec, config: SentimentConfig
) -> tuple[pd.DataFrame, CleaningReport, list[str], ReviewSplits]:
    """load -> clean -> check labels -> split; every user-fixable problem raises before a run is started."""
    raw = load_labelled_reviews(spec)
    if not len(raw):
        raise SentimentDataError(f"reviews ({spec.resolve(spec.reviews.path)}): no labelled rows")
    clean, report = clean_reviews(raw)
    if not len(clean):
        raise SentimentDataError(f"reviews.text ({spec.reviews.text!r}): every text is empty")
    clean, labels = check_labels(clean, spec, config)
    return clean, report, labels, split_reviews(clean, config)
