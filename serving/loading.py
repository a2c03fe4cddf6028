"""The models a service worker serves, loaded once from the BentoML model store and checked against each other.

    served = load_served(churn_ref, sentiment_ref, aspects_ref, survival_ref, settings)

The churn model decides: its text features only mean something with the sentiment (and aspect) model it was
trained with, and a survival model only answers beside it when its features are the churn model's
(`models.survival.SurvivalModel.check_fits`). `churnsense build` pairs them so; a hand-made store that pairs
others is refused here, at start-up, naming the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bentoml

from serving.answers import ModelVersions

MLFLOW_MODEL_FOLDER = "mlflow_model"  # where `bentoml.mlflow.import_model` puts the MLflow model


def paired(churn: str, name: str) -> bool:
    """Whether the store's newest `name` entry is the optional model `churnsense build` paired with the newest
    `churn` entry (it labels the churn entry with the versions it chose, "" for none): an entry left by an
    earlier build, or a churn model built without it, is not served."""
    from bentoml.exceptions import NotFound

    try:
        wanted = bentoml.models.get(f"{churn}:latest").info.labels.get(f"{name}_version")
        found = bentoml.models.get(f"{name}:latest").info.labels.get("mlflow_version")
    except NotFound:
        return False
    return bool(wanted) and wanted == found


@dataclass
class Served:
    """What one worker serves: the models, and the versions every answer names."""

    churn: Any  # models.churn.ChurnModel
    sentiment: Any  # models.sentiment.SentimentClassifier
    aspects: Any  # models.aspects aspect model, or None
    survival: Any  # models.survival.SurvivalModel, or None
    versions: ModelVersions


def load_served(
    churn_ref: bentoml.Model,
    sentiment_ref: bentoml.Model,
    aspects_ref: bentoml.Model | None,
    survival_ref: bentoml.Model | None,
    torch_threads: int,
) -> Served:
    """Load and cross-check the Bento's models (each `ref` a resolved BentoML store entry)."""
    from models.churn import ChurnModel
    from models.sentiment import SentimentClassifier

    churn = ChurnModel.load(churn_ref.path_of(MLFLOW_MODEL_FOLDER))
    lineage = churn.sentiment_lineage
    sentiment = SentimentClassifier.load(
        sentiment_ref.path_of(MLFLOW_MODEL_FOLDER),
        num_threads=torch_threads,
        quantize=lineage.quantized if lineage is not None else None,
    )
    check_coupled(churn, sentiment)
    aspects = None
    if aspects_ref is not None:
        from models.aspects import load_aspect_model

        aspect_lineage = churn.aspect_lineage
        aspects = load_aspect_model(
            aspects_ref.path_of(MLFLOW_MODEL_FOLDER),
            quantize=aspect_lineage.quantized if aspect_lineage is not None else None,
        )
    check_aspects(churn, aspects)
    survival = None
    if survival_ref is not None:
        from models.survival import SurvivalModel

        survival = SurvivalModel.load(survival_ref.path_of(MLFLOW_MODEL_FOLDER))
        survival.version = mlflow_version(survival_ref)
        survival.check_fits(churn, what="the Bento's survival model")
    return Served(
        churn=churn,
        sentiment=sentiment,
        aspects=aspects,
        survival=survival,
        versions=ModelVersions(
            churn=mlflow_version(churn_ref),
            sentiment=mlflow_version(sentiment_ref),
            sentiment_scoring_id=sentiment.scoring_id,
            aspects=mlflow_version(aspects_ref) if aspects_ref is not None else None,
            survival=survival.version if survival is not None else None,
        ),
    )


def check_coupled(churn_model: Any, sentiment_model: Any) -> None:
    """Refuse to serve churn text features from any sentiment model but the one the churn model was trained with
    (`churnsense build` checks this too; a hand-made store could still pair the wrong two)."""
    from models.lineage import LineageError, check_lineage

    if not churn_model.schema.use_sentiment:
        return
    if churn_model.sentiment_lineage is None:
        raise LineageError(
            f"churn model v{churn_model.version} uses text sentiment features but does not record which "
            "sentiment model built them; retrain it (churnsense train churn --sentiment-model ...)"
        )
    check_lineage(churn_model.sentiment_lineage, sentiment_model, what="the Bento's sentiment model")


def check_aspects(churn_model: Any, aspects: Any) -> None:
    """Refuse to count negative texts per aspect with any aspect model but the one the churn model was trained
    with (`churnsense build` imports that one)."""
    from models.lineage import LineageError, check_lineage

    lineage = churn_model.aspect_lineage
    if lineage is None:
        return
    if aspects is None:
        raise LineageError(
            f"churn model v{churn_model.version} counts negative texts per aspect, but the Bento has no aspect "
            f"model; build it again (churnsense build imports {lineage.describe()})"
        )
    check_lineage(lineage, aspects, what="the Bento's aspect model")


def mlflow_version(stored: bentoml.Model) -> str:
    """The MLflow registry version recorded when `churnsense build` imported the model (else the tag)."""
    return str(stored.info.labels.get("mlflow_version") or stored.tag.version)
