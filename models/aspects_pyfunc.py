"""The MLflow `pyfunc` face of an aspect model: one artifact, the model's folder (`ZeroShotAspects.save` wrote a
zero-shot one; a trained one is the classifier's folder with its TF-IDF half, `training.aspect_averaging`).

`mlflow.pyfunc.load_model("models:/churnsense-aspects@champion").predict(frame)` takes a `text` column (or a list of
strings) and returns `aspect`, `aspect_score` and `score_<aspect>` per text: the answers churnsense itself gives.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from models.aspects import AspectPredictions, load_aspect_model
from models.sentiment_pyfunc import texts_from_input

ASPECT_ARTIFACT = "aspect_model"


class AspectsPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the aspect model from the `aspect_model` artifact in `load_context` (never at import time)."""

    def load_context(self, context: Any) -> None:
        from pathlib import Path

        config = dict(context.model_config or {})
        self.model = load_aspect_model(
            Path(context.artifacts[ASPECT_ARTIFACT]), quantize=bool(config.get("quantize", True))
        )

    @staticmethod
    def frame(predicted: AspectPredictions) -> pd.DataFrame:
        out = pd.DataFrame({"aspect": predicted.aspects, "aspect_score": predicted.best})
        out["aspect"] = out["aspect"].astype(object)
        for column, name in enumerate(predicted.names):
            out[f"score_{name}"] = predicted.scores[:, column]
        return out

    # Unannotated on purpose (see models.sentiment_pyfunc): the logged signature is the contract.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self.frame(self.model.predict(texts_from_input(model_input)))
