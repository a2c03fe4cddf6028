"""Sentiment training, inference, promotion and the CLI, on a tiny random BERT built in the test.

The module trains one good tiny model (fixture `trained`) and registers it under a model name of its own, so
the session store's `churnsense-sentiment` is never touched. The real MiniLM runs only in the `slow` test.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from churnsense.errors import UserError
from features.spec import load_spec
from models.sentiment import SentimentClassifier, length_sorted_batches, pad_batch
from tests.cli import run_cli
from tests.sentiment_helpers import (
    FILLERS,
    NEGATIVE_WORDS,
    NEUTRAL_WORDS,
    POSITIVE_WORDS,
    SUBJECTS,
    build_tiny_backbone,
    review_texts,
    write_reviews,
)
from training.finetune import BudgetedSchedule
from training.reviews import SentimentDataError, clean_reviews, prepare_reviews
from training.sentiment_config import SentimentConfigError, load_sentiment_config

TINY = {
    "learning_rate": 1e-2,  # learns the three classes from every backbone seed tried (0-4); 5e-3 from some
    "epochs": 10,
    "batch_size": 16,
    "max_length": 24,
    "eval_every_steps": 15,
    "patience": 4,
    "warmup_ratio": 0.1,
    "num_threads": 1,
    "seed": 3,
}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"), seed=0)


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"test-sentiment-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def review_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews"), review_texts(60, seed=1))


@pytest.fixture(scope="module")
def trained(backbone: Path, review_spec: Path, model_name: str):
    """One good tiny model, trained, logged and registered as version 1 of `model_name`."""
    from training.sentiment import train_sentiment

    return train_sentiment(review_spec, None, backbone=str(backbone), model_name=model_name, **TINY)


# --- config ------------------------------------------------------------------------------------------------


def test_config_file_spells_out_the_defaults() -> None:
    """The defaults live in `SentimentConfig`; configs/sentiment.yaml shows them and must not drift."""
    from training.sentiment_config import SentimentConfig

    repo = Path(__file__).resolve().parents[2]
    assert (
        load_sentiment_config(repo / "configs" / "sentiment.yaml")
        == SentimentConfig()
        == load_sentiment_config()
    )


def test_config_rejects_unknown_key_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("max_step: 30\nlearning_rate: 1.0e-4\n", encoding="utf-8")
    with pytest.raises(SentimentConfigError, match=r"max_step: unknown key"):
        load_sentiment_config(path)
    with pytest.raises(SentimentConfigError, match="learning_rate"):
        load_sentiment_config(None, learning_rate=-1)
    config = load_sentiment_config(None, max_steps=40)
    assert config.max_steps == 40 and config.backbone == "all-MiniLM-L6-v2"
    with pytest.raises(Exception, match="frozen"):
        config.max_steps = 3  # type: ignore[misc]


# --- cleaning and splitting --------------------------------------------------------------------------------


def test_clean_reviews_normalises_deduplicates_and_drops_conflicts() -> None:
    frame = pd.DataFrame(
        {
            "text": [
                "  great   flight\n",  # 0: same text as 1 after whitespace normalisation, same label
                "great flight",  # 1
                "",  # 2: empty
                None,  # 3: missing
                "bag lost",  # 4: id 7, id duplicated with conflicting labels (both dropped)
                "bag lost again",  # 5: id 7
                "Delayed AGAIN",  # 6: casefold-duplicate of 7 with another label (both dropped)
                "delayed again",  # 7
                "ok thanks",  # 8: id 9 twice, same label: one kept
                "ok thanks!",  # 9: id 9
            ],
            "label": [
                "positive",
                "positive",
                "neutral",
                "neutral",
                "negative",
                "neutral",
                "negative",
                "neutral",
                "neutral",
                "neutral",
            ],
            "review_id": ["1", "2", "3", "4", "7", "7", "5", "6", "9", "9"],
        }
    ).astype({"text": "string", "label": "string", "review_id": "string"})
    clean, report = clean_reviews(frame)
    assert sorted(clean["text"]) == ["great flight", "ok thanks"]
    assert report.rows_in == 10 and report.rows_out == 2
    assert report.empty_texts == 2
    assert (report.id_duplicates, report.id_conflicts) == (1, 2)
    assert (report.text_duplicates, report.text_conflicts) == (1, 2)


def test_splits_are_stratified_and_share_no_text(tmp_path: Path) -> None:
    base = review_texts(40, seed=2)
    noisy = base.copy()
    noisy["text"] = noisy["text"].str.upper() + "  "  # the same reviews again, shouted: must not leak
    spec = load_spec(write_reviews(tmp_path, pd.concat([base, noisy], ignore_index=True)))
    _, report, labels, splits = prepare_reviews(spec, load_sentiment_config(None))
    assert report.text_duplicates == len(base)
    assert labels == ["negative", "neutral", "positive"]
    parts = [set(part["text"].str.casefold()) for part in (splits.train, splits.validation, splits.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    for part in (splits.validation, splits.test):
        assert set(part["label"]) == set(labels)
    assert sum(splits.sizes().values()) == len(base)


def test_star_ratings_become_three_classes(tmp_path: Path) -> None:
    frame = review_texts(20, seed=4)
    stars = {"positive": 5, "negative": 1, "neutral": 3}
    frame = frame.assign(stars=frame["label"].map(stars)).drop(columns="label")
    spec_path = write_reviews(tmp_path, frame)
    raw = yaml.safe_load(spec_path.read_text())
    raw["reviews"].pop("label")
    raw["reviews"]["rating"] = "stars"
    spec_path.write_text(yaml.safe_dump(raw))
    clean, _, labels, _ = prepare_reviews(load_spec(spec_path), load_sentiment_config(None))
    assert labels == ["negative", "neutral", "positive"]
    assert (clean.loc[clean["text"].str.contains("|".join(POSITIVE_WORDS)), "label"] == "positive").all()


# --- user errors -------------------------------------------------------------------------------------------


def test_one_class_is_a_one_line_cli_error(tmp_path: Path, capsys, monkeypatch) -> None:
    frame = review_texts(10).assign(label="negative")
    spec = write_reviews(tmp_path, frame)
    code, _, err = run_cli(["train", "sentiment", "--spec", str(spec)], capsys, monkeypatch)
    assert code == 2
    assert err.startswith("error: reviews.label ('label'): only one class ('negative')")
    assert len(err.strip().splitlines()) == 1


def test_unknown_labels_are_named(tmp_path: Path) -> None:
    frame = review_texts(10)
    frame.loc[frame.index[:3], "label"] = "angry"
    spec = load_spec(write_reviews(tmp_path, frame, classes=["negative", "neutral", "positive"]))
    with pytest.raises(SentimentDataError, match=r"unknown label\(s\) 'angry'"):
        prepare_reviews(spec, load_sentiment_config(None))
    spec = load_spec(write_reviews(tmp_path, review_texts(10)))
    with pytest.raises(SentimentDataError, match=r"unknown label\(s\) 'neutral'"):
        prepare_reviews(spec, load_sentiment_config(None, classes=["negative", "positive"]))


def test_missing_text_column_is_named(tmp_path: Path) -> None:
    spec = load_spec(write_reviews(tmp_path, review_texts(5).rename(columns={"text": "body"})))
    with pytest.raises(UserError, match=r"reviews.text: column 'text' not found .*has: body, label"):
        prepare_reviews(spec, load_sentiment_config(None))


def test_too_few_rows_per_class_is_named(tmp_path: Path) -> None:
    frame = pd.concat(
        [review_texts(10), pd.DataFrame({"text": ["meh", "so so"], "label": ["mixed", "mixed"]})]
    )
    spec = load_spec(write_reviews(tmp_path, frame))
    with pytest.raises(SentimentDataError, match=r"'mixed' \(2 rows\)"):
        prepare_reviews(spec, load_sentiment_config(None))


# --- batching and the schedule -----------------------------------------------------------------------------


def test_pad_batch_pads_to_longest_and_masks() -> None:
    batch = pad_batch(
        [
            {"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1]},
            {"input_ids": [2, 3], "attention_mask": [1, 1]},
        ],
        pad_token_id=0,
    )
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    batches = list(length_sorted_batches([3, 9, 1, 5, 7], 2))
    assert [b.tolist() for b in batches] == [[1, 4], [3, 0], [2]]


def test_time_budget_shrinks_the_schedule_to_end_at_the_deadline() -> None:
    schedule = BudgetedSchedule(planned=1000, warmup_ratio=0.1, deadline=100.0)
    for step in range(1, 41):
        schedule.observe(step, now=float(step))  # 1 s per step, 60 s left at step 40
    assert schedule.total == 100
    assert schedule.factor(99) == pytest.approx(1 / 90)
    assert schedule.factor(100) == 0.0
    unlimited = BudgetedSchedule(planned=50, warmup_ratio=0.1)
    for step in range(1, 41):
        unlimited.observe(step, now=float(step))
    assert unlimited.total == 50 and unlimited.factor(0) == pytest.approx(0.2)


# --- the trained tiny model --------------------------------------------------------------------------------


def test_training_run_is_logged_and_registered(trained, model_name: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    metrics = trained.metrics
    assert trained.version == "1" and trained.model_name == model_name
    assert metrics["test_accuracy"] >= 0.8, metrics  # chance is 0.33
    for key in (
        "val_macro_f1",
        "test_log_loss",
        "test_f1_neutral",
        "baseline_test_accuracy",
        "baseline_val_macro_f1",
    ):
        assert key in metrics
    assert {"int8_accuracy", "int8_accuracy_delta", "int8_throughput_ratio"} <= metrics.keys()
    assert metrics["int8_accuracy_delta"] == pytest.approx(
        metrics["int8_accuracy"] - metrics["test_accuracy"]
    )
    run = MlflowClient().get_run(trained.run_id)
    assert run.data.params["learning_rate"] == str(TINY["learning_rate"])
    assert run.data.params["data_rows"] == "180" and "data_sha256" in run.data.params
    assert run.data.tags["code_version"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(trained.run_id)}
    assert {"validation", "plots", "config", "training", "reference"} <= artifacts
    # The reference later texts are compared with: lengths and predicted label mix of the test texts, the
    # training texts' vocabulary and the share of test words it lacks.
    reference = mlflow.artifacts.load_dict(f"runs:/{trained.run_id}/reference/profile.json")
    profiles = {p["name"]: p for p in reference["texts"]}
    assert set(profiles) == {"text_length", "predicted_label"}
    assert sum(profiles["predicted_label"]["shares"]) == pytest.approx(1.0)
    assert reference["vocabulary"] and 0 <= reference["unseen_share"] < 1
    plots = {a.path for a in MlflowClient().list_artifacts(trained.run_id, "plots")}
    assert "plots/confusion_test.png" in plots and "plots/confusion_baseline_test.png" in plots
    logged = {
        m.name
        for m in mlflow.search_logged_models(
            filter_string=f"source_run_id = '{trained.run_id}'", output_format="list"
        )
    }
    assert logged == {"model", "baseline"}


def test_logged_model_carries_its_contract(trained) -> None:
    import mlflow

    folder = Path(mlflow.artifacts.download_artifacts(trained.model_uri))
    requirements = (folder / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in requirements)
    assert any(r.startswith("transformers==") for r in requirements)
    assert not any(r.startswith("scikit-learn") for r in requirements)  # explicit list, not inferred
    info = mlflow.models.get_model_info(trained.model_uri)
    assert info.metadata["labels"] == ["negative", "neutral", "positive"]
    assert info.signature is not None and info.signature.inputs.input_names() == ["text"]
    hf_config = json.loads(next(folder.rglob("config.json")).read_text())
    assert hf_config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_predictions_do_not_depend_on_order_or_batch_size(trained, int8: bool) -> None:
    texts = review_texts(15, seed=8)["text"].tolist() + [
        "ok",
        "the gate was great and the crew was rude today",
    ]
    classifier = trained.classifier.to_int8() if int8 else trained.classifier
    reference = classifier.predict_proba(texts)
    order = np.random.default_rng(0).permutation(len(texts))
    # Bit for bit: a text's probabilities are a function of the text and the model alone.
    np.testing.assert_array_equal(classifier.predict_proba([texts[i] for i in order]), reference[order])
    for batch_size in (1, 3, 64):
        other = SentimentClassifier(
            classifier.model, classifier.tokenizer, max_length=classifier.max_length, batch_size=batch_size,
            quantized=int8,
        )  # fmt: skip
        np.testing.assert_array_equal(other.predict_proba(texts), reference)
    alone = np.vstack([classifier.predict_proba([text]) for text in texts])
    np.testing.assert_array_equal(alone, reference)
    assert np.allclose(reference.sum(axis=1), 1.0, atol=1e-5)


def test_sentiment_score_is_polarity_and_directional(trained) -> None:
    classifier = trained.classifier
    positive = [f"the flight was {w} today" for w in POSITIVE_WORDS]
    negative = [f"the flight was {w} today" for w in NEGATIVE_WORDS]
    scores = classifier.sentiment_scores(positive + negative)
    assert ((scores >= -1) & (scores <= 1)).all()
    proba = classifier.predict_proba(positive)
    np.testing.assert_allclose(
        scores[: len(positive)],
        proba[:, classifier.labels.index("positive")] - proba[:, classifier.labels.index("negative")],
        atol=0,  # the same texts give the same probabilities in any batch
    )
    assert scores[: len(positive)].mean() > 0.3 > -0.3 > scores[len(positive) :].mean()
    assert np.allclose(classifier(positive), scores[: len(positive)])  # usable as a SentimentScorer
    first = classifier.predict(["the crew was friendly"])[0]
    assert first.label == "positive" and first.score == max(first.probabilities.values())


def _phrase_texts() -> list[str]:
    """Fixed texts of 10-12 words (two clauses like the training texts'), each with one sentiment word and one
    neutral word."""
    import random

    rng = random.Random(12)
    out = []
    for i in range(24):
        word = rng.choice(NEGATIVE_WORDS if i % 3 else POSITIVE_WORDS)
        subject, other = rng.sample(SUBJECTS, 2)
        first, second = rng.sample(FILLERS, 2)
        neutral = rng.choice(NEUTRAL_WORDS)
        clauses = [f"the {subject} was {word} {first}", f"the {other} was {neutral} {second}"]
        out.append(" ".join(clauses if i % 2 else clauses[::-1]))
    return out


def test_phrase_is_the_span_whose_deletion_moves_the_negative_probability_most(trained) -> None:
    """Faithfulness: deleting the returned phrase moves P(negative) at least as much as deleting any other run of
    as many words, in >= 80% of a fixed set of texts. Every deletion is re-scored here on its own (batch of one)
    with a deletion written independently of `models.phrases`."""
    from models.phrases import PhraseFinder

    classifier = trained.classifier
    negative = classifier.labels.index("negative")
    texts = _phrase_texts()
    phrases = PhraseFinder(classifier.labels).find(texts, classifier.predict_proba)
    faithful = 0
    for text, phrase in zip(texts, phrases, strict=True):
        assert text[phrase["start"] : phrase["end"]] == phrase["phrase"], text
        tokens = text.split(" ")
        whole = classifier.predict_proba([text])[0, negative]
        moves = {}
        for i in range(len(tokens) - 2):
            deleted = " ".join(tokens[:i] + tokens[i + 3 :])
            moves[" ".join(tokens[i : i + 3])] = abs(classifier.predict_proba([deleted])[0, negative] - whole)
        assert abs(phrase["effect"]) == pytest.approx(moves[phrase["phrase"]], abs=1e-6)
        faithful += all(moves[phrase["phrase"]] >= m for m in moves.values())
    assert faithful >= 0.8 * len(texts), f"{faithful}/{len(texts)} faithful"


def test_phrases_do_not_depend_on_the_call_or_the_cache(trained) -> None:
    from models.phrases import PhraseFinder

    classifier = trained.classifier
    texts = _phrase_texts()[:8]
    together = PhraseFinder(classifier.labels).find([*texts, None, "  ", texts[0]], classifier.predict_proba)
    assert together[8] is None and together[9] is None and together[10] == together[0]
    small_cache = PhraseFinder(classifier.labels, cache_size=2)
    alone = [small_cache.find([t], classifier.predict_proba)[0] for t in texts]
    assert alone == together[:8]
    assert small_cache.find(texts[-2:]) == together[6:8]  # cached: no model needed
    with pytest.raises(ValueError, match="not cached"):
        small_cache.find(texts[:1])
    with pytest.raises(ValueError, match="'negative' label"):
        PhraseFinder(["good", "bad"])


def test_int8_variant_agrees_with_fp32(trained) -> None:
    classifier = trained.classifier
    texts = review_texts(20, seed=11)["text"].tolist()
    int8 = classifier.to_int8()
    assert int8.quantized and not classifier.quantized
    fp32_labels = classifier.predict_proba(texts).argmax(axis=1)
    int8_labels = int8.predict_proba(texts).argmax(axis=1)
    assert (fp32_labels == int8_labels).mean() >= 0.9
    from models.text_encoder import BatchInvariantBert, Int8TokenLinear

    assert isinstance(int8.forward, BatchInvariantBert) and isinstance(
        int8.forward.classifier, Int8TokenLinear
    )
    assert not np.array_equal(int8.predict_proba(texts), classifier.predict_proba(texts))  # really int8


def test_registered_model_reloads_with_the_same_predictions(trained) -> None:
    import mlflow

    texts = review_texts(10, seed=12)["text"].tolist()
    expected = trained.classifier.predict_proba(texts)
    fp32 = SentimentClassifier.load(trained.model_uri, quantize=False)
    np.testing.assert_array_equal(fp32.predict_proba(texts), expected)
    default = SentimentClassifier.load(trained.model_uri)  # logged quantize=true -> int8
    assert default.quantized
    np.testing.assert_array_equal(
        default.predict_proba(texts), trained.classifier.to_int8().predict_proba(texts)
    )
    assert default.digest == fp32.digest == trained.classifier.digest  # the artifact's identity, logged
    served = mlflow.pyfunc.load_model(trained.model_uri).predict(pd.DataFrame({"text": texts}))
    assert list(served["label"]) == [default.labels[i] for i in default.predict_proba(texts).argmax(axis=1)]
    assert {"score", "sentiment", "prob_negative", "prob_neutral", "prob_positive"} <= set(served.columns)


# --- promotion and the CLI ---------------------------------------------------------------------------------


def test_promote_refuses_a_worse_version_and_force_overrides(
    trained, backbone: Path, review_spec: Path, model_name: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    from mlflow import MlflowClient

    code, out, _ = run_cli(["promote", "sentiment", "--name", model_name], capsys, monkeypatch)
    assert code == 0 and "first model becomes champion" in out

    worse = tmp_path / "worse.yaml"
    worse.write_text(
        yaml.safe_dump(
            {
                "backbone": str(backbone),
                "model_name": model_name,
                "max_steps": 1,
                "learning_rate": 1e-6,
                "baseline": False,
                "num_threads": 1,
            }
        )
    )
    summary = tmp_path / "summary.json"
    code, out, _ = run_cli(
        ["train", "sentiment", "--spec", str(review_spec), "--config", str(worse), "--summary", str(summary)],
        capsys,
        monkeypatch,
    )
    assert code == 0, out
    written = json.loads(summary.read_text())
    assert written["version"] == "2" and written["run_id"] and "test_macro_f1" in written["metrics"]
    assert written["training"]["steps"] == 1 and written["training"]["stopped_by"] == "max_steps"
    assert "baseline_test_accuracy" not in written["metrics"]

    code, out, _ = run_cli(["promote", "sentiment", "--name", model_name], capsys, monkeypatch)
    assert code == 1, out
    assert "REFUSED" in out and "macro_f1" in out
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == "1"

    code, out, _ = run_cli(["promote", "sentiment", "--name", model_name, "--force"], capsys, monkeypatch)
    assert code == 0 and "PROMOTED (forced)" in out
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == "2"
    tags = client.get_model_version(model_name, "2").tags
    assert tags["promotion.forced"] == "true" and json.loads(tags["promotion"])["forced"] is True


def test_predict_sentiment_cli_writes_the_file_and_rejects_a_missing_column(
    trained, tmp_path: Path, capsys, monkeypatch
) -> None:
    source = tmp_path / "texts.csv"
    pd.DataFrame(
        {"id": [1, 2, 3], "body": ["the crew was great today", None, "the meal was awful again"]}
    ).to_csv(source, index=False)
    out = tmp_path / "scored.parquet"
    args = [
        "predict-sentiment",
        "--input",
        str(source),
        "--text-column",
        "body",
        "--model",
        trained.model_uri,
    ]
    code, stdout, _ = run_cli([*args, "--out", str(out), "--batch-size", "2", "--fp32"], capsys, monkeypatch)
    assert code == 0, stdout
    scored = pd.read_parquet(out)
    assert list(scored["id"]) == [1, 2, 3]
    assert scored.loc[0, "sentiment_label"] == "positive" and scored.loc[2, "sentiment_label"] == "negative"
    assert pd.isna(scored.loc[1, "sentiment_label"]) and np.isnan(scored.loc[1, "sentiment"])
    assert scored.loc[0, "sentiment"] > 0 > scored.loc[2, "sentiment"]
    assert not list(tmp_path.glob(".scored.parquet.*"))  # no temporary file left behind
    fp32 = SentimentClassifier.load(trained.model_uri, quantize=False)
    assert (scored["sentiment_scoring_id"] == fp32.scoring_id).all()  # the model that made the scores
    np.testing.assert_array_equal(
        scored.loc[[0, 2], "sentiment"], fp32.sentiment_scores([scored.loc[0, "body"], scored.loc[2, "body"]])
    )

    csv_out = tmp_path / "scored.csv"
    code, _, _ = run_cli([*args, "--out", str(csv_out)], capsys, monkeypatch)
    assert code == 0 and len(pd.read_csv(csv_out)) == 3

    code, _, err = run_cli(
        [
            "predict-sentiment",
            "--input",
            str(source),
            "--text-column",
            "review",
            "--out",
            str(tmp_path / "x.parquet"),
            "--model",
            trained.model_uri,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "column 'review' not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()


# --- real data and the real MiniLM -------------------------------------------------------------------------


@pytest.mark.shared_data
def test_airline_tweets_cleaning_matches_the_known_duplicates() -> None:
    from tests.shared_data import shared_file

    shared_file("airline_tweets", "Tweets.csv")
    spec = load_spec(Path(__file__).resolve().parents[2] / "configs" / "airline_tweets.spec.yaml")
    _, report, labels, splits = prepare_reviews(spec, load_sentiment_config(None))
    # 155 duplicated tweet ids, 18 of them with conflicting labels (data README).
    assert report.id_conflicts == 36 and report.id_duplicates == 155 - 18
    assert labels == ["negative", "neutral", "positive"]
    assert not set(splits.train["text"]) & set(splits.test["text"])


@pytest.mark.slow
def test_minilm_fine_tunes_registers_and_reloads_by_alias(tmp_path: Path, capsys, monkeypatch) -> None:
    import mlflow

    from training.sentiment import train_sentiment

    name = f"test-minilm-{uuid.uuid4().hex[:8]}"
    spec = write_reviews(tmp_path, review_texts(16, seed=5))
    result = train_sentiment(
        spec,
        None,
        model_name=name,
        max_steps=6,
        batch_size=8,
        max_length=24,
        learning_rate=1e-4,
        baseline=False,
        num_threads=2,
    )
    assert result.version == "1" and result.training["steps"] == 6
    code, out, _ = run_cli(["promote", "sentiment", "--name", name], capsys, monkeypatch)
    assert code == 0, out
    texts = ["the crew was wonderful", "my bag was lost and the staff were rude", "which gate is it"]
    alias = f"models:/{name}@champion"
    reloaded = SentimentClassifier.load(alias, quantize=False)
    assert reloaded.labels == result.labels and reloaded.max_length == 24
    np.testing.assert_allclose(
        reloaded.predict_proba(texts), result.classifier.predict_proba(texts), atol=1e-5
    )
    served = mlflow.pyfunc.load_model(alias, model_config={"quantize": False}).predict(
        pd.DataFrame({"text": texts})
    )
    np.testing.assert_allclose(
        served[[f"prob_{label}" for label in result.labels]].to_numpy(),
        result.classifier.predict_proba(texts),
        atol=1e-5,
    )
