"""The MLflow `pyfunc` face of the sentiment model: a `PythonModel` whose one artifact is the saved HF folder.

`mlflow.pyfunc.load_model("models:/churnsense-sentiment@champion").predict(frame)` takes a frame with a `text`
column (or a list of strings) and returns `label`, `score`, `sentiment` and `prob_<label>` per text. The logged
`model_config` decides int8 vs fp32 (`quantize`) and the torch thread count, and can be overridden at load time.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from churnsense.errors import UserError
from models.sentiment import SentimentClassifier

HF_ARTIFACT = "hf_model"
TEXT_COLUMN = "text"


def texts_from_input(model_input: Any) -> list[str]:
    """A list of strings from a frame with a `text` column (or a single column), a Series, or a list."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            column = model_input[TEXT_COLUMN]
        elif model_input.shape[1] == 1:
            column = model_input.iloc[:, 0]
        else:
            raise UserError(f"sentiment model input: expected a {TEXT_COLUMN!r} column")
        return column.astype("string").fillna("").tolist()
    if isinstance(model_input, pd.Series):
        return model_input.astype("string").fillna("").tolist()
    if isinstance(model_input, str):
        return [model_input]
    return ["" if t is None else str(t) for t in model_input]


class SentimentPyfunc(mlflow.pyfunc.PythonModel):
    """Loads `SentimentClassifier` from the `hf_model` artifact in `load_context` (never at import time)."""

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        self.classifier = SentimentClassifier.from_pretrained_dir(
            context.artifacts[HF_ARTIFACT],
            quantize=bool(config.get("quantize", False)),
            num_threads=config.get("num_threads"),
            batch_size=int(config.get("inference_batch_size", 32)),
        )

    # Parameters are left unannotated on purpose: MLflow 3 turns type hints on `predict` into a signature
    # and warns on a DataFrame hint; the explicit signature logged with the model is the contract.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self.classifier.predict_frame(texts_from_input(model_input))
