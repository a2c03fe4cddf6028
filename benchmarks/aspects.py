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
  `--train` runs that first, about 20 minutes on 2 cores, into a store under bench_out/): its fine-tuned
  encoder alone, and the model as it answers (the encoder averaged with its balanced TF-IDF half; a model
  trained before those shipped is averaged here the way the trainer now does it);
- zero-shot: `configs/aspects_airline.yaml` ("Can't Tell" as the none label), threshold chosen on validation.

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
    """name -> (fitted pipeline, seconds to fit): the logged baseline, and the balanced one with C chosen by CV
    on train (the TF-IDF half a fine-tuned aspect model ships with, `training.aspect_averaging.fit_tfidf_half`)."""
    from training.aspect_averaging import fit_tfidf_half
    from training.finetune import fit_baseline

    started = time.perf_counter()
    logged = fit_baseline(splits.train, config)
    logged_s = time.perf_counter() - started
    balanced, c = fit_tfidf_half(splits.train, config, jobs=2)
    return {
        f"TF-IDF + LR (logged baseline, C={config.baseline_c:g})": (logged, logged_s),
        f"TF-IDF + LR (balanced, C={c:g} by 3-fold CV)": (balanced, time.perf_counter() - started - logged_s),
    }


def averaged(trained, balanced, splits):  # noqa: ANN001, ANN201
    """A trained model without a TF-IDF half (trained before they shipped) averaged with the balanced TF-IDF
    model as the trainer now does it, the weight chosen on validation: the model it would ship."""
    import numpy as np

    from features.columns import TEXT
    from models.aspects import TrainedAspects
    from training.aspect_averaging import choose_weight
    from training.reviews import LABEL

    half = TrainedAspects(trained.classifier, balanced, 0.5)
    texts = splits.validation[TEXT].tolist()
    weight, _ = choose_weight(
        trained.classifier.predict_proba(texts).astype(np.float64),
        half.tfidf_proba(texts),
        splits.validation[LABEL].astype(str).tolist(),
        half.names,
    )
    return TrainedAspects(trained.classifier, balanced, weight)


def paired_bootstrap(truth, mine, theirs, labels, resamples: int = 2000):  # noqa: ANN001, ANN201
    """The 2.5% and 97.5% quantiles of macro-F1(mine) - macro-F1(theirs) over test texts drawn with replacement
    (the same draw for both; seeded): how much of a difference one split's luck could make."""
    import numpy as np

    from training.aspects import aspect_metrics

    rng = np.random.default_rng(0)
    truth, mine, theirs = (np.asarray(x, dtype=object) for x in (truth, mine, theirs))
    gaps = []
    for _ in range(resamples):
        pick = rng.integers(0, len(truth), len(truth))
        gaps.append(
            aspect_metrics(list(truth[pick]), list(mine[pick]), labels)["macro_f1"]
            - aspect_metrics(list(truth[pick]), list(theirs[pick]), labels)["macro_f1"]
        )
    return float(np.quantile(gaps, 0.025)), float(np.quantile(gaps, 0.975))


def check_trained_on(uri: str, config) -> None:  # noqa: ANN001
    """Exit unless the model's run split as this benchmark does (seed, validation and test fractions, the same
    texts): on another split, its test texts were its training texts."""
    from mlflow import MlflowClient

    from models.catalog import registry_name_version, resolve_model_uri

    pinned = registry_name_version(resolve_model_uri(uri)[0])
    if pinned is not None:
        run_id = MlflowClient().get_model_version(*pinned).run_id
    elif uri.startswith("runs:/"):
        run_id = uri.split("/")[1]
    else:
        sys.exit(
            f"error: {uri}: give a registered model or a runs:/ URI, so its training split can be checked"
        )
    logged = MlflowClient().get_run(run_id).data.params
    for key in ("seed", "val_fraction", "test_fraction", "max_train_examples"):
        mine = str(getattr(config, key))
        if logged.get(key) != mine:
            sys.exit(
                f"error: {uri} was trained with {key}={logged.get(key)}, this benchmark splits with {mine}"
            )


def train_aspect_model(store: Path, seed: int | None) -> str:
    """Fine-tune into a store of its own under bench_out; returns the model URI."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["CHURNSENSE_ARTIFACT_ROOT"] = str(store / "mlruns")
    from training.aspects import train_fine_tuned

    recipe = ROOT / "configs" / "aspects_airline_trained.yaml"
    result = train_fine_tuned(SPEC, recipe, baseline=False, **({"seed": seed} if seed is not None else {}))
    return result.model_uri


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trained", help="URI of a fine-tuned aspect model to score (in --tracking-uri's store)"
    )
    parser.add_argument("--train", action="store_true", help="fine-tune one first (about 20 min on 2 cores)")
    parser.add_argument(
        "--tracking-uri", help="the MLflow store --trained is in (default: MLFLOW_TRACKING_URI)"
    )
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "bench_out")
    parser.add_argument(
        "--seed",
        type=int,
        help="the split's seed (default: the sentiment config's); a --trained model must be trained with it",
    )
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
        trained_uri = train_aspect_model(args.bench_dir / "aspects_store", args.seed)

    import torch

    from features.columns import TEXT
    from features.spec import load_spec
    from models.aspects import TrainedAspects, load_aspect_model
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
    config = load_sentiment_config(None, **({"seed": args.seed} if args.seed is not None else {}))
    _, _, labels, splits = prepare_reviews(load_spec(SPEC), config)
    truth = splits.test[LABEL].astype(str).tolist()
    texts = splits.test[TEXT].tolist()
    print(f"airline reasons (seed {config.seed}): {len(splits.train):,} train / {len(splits.validation):,} validation / {len(truth):,} test "
          f"texts, {len(labels)} reasons")  # fmt: skip
    rows: dict[str, tuple[dict[str, float], float]] = {}
    majority = splits.train[LABEL].astype(str).mode()[0]
    answers: dict[str, list[str]] = {}  # each TF-IDF model's and the trained model's test answers
    rows[f"majority ({majority})"] = (aspect_metrics(truth, [majority] * len(truth), labels), 0.0)
    tfidf = {}
    for name, (model, seconds) in tfidf_baselines(splits, config).items():
        tfidf[name] = model
        frame = TrainedAspects.tfidf_frame(texts) if "balanced" in name else splits.test[[TEXT]]
        answers[name] = model.predict(frame.astype({TEXT: object})).tolist()
        rows[name] = (aspect_metrics(truth, answers[name], labels), seconds)
    if trained_uri:
        check_trained_on(trained_uri, config)
        started = time.perf_counter()
        trained = load_aspect_model(trained_uri)
        alone = TrainedAspects(trained.classifier)
        rows["fine-tuned encoder alone"] = (
            aspect_metrics(truth, alone.predict(texts).aspects, labels),
            time.perf_counter() - started,
        )
        if trained.tfidf is None:
            balanced = next(model for name, model in tfidf.items() if "balanced" in name)
            trained = averaged(trained, balanced, splits)
            what = "averaged here as the trainer does"
        else:
            what = "as registered"
        started = time.perf_counter()
        answers["trained"] = trained.predict(texts).aspects
        rows[f"trained: encoder x {trained.weight:g} + TF-IDF ({what})"] = (
            aspect_metrics(truth, answers["trained"], labels),
            time.perf_counter() - started,
        )
        print(f"  trained: {trained_uri}, encoder weight {trained.weight:g} ({what}, chosen on validation)")
    started = time.perf_counter()
    taxonomy = load_aspect_config(ROOT / "configs" / "aspects_airline.yaml")
    zero_shot, _ = build_zero_shot(taxonomy)
    curve = choose_threshold(zero_shot, splits.validation, labels)
    zero_shot.threshold = best_threshold(curve, taxonomy.threshold)
    rows[f"zero-shot (threshold {zero_shot.threshold:.3f})"] = (
        aspect_metrics(truth, zero_shot.predict(texts).aspects, labels),
        time.perf_counter() - started,
    )
    print(
        f"  {'model':<62}{'accuracy':>10}{'macro-F1':>10}{'seconds':>9}  (seconds: to fit, or to score the test)"
    )
    for name, (metrics, seconds) in rows.items():
        print(f"  {name:<62}{metrics['accuracy']:>10.4f}{metrics['macro_f1']:>10.4f}{seconds:>9.1f}")
    baselines = [m["macro_f1"] for name, (m, _) in rows.items() if name.startswith("TF-IDF")]
    majority_rate = next(iter(rows.values()))[0]["accuracy"]
    zero = rows[next(n for n in rows if n.startswith("zero-shot"))][0]
    print(
        f"  target: zero-shot accuracy {zero['accuracy']:.4f} vs majority {majority_rate:.4f}: "
        f"{'met' if zero['accuracy'] > majority_rate + 0.05 else 'MISSED'} (at least 5 points above)"
    )
    if trained_uri:
        trained_f1 = rows[next(n for n in rows if n.startswith("trained:"))][0]["macro_f1"]
        verdict = "met" if trained_f1 >= max(baselines) + 0.03 else "MISSED"
        print(
            f"  target: trained macro-F1 {trained_f1:.4f} >= best TF-IDF {max(baselines):.4f} + 0.03: {verdict}"
        )
        best = max((n for n in answers if n.startswith("TF-IDF")), key=lambda n: rows[n][0]["macro_f1"])
        low, high = paired_bootstrap(truth, answers["trained"], answers[best], labels)
        print(
            f"  trained - best TF-IDF, paired bootstrap of the test texts: 95% interval {low:+.4f} .. {high:+.4f}"
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
