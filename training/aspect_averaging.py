"""A fine-tuned aspect model's second half: a class-balanced TF-IDF model averaged in at a validated weight.

On complaint reasons the two are good at different things: the fine-tuned encoder at the common reasons, a
class-balanced TF-IDF + logistic regression at the rare ones (on the airline tweets the encoder alone is below
the TF-IDF model on macro-F1; averaged, both are beaten: README, `benchmarks/aspects.py`). So `churnsense train
aspects --fine-tune` ships the average:

    scores = weight x encoder probabilities + (1 - weight) x TF-IDF probabilities

- the TF-IDF half is fitted on the training split only, its C chosen by stratified 3-fold CV macro-F1 on
  that split (`fit_tfidf_half`);
- the weight is chosen on the validation split by macro-F1, with the encoder scored as it will be served (int8
  when the config says so); ties go to the larger encoder share (`choose_weight`);
- `package_aspects` is the sentiment trainer's packaging step for aspect runs: it writes both halves into the
  classifier's folder (so the folder's digest covers them), logs the model with the aspect pyfunc, the weight
  curve as a plot and the shipped model's validation and test metrics (`shipped_*`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.columns import TEXT
from models.aspects import TrainedAspects
from training.reviews import LABEL, ReviewSplits
from training.sentiment_config import SentimentConfig

logger = logging.getLogger(__name__)

WEIGHTS = tuple(float(round(w, 2)) for w in np.linspace(0.0, 1.0, 11))  # the encoder's share
C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)  # the airline reasons chose 1
CV_FOLDS = 3


def fit_tfidf_half(train: pd.DataFrame, config: SentimentConfig, jobs: int = 1) -> tuple[Any, float]:
    """The balanced TF-IDF + logistic regression on `train` (normalised texts, as it will read them) with C
    chosen by stratified 3-fold CV macro-F1 (seeded by the config): (fitted pipeline, C)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from training.finetune import baseline_pipeline

    frame = TrainedAspects.tfidf_frame(train[TEXT].tolist())
    labels = train[LABEL].astype(str).astype(object).to_numpy()
    balanced = baseline_pipeline(config, len(frame)).set_params(logreg__class_weight="balanced")
    smallest = int(pd.Series(labels).value_counts().min())
    if smallest < CV_FOLDS:  # too few of a class to cross-validate: the config's C
        return balanced.set_params(logreg__C=config.baseline_c).fit(frame, labels), config.baseline_c
    search = GridSearchCV(
        balanced,
        {"logreg__C": list(C_GRID)},
        scoring="f1_macro",
        cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=config.seed),
        n_jobs=jobs,
    ).fit(frame, labels)
    return search.best_estimator_, float(search.best_params_["logreg__C"])


def choose_weight(
    encoder: np.ndarray, tfidf: np.ndarray, truth: list[str], names: list[str]
) -> tuple[float, dict[float, float]]:
    """The encoder's share with the best macro-F1 of `truth` (ties: the larger share), and the whole curve.
    `encoder` and `tfidf` are probabilities with columns in `names` order."""
    from training.aspects import aspect_metrics

    labels = sorted(set(truth))
    curve = {}
    for weight in WEIGHTS:
        blend = weight * encoder + (1.0 - weight) * tfidf
        predicted = [names[i] for i in blend.argmax(axis=1)]
        curve[weight] = aspect_metrics(truth, predicted, labels)["macro_f1"]
    best = max(curve, key=lambda w: (curve[w], w))
    return best, curve


def package_aspects(
    hf_dir: Path, classifier: Any, splits: ReviewSplits, labels: list[str], config: SentimentConfig
) -> tuple[Any, dict[str, float]]:
    """`training.sentiment.Packager` for aspect runs: the averaged model written into `hf_dir` and logged as the
    run's `model` (the aspect pyfunc). Returns (ModelInfo, metrics logged)."""
    import mlflow

    from training.aspects import aspect_metrics, curve_figure, log_promotion_split

    served = classifier.to_int8() if config.quantize else classifier
    tfidf, c = fit_tfidf_half(splits.train, config, jobs=2)
    half = TrainedAspects(served, tfidf, 0.5)
    truth = splits.validation[LABEL].astype(str).tolist()
    texts = splits.validation[TEXT].tolist()
    weight, curve = choose_weight(
        served.predict_proba(texts).astype(np.float64), half.tfidf_proba(texts), truth, half.names
    )
    shipped = TrainedAspects(served, tfidf, weight)
    metrics: dict[str, float] = {"average_weight": weight, "average_tfidf_c": c}
    alone = TrainedAspects(served)  # the encoder alone, as served (the run's test_* metrics are fp32)
    for part, frame in (("val", splits.validation), ("test", splits.test)):
        part_truth = frame[LABEL].astype(str).tolist()
        scored = shipped.predict(frame[TEXT].tolist())
        for key, value in aspect_metrics(part_truth, scored.aspects, sorted(set(part_truth))).items():
            metrics[f"shipped_{part}_{key}"] = value
        metrics[f"encoder_{part}_macro_f1"] = aspect_metrics(
            part_truth, alone.predict(frame[TEXT].tolist()).aspects, sorted(set(part_truth))
        )["macro_f1"]
        tfidf_names = [shipped.names[i] for i in shipped.tfidf_proba(frame[TEXT].tolist()).argmax(axis=1)]
        metrics[f"tfidf_half_{part}_macro_f1"] = aspect_metrics(
            part_truth, tfidf_names, sorted(set(part_truth))
        )["macro_f1"]
    by_weight = ", ".join(f"{w:g}: {f1:.4f}" for w, f1 in curve.items())
    logger.info(
        "aspects: encoder weight %g (TF-IDF C=%g); validation macro-F1 by weight %s", weight, c, by_weight
    )
    shipped.save_average(hf_dir)
    log_promotion_split(splits.test)  # not the validation split: it chose the weight
    share = "fine-tuned encoder's share (0 = TF-IDF alone, 1 = encoder alone)"
    mlflow.log_figure(curve_figure(curve, weight, share), "plots/average_weight_macro_f1.png")
    return log_trained_aspects(hf_dir, shipped, config), metrics


def log_trained_aspects(hf_dir: Path, model: TrainedAspects, config: SentimentConfig) -> Any:
    """Log `hf_dir` (classifier + TF-IDF half) as the run's model with the aspect pyfunc; register it."""
    from models.aspects_pyfunc import ASPECT_ARTIFACT, AspectsPyfunc
    from models.lineage import artifact_digest
    from training.text_logging import log_text_pyfunc, pip_requirements

    example = pd.DataFrame({TEXT: ["my bag never arrived", "two hours on hold"]}).astype({TEXT: object})
    return log_text_pyfunc(
        AspectsPyfunc(),
        {ASPECT_ARTIFACT: str(hf_dir)},
        example,
        AspectsPyfunc.frame(model.predict(example[TEXT].tolist())),
        metadata={
            "aspects": model.names,
            "kind": model.kind,
            "average_weight": model.weight,
            "backbone": config.backbone,
            "max_length": config.max_length,
            "artifact_digest": artifact_digest(hf_dir),
        },
        model_config={"quantize": config.quantize},
        registered_model_name=config.model_name if config.register_model else None,
        requirements=pip_requirements("scikit-learn", "scipy", "skops"),
    )
