"""How text models are logged to MLflow: a pyfunc over the model's folder, its signature, pinned requirements and
metadata, and the TF-IDF baseline beside a fine-tuned model.

`Packager` is the step `training.sentiment.train_sentiment` ends with: `package_sentiment` logs a sentiment model;
the aspect trainer passes `training.aspect_averaging.package_aspects`, which first adds its TF-IDF half.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.columns import TEXT
from models.sentiment import SentimentClassifier, artifact_digest
from training.reviews import ReviewSplits
from training.sentiment_config import SentimentConfig


def pip_requirements(*more: str) -> list[str]:
    """Pinned to what trained the model, passed explicitly so MLflow never guesses them; `more`: further
    distributions the model loads (an averaged aspect model: scikit-learn, scipy, skops)."""
    from importlib.metadata import version

    return [
        f"{name}=={version(name).split('+')[0]}"
        for name in (
            "mlflow",
            "torch",
            "transformers",
            "tokenizers",
            "safetensors",
            "pandas",
            "numpy",
            "pyarrow",
            *more,
        )
    ]


def log_sentiment_model(
    hf_dir: Path, classifier: SentimentClassifier, labels: list[str], config: SentimentConfig
) -> Any:
    """Log the fine-tuned model as a pyfunc (artifact = the HF folder) with signature, input example and
    metadata; register it under `config.model_name` when `config.register_model`. Returns the `ModelInfo`."""

    from models.sentiment_pyfunc import HF_ARTIFACT, SentimentPyfunc

    example = pd.DataFrame(
        {TEXT: ["the flight was great, thank you", "lost my bag and nobody answers"]}
    ).astype({TEXT: object})
    output = classifier.predict_frame(example[TEXT].tolist())
    output = output.astype({"label": object})
    return log_text_pyfunc(
        SentimentPyfunc(),
        {HF_ARTIFACT: str(hf_dir)},
        example,
        output,
        metadata={
            "labels": labels,
            "backbone": config.backbone,
            "max_length": config.max_length,
            # The model's identity for caches and lineage (`models.sentiment.artifact_digest` of hf_model).
            "artifact_digest": artifact_digest(hf_dir),
        },
        # MLflow also logs model_config as run params: keys must not clash with the config's own params.
        model_config={
            "quantize": config.quantize,
            "num_threads": config.num_threads,
            "inference_batch_size": 32,
        },
        registered_model_name=config.model_name if config.register_model else None,
    )


Packager = Callable[
    [Path, SentimentClassifier, ReviewSplits, list[str], SentimentConfig], tuple[Any, dict[str, float]]
]
"""Logs a fine-tuned run's saved Hugging Face folder as the run's `model`, after adding any files of its own to
the folder (the aspect trainer adds its TF-IDF half: `training.aspect_averaging`); returns MLflow's `ModelInfo`
and metrics to log. Called with the in-memory fp32 classifier, the splits and the labels."""


def package_sentiment(
    hf_dir: Path,
    classifier: SentimentClassifier,
    splits: ReviewSplits,
    labels: list[str],
    config: SentimentConfig,
) -> tuple[Any, dict[str, float]]:
    """The sentiment model's `Packager`: the folder as it is, with the sentiment pyfunc."""
    return log_sentiment_model(hf_dir, classifier, labels, config), {}


def log_text_pyfunc(
    python_model: Any,
    artifacts: dict[str, str],
    example: pd.DataFrame,
    output: pd.DataFrame,
    metadata: dict[str, Any],
    model_config: dict[str, Any],
    registered_model_name: str | None,
    requirements: list[str] | None = None,
) -> Any:
    """Log a text model as `model` (a pyfunc with its files as artifacts), with the signature of `example` ->
    `output`, pinned requirements and metadata; register it when a name is given. Returns the `ModelInfo`."""
    import mlflow
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        # The explicit signature is the contract; MLflow's type-hint nag does not apply.
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts=artifacts,
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=requirements or pip_requirements(),
            metadata=metadata,
            model_config=model_config,
            registered_model_name=registered_model_name,
        )


def log_baseline_model(baseline: Any, splits: ReviewSplits) -> Any:
    """Log the TF-IDF baseline as a second model (`baseline`), not registered."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = splits.train[[TEXT]].head(2).astype({TEXT: object})
    from importlib.metadata import version

    return mlflow.sklearn.log_model(
        baseline,
        name="baseline",
        signature=infer_signature(example, np.asarray(baseline.predict(example), dtype=object)),
        input_example=example,
        pip_requirements=[f"scikit-learn=={version('scikit-learn')}", f"mlflow=={version('mlflow')}"],
    )
