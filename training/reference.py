"""The reference a monitor compares later populations with, logged with every churn run.

`reference/profile.json`: the distribution of each feature on the run's validation rows (its newest snapshots,
the population the model was judged on) and of the final model's churn risk and risk band on those rows
(`features.profile`). `churnsense monitor` reads it from the champion's run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.engine import FeatureSchema
from features.profile import profile_frame, profiles_to_json
from models.churn import prepare_features, risk_band

REFERENCE_ARTIFACT = "reference/profile.json"
RISK, BAND = "churn_risk", "risk_band"


def reference_profile(valid: pd.DataFrame, schema: FeatureSchema, final: Any, cutoffs: Any) -> dict[str, Any]:
    """{"features": [...], "scores": [...], "n_rows": n} for `valid` (features as the engine builds them)."""
    categorical = list(schema.profile_categorical)
    numeric = [c for c in schema.feature_names() if c not in set(categorical)]
    risk = final.predict_proba(prepare_features(valid, schema))[:, 1] if len(valid) else np.zeros(0)
    scores = pd.DataFrame({RISK: risk, BAND: risk_band(risk, cutoffs) if len(risk) else []})
    return {
        "n_rows": len(valid),
        "features": profiles_to_json(profile_frame(valid, numeric, categorical)),
        "scores": profiles_to_json(profile_frame(scores, [RISK], [BAND])),
    }
