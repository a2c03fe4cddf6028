"""Churn training data: validate the spec's files, label snapshots, and split without leaks.

    load_training_data -> label_training_data -> split_train_validation

Snapshot data holds out a share of *customers* (none of their rows trained on) and validates them at the latest
`as_of`; one-table data is split stratified by customer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from churnsense.errors import UserError
from features.columns import AS_OF, CHURNED, CUSTOMER_ID, TIMESTAMP
from features.engine import FeatureSchema
from features.labels import MIN_POSITIVES, censored_as_of
from features.pipeline import AspectLabeler, SentimentScorer, SpecData, load_data, schema_for, training_frame
from features.spec import DatasetSpec

logger = logging.getLogger(__name__)


class ChurnDataError(UserError):
    """The labelled data cannot train a churn model: one class, too few churners, censored labels, no rows."""


# --- load, validate, label -------------------------------------------------------------------------------


def load_training_data(
    spec: DatasetSpec,
    sentiment_scorer: SentimentScorer | None = None,
    aspect_labeler: AspectLabeler | None = None,
) -> SpecData:
    """Validate the files a spec names (refusing on errors) and load customers and events in canonical form.

    Raises:
        UserError: the validator found errors (all listed), or a loader could not read a file.
    """
    from features.validate import validate_spec

    report = validate_spec(spec)
    # The reviews table feeds the sentiment model only: its problems do not stop churn training.
    reviews = str(spec.resolve(spec.reviews.path)) if spec.reviews is not None else None
    relevant = [p for p in report.problems if reviews is None or not p.file.startswith(reviews)]
    for problem in relevant:
        if problem.severity != "error":
            logger.warning("%s", problem.render())
    errors = [p for p in relevant if p.severity == "error"]
    if errors:
        listed = "; ".join(problem.render() for problem in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise UserError(f"{spec.source or 'spec'} does not validate: {listed}{more}")
    return load_data(
        spec,
        sentiment_scorer=sentiment_scorer,
        with_text=sentiment_scorer is not None,
        aspect_labeler=aspect_labeler,
    )


def check_label_windows(data: SpecData) -> None:
    """Refuse censored labels: every as_of + horizon must end inside the event data.

    A label window [as_of, as_of + horizon) whose last day is after the newest event would call customers
    churned (or not) only because the data stops. Same rule as `churnsense validate`.
    """
    spec = data.spec
    dates = spec.labels.as_of_dates()
    if not dates or data.events is None or len(data.events) == 0:
        return
    newest = pd.Timestamp(data.events[TIMESTAMP].max())
    horizon = spec.labels.horizon_days
    censored, latest_ok = censored_as_of(dates, horizon, newest)
    if censored:
        raise ChurnDataError(
            f"labels.as_of: {len(censored)} as_of date(s) ({', '.join(map(str, censored[:3]))}"
            f"{', ...' if len(censored) > 3 else ''}) + horizon_days={horizon} reach past the newest event "
            f"({newest}), so their labels would be censored; use as_of dates on or before {latest_ok}"
        )


def label_training_data(
    data: SpecData, min_positives: int = MIN_POSITIVES
) -> tuple[pd.DataFrame, FeatureSchema]:
    """Labelled snapshots (`customer_id`, `as_of`, the schema's features, `churned`) and the feature schema.

    Raises:
        ChurnDataError: censored label windows, no rows, a single class or fewer than `min_positives` churners.
        UserError: the spec cannot make labels without leakage (e.g. events but no `labels.as_of`).
    """
    check_label_windows(data)
    schema = schema_for(data.spec, data)
    frame = training_frame(data, schema)
    n, positives = len(frame), int(frame[CHURNED].sum()) if len(frame) else 0
    if n == 0:
        raise ChurnDataError("no labelled rows: no customer is eligible at any as_of date")
    if positives in (0, n):
        raise ChurnDataError(
            f"labels are all one class ({n:,} rows, all {'churned' if positives else 'not churned'}): check "
            "customers.positive / the churn definition, or add as_of dates"
        )
    if positives < min_positives:
        raise ChurnDataError(
            f"only {positives} churned examples in {n:,} labelled rows (at least {min_positives} needed for a "
            "model and an honest validation): add as_of dates, a longer horizon or more customers"
        )
    return frame, schema


# --- split -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainValidationSplit:
    """Rows for fitting and for validation; no customer is in both."""

    train: pd.DataFrame
    valid: pd.DataFrame
    description: str


def _stratified_pick(keys: pd.Index, labels: np.ndarray, fraction: float, seed: int) -> pd.Index:
    """A `fraction` share of `keys`, stratified by `labels` when every class has at least two members."""
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    stratify = labels if counts.min() >= 2 else None
    _, picked = train_test_split(
        keys.to_numpy(dtype=object), test_size=fraction, stratify=stratify, random_state=seed
    )
    return pd.Index(picked)


def split_train_validation(
    frame: pd.DataFrame, horizon_days: int, validation_fraction: float, validation_snapshots: int, seed: int
) -> TrainValidationSplit:
    """Split labelled snapshots without leakage.

    Several as_of dates: a stratified `validation_fraction` of all customers is held out; their rows at the
    `validation_snapshots` latest dates are the validation set and none of their rows is in train. Train
    keeps the other customers' snapshots whose label window [as_of, as_of + horizon) ends on or before the
    first validation date (so no training label sees the validation period). One date or a static label:
    stratified split by customer.

    Raises:
        ChurnDataError: nothing left to train on, or the validation rows hold a single class.
    """
    dates = sorted(pd.Series(frame[AS_OF].dropna().unique()).tolist())
    ids = frame[CUSTOMER_ID].astype(str)
    if len(dates) <= 1:
        per_customer = frame.groupby(ids, sort=True)[CHURNED].max()
        valid_ids = _stratified_pick(per_customer.index, per_customer.to_numpy(), validation_fraction, seed)
        in_valid = ids.isin(valid_ids).to_numpy()
        train, valid = frame[~in_valid], frame[in_valid]
        description = (
            f"by customer, stratified: {len(train):,} train / {len(valid):,} validation rows "
            f"({validation_fraction:.0%} of customers, seed {seed})"
        )
    else:
        if validation_snapshots >= len(dates):
            raise ChurnDataError(
                f"split.validation_snapshots={validation_snapshots} leaves no earlier as_of date to train on "
                f"(the spec has {len(dates)})"
            )
        valid_dates = dates[-validation_snapshots:]
        first_valid = pd.Timestamp(valid_dates[0])
        # Validation customers are drawn from *all* customers (stratified by "ever churned"), not from those
        # still present at the validation dates: those are survivors, and removing only survivors from train
        # would inflate its churn rate (every earlier churner would stay in train).
        ever_churned = frame.groupby(ids, sort=True)[CHURNED].max()
        valid_ids = _stratified_pick(ever_churned.index, ever_churned.to_numpy(), validation_fraction, seed)
        in_valid = ids.isin(valid_ids).to_numpy()
        valid = frame[in_valid & frame[AS_OF].isin(valid_dates).to_numpy()]
        label_end = pd.to_datetime(frame[AS_OF]) + pd.Timedelta(days=horizon_days)
        train = frame[(label_end <= first_valid).to_numpy() & ~in_valid]
        train_dates = sorted(pd.Series(train[AS_OF].unique()).tolist())
        if len(train) == 0:
            raise ChurnDataError(
                f"no training snapshot ends its {horizon_days}-day label window by the first validation date "
                f"{first_valid.date()}: add earlier as_of dates or use fewer validation snapshots"
            )
        description = (
            f"out-of-time: validation = the rows at {', '.join(str(pd.Timestamp(d).date()) for d in valid_dates)} "
            f"of {validation_fraction:.0%} of all customers ({len(valid):,} rows); train = "
            f"{len(train_dates)} earlier snapshot(s) {pd.Timestamp(train_dates[0]).date()}.."
            f"{pd.Timestamp(train_dates[-1]).date()} without those customers ({len(train):,} rows)"
        )
    if valid[CHURNED].nunique() < 2:
        raise ChurnDataError(
            f"the validation rows hold a single class ({description}); add data or as_of dates"
        )
    if train[CHURNED].nunique() < 2:
        raise ChurnDataError(f"the training rows hold a single class ({description})")
    return TrainValidationSplit(train.reset_index(drop=True), valid.reset_index(drop=True), description)
