"""The reference a monitor compares later populations with, logged with every churn run.

`reference/profile.json`: the distribution of each feature on the run's validation rows (its newest snapshots,
the population the model was judged on) and of the final model's churn risk and risk band on those rows (the
model the monitor scores with; it has seen those rows, so its risks there are a little more confident than on
new customers; the held-out model is a different model, whose risks differed more: PSI 0.17 against the final
model's on the same test customers)
(`features.profile`); the event-type mix and text lengths of the events in the 90 days before the newest
validation date, the vocabulary of the texts before that window and the share of the window's words it lacks
(new words arrive all the time: the monitor compares its own share with this one). `churnsense monitor` reads it
from the champion's run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.columns import AS_OF, EVENT_TYPE, TEXT, TIMESTAMP
from features.engine import FeatureSchema
from features.profile import (
    WINDOW_DAYS,
    profile_frame,
    profiles_to_json,
    recent_events,
    unseen_share,
    vocabulary,
)
from models.churn import prepare_features, risk_band

REFERENCE_ARTIFACT = "reference/profile.json"
RISK, BAND = "churn_risk", "risk_band"


def reference_profile(
    valid: pd.DataFrame, schema: FeatureSchema, final: Any, cutoffs: Any, events: pd.DataFrame | None = None
) -> dict[str, Any]:
    """{"features", "scores", "events", "vocabulary", "unseen_share", "n_rows"} for `valid` (features as the
    engine builds them) and the canonical `events` (None: a one-table data set)."""
    categorical = list(schema.profile_categorical)
    numeric = [c for c in schema.feature_names() if c not in set(categorical)]
    risk = final.predict_proba(prepare_features(valid, schema))[:, 1] if len(valid) else np.zeros(0)
    scores = pd.DataFrame({RISK: risk, BAND: risk_band(risk, cutoffs) if len(risk) else []})
    out = {
        "n_rows": len(valid),
        "features": profiles_to_json(profile_frame(valid, numeric, categorical)),
        "scores": profiles_to_json(profile_frame(scores, [RISK], [BAND])),
        "events": [],
        "vocabulary": [],
        "unseen_share": None,
    }
    if events is not None and len(valid) and EVENT_TYPE in events.columns:
        as_of = pd.Timestamp(valid[AS_OF].max())
        window = recent_events(events, as_of)
        out["events"] = profiles_to_json(profile_frame(window, ["text_length"], [EVENT_TYPE]))
        if TEXT in events.columns:
            before = events.loc[events[TIMESTAMP] < as_of - pd.Timedelta(days=WINDOW_DAYS), TEXT]
            known = vocabulary(before.dropna().astype(str).unique())
            share = unseen_share(window[TEXT], known)
            out["vocabulary"], out["unseen_share"] = known, None if np.isnan(share) else share
    return out


def text_reference(train_texts: Any, test_texts: Any, test_labels: Any) -> dict[str, Any]:
    """A sentiment run's reference: its test texts' lengths and predicted label mix, the vocabulary of its
    training texts and the share of the test texts' words that vocabulary lacks (`features.profile`)."""
    from features.text import normalise_texts

    tested = normalise_texts(test_texts)
    texts = pd.DataFrame(
        {
            "text_length": [np.nan if t is None else len(t) for t in tested],
            "predicted_label": pd.array(list(test_labels), dtype="string"),
        }
    )
    known = vocabulary(normalise_texts(train_texts))
    share = unseen_share(tested, known)
    return {
        "n_rows": len(texts),
        "texts": profiles_to_json(profile_frame(texts, ["text_length"], ["predicted_label"])),
        "vocabulary": known,
        "unseen_share": None if np.isnan(share) else share,
    }
