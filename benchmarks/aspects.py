"""Aspect quality on airline complaints: the trained and zero-shot aspect models against TF-IDF baselines.

    .venv/bin/python benchmarks/aspects.py [--trained URI | --train] [--tracking-uri URI]

Data: the negative tweets of ../shared/data/airline_tweets with their `negativereason` (10 reasons) through
`configs/airline_reasons.spec.yaml` (skipped when absent): cleaned and deduplicated by `training.reviews` and
split stratified by reason with the sentiment config's fixed seed (80 / 10 / 10), the split `churnsense train
aspects --fine-tune` trains on. Every model is scored on the same test texts:

- majority class (the most common reason in train);
- TF-IDF + logistic regression, as churnsense logs it beside every fine-tuned model (word 1-2-grams + char
  2-5-grams, C=4), and the same with balanced class weights and C chosen by 3-fold CV macro-F1 on train;
- trained: a fine-tuned aspect model (`--trained URI`: a registered or run model, e.g. from `churnsense train
  aspects --fine-tune --spec configs/airline_reasons.spec.yaml --config configs/aspects_airline_trained.yaml`;
  `--train` runs that first, about 10 minutes on 2 cores, into a store under bench_out/);
- zero-shot: `configs/aspects_airline.yaml` ("Can't Tell" as the none label), threshold chosen on validation;
- with a trained model, an experiment (issue 15): its probabilities averaged with the balanced TF-IDF model's,
  the weight chosen on validation macro-F1.

Targets: trained macro-F1 >= the better TF-IDF baseline's + 3 points; zero-shot accuracy clearly above the
majority rate.

Then the cost of what evidence adds to a text, per new (uncached) text, against scoring its sentiment (the
yardstick, same run, same int8 MiniLM, 300 test tweets): the phrase that drove it (`models.phrases`: one
forward pass per three-word window) and its zero-shot aspect (one pass of the sentence encoder).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "configs" / "airline_reasons.spec.yaml"
DATA = ROOT.parent / "shared" / "data" / "airline_tweets"


def tfidf_baselines(splits, config):  # noqa: ANN001, ANN201
    """name -> fitted pipeline: the logged baseline and a balanced one with C chosen by CV on train."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from features.columns import TEXT
    from training.finetune import fit_baseline
    from training.reviews import LABEL

    logged = fit_baseline(splits.train, config)
    balanced = clone(logged).set_params(logreg__class_weight="balanced")
    search = GridSearchCV(
        balanced,
        {"logreg__C": [0.5, 1.0, 2.0, 4.0, 8.0]},
        scoring="f1_macro",
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
        n_jobs=1,
    ).fit(splits.train[[TEXT]].astype({TEXT: object}), splits.train[LABEL].astype(object))
    return {
        "TF-IDF + LR (logged baseline, C=4)": logged,
        f"TF-IDF + LR (balanced, C={search.best_params_['logreg__C']:g} by CV)": search.best_estimator_,
    }


def averaged(trained, test_scores, baseline, splits, labels):  # noqa: ANN001, ANN201
    """The trained model's and the balanced TF-IDF model's probabilities averaged, the weight (0, 0.1 .. 1)
    chosen by validation macro-F1: (row name, test metrics, weight). Issue 15's experiment."""
    import numpy as np

    from features.columns import TEXT
    from training.aspects import aspect_metrics
    from training.reviews import LABEL

    names = list(trained.names)

    def baseline_proba(frame):  # noqa: ANN001, ANN202
        proba = baseline.predict_proba(frame[[TEXT]].astype({TEXT: object}))
        return proba[:, [list(baseline.classes_).index(n) for n in names]]

    validation = splits.validation
    mine = {"validation": trained.predict(validation[TEXT].tolist()).scores, "test": test_scores.scores}
    theirs = {"validation": baseline_proba(validation), "test": baseline_proba(splits.test)}

    def metrics(part: str, weight: float, truth: list[str]) -> dict[str, float]:
        blend = weight * mine[part] + (1 - weight) * theirs[part]
        return aspect_metrics(truth, [names[i] for i in blend.argmax(axis=1)], labels)

    truth = validation[LABEL].astype(str).tolist()
    weights = np.round(np.linspace(0, 1, 11), 1)
    weight = float(max(weights, key=lambda w: metrics("validation", w, truth)["macro_f1"]))
    test_truth = splits.test[LABEL].astype(str).tolist()
    return f"averaged: trained x {weight:g} + balanced TF-IDF", metrics("test", weight, test_truth), weight


def train_aspect_model(store: Path) -> str:
    """Fine-tune into a store of its own under bench_out; returns the model URI."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["CHURNSENSE_ARTIFACT_ROOT"] = str(store / "mlruns")
    from training.aspects import train_fine_tuned

    result = train_fine_tuned(SPEC, ROOT / "configs" / "aspects_airline_trained.yaml", baseline=False)
    return result.model_uri


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trained", help="URI of a fine-tuned aspect model to score (in --tracking-uri's store)"
    )
    parser.add_argument("--train", action="store_true", help="fine-tune one first (about 10 min on 2 cores)")
    parser.add_argument(
        "--tracking-uri", help="the MLflow store --trained is in (default: MLFLOW_TRACKING_URI)"
    )
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "bench_out")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"aspects: skipped ({DATA} is absent)")
        return
    from churnsense.environment import QUIET, set_defaults

    set_defaults(QUIET)
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    trained_uri = args.trained
    if args.train:
        trained_uri = train_aspect_model(args.bench_dir / "aspects_store")

    import torch

    from features.columns import TEXT
    from features.spec import load_spec
    from models.aspects import load_aspect_model
    from training.aspects import (
        aspect_metrics,
        best_threshold,
        build_zero_shot,
        choose_threshold,
        load_aspect_config,
    )
    from training.reviews import LABEL, prepare_reviews
    from training.sentiment_config import load_sentiment_config

    torch.set_num_threads(2)
    config = load_sentiment_config(None)
    _, _, labels, splits = prepare_reviews(load_spec(SPEC), config)
    truth = splits.test[LABEL].astype(str).tolist()
    texts = splits.test[TEXT].tolist()
    print(f"airline reasons: {len(splits.train):,} train / {len(splits.validation):,} validation / {len(truth):,} test "
          f"texts, {len(labels)} reasons")  # fmt: skip
    rows: dict[str, tuple[dict[str, float], float]] = {}
    majority = splits.train[LABEL].astype(str).mode()[0]
    rows[f"majority ({majority})"] = (aspect_metrics(truth, [majority] * len(truth), labels), 0.0)
    started = time.perf_counter()
    tfidf = tfidf_baselines(splits, config)
    for name, model in tfidf.items():
        predicted = model.predict(splits.test[[TEXT]].astype({TEXT: object})).tolist()
        rows[name] = (aspect_metrics(truth, predicted, labels), time.perf_counter() - started)
        started = time.perf_counter()
    if trained_uri:
        started = time.perf_counter()
        trained = load_aspect_model(trained_uri)
        test_scores = trained.predict(texts)
        rows[f"trained ({trained_uri})"] = (
            aspect_metrics(truth, test_scores.aspects, labels),
            time.perf_counter() - started,
        )
        balanced = next(model for name, model in tfidf.items() if "balanced" in name)
        name, metrics, weight = averaged(trained, test_scores, balanced, splits, labels)
        rows[name] = (metrics, 0.0)
        print(
            f"  averaged: trained weight {weight:g} chosen on validation (an experiment, not a shipped model)"
        )
    started = time.perf_counter()
    taxonomy = load_aspect_config(ROOT / "configs" / "aspects_airline.yaml")
    zero_shot, _ = build_zero_shot(taxonomy)
    curve = choose_threshold(zero_shot, splits.validation, labels)
    zero_shot.threshold = best_threshold(curve, taxonomy.threshold)
    rows[f"zero-shot (threshold {zero_shot.threshold:.3f})"] = (
        aspect_metrics(truth, zero_shot.predict(texts).aspects, labels),
        time.perf_counter() - started,
    )
    print(f"  {'model':<48}{'accuracy':>10}{'macro-F1':>10}{'seconds':>9}")
    for name, (metrics, seconds) in rows.items():
        print(f"  {name:<48}{metrics['accuracy']:>10.4f}{metrics['macro_f1']:>10.4f}{seconds:>9.1f}")
    baselines = [m["macro_f1"] for name, (m, _) in rows.items() if name.startswith("TF-IDF")]
    majority_rate = next(iter(rows.values()))[0]["accuracy"]
    zero = rows[next(n for n in rows if n.startswith("zero-shot"))][0]
    print(
        f"  target: zero-shot accuracy {zero['accuracy']:.4f} vs majority {majority_rate:.4f}: "
        f"{'met' if zero['accuracy'] > majority_rate + 0.05 else 'MISSED'} (at least 5 points above)"
    )
    if trained_uri:
        trained_f1 = rows[next(n for n in rows if n.startswith("trained"))][0]["macro_f1"]
        verdict = "met" if trained_f1 >= max(baselines) + 0.03 else "MISSED"
        print(
            f"  target: trained macro-F1 {trained_f1:.4f} >= best TF-IDF {max(baselines):.4f} + 0.03: {verdict}"
        )
    else:
        print("  trained: not scored (give --trained URI, or --train)")
    text_costs(texts[:300], zero_shot)


def text_costs(texts: list[str], zero_shot) -> None:  # noqa: ANN001
    """Texts/s of sentiment scoring (yardstick), phrase attribution and zero-shot aspects, each on new texts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.phrases import PhraseFinder
    from models.sentiment import SentimentClassifier, packaged_minilm_dir

    folder = packaged_minilm_dir()  # a fresh two-class head: the cost, not the answers, is measured here
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, id2label={0: "negative", 1: "positive"}, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    classifier = SentimentClassifier(model, tokenizer, max_length=64, quantized=True)
    timings = {}
    started = time.perf_counter()
    classifier.predict_proba(texts)
    timings["sentiment (yardstick)"] = time.perf_counter() - started
    started = time.perf_counter()
    PhraseFinder(classifier.labels).find(texts, classifier.predict_proba)
    timings["phrase attribution"] = time.perf_counter() - started
    started = time.perf_counter()
    zero_shot.predict(texts)
    timings["zero-shot aspect"] = time.perf_counter() - started
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"\n  per new text ({len(texts)} tweets, {words:.1f} words on average), int8 MiniLM, 2 threads:")
    yardstick = timings["sentiment (yardstick)"]
    for name, seconds in timings.items():
        print(
            f"  {name:<26}{len(texts) / seconds:>9.1f} texts/s{seconds / yardstick:>8.1f}x the sentiment cost"
        )


if __name__ == "__main__":
    main()
