"""Aspect models: zero-shot with the packaged sentence encoder, fine-tuned, logged, registered, reloaded, used by
`predict-sentiment`. Quality on the airline reasons is `benchmarks/aspects.py`'s job; here the real MiniLM names
the simulator's own issue references, and the rest runs on a tiny random encoder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from churnsense.errors import UserError
from tests.sentiment_helpers import build_tiny_backbone, review_texts, write_reviews


def _taxonomy(folder: Path, backbone: str | None = None, **keys) -> Path:
    """A taxonomy over the review helpers' three "aspects" (their sentiment classes stand in for reasons)."""
    config = {
        "aspects": [
            {
                "name": "positive",
                "description": "great love excellent wonderful amazing perfect friendly fast",
            },
            {"name": "negative", "description": "terrible awful hate broken rude worst slow lost"},
        ],
        "none_label": "neutral",
        "model_name": f"test-aspects-{uuid.uuid4().hex[:8]}",
        **({"backbone": backbone} if backbone else {}),
        **keys,
    }
    path = folder / "aspects.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_encoder"), seed=0)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reasons"), review_texts(40, seed=4))


def test_zero_shot_minilm_names_what_simulated_texts_are_about() -> None:
    """The default taxonomy and the real encoder on the simulator's issue references (not its descriptions),
    and small talk that is about none of them."""
    from features import simulate
    from training.aspects import build_zero_shot, load_aspect_config

    model, _ = build_zero_shot(load_aspect_config())
    texts, truth = [], []
    for category, references in zip(simulate.CATEGORIES, simulate.ISSUE_REFERENCES, strict=True):
        texts += list(references)
        truth += [category] * len(references)
    texts += ["what a lovely day", "see you next week", "ok"]
    truth += ["none"] * 3
    predicted = model.predict(texts)
    right = sum(p == t for p, t in zip(predicted.aspects, truth, strict=True))
    assert right >= 0.8 * len(texts), list(zip(texts, predicted.aspects, strict=True))
    assert predicted.scores.shape == (len(texts), 6) and np.all(np.abs(predicted.scores) <= 1 + 1e-9)
    assert predicted.to_dicts()[0]["scores"].keys() == set(simulate.CATEGORIES)


@pytest.mark.parametrize("quantize", [True, False])
def test_aspects_do_not_depend_on_batch_neighbours(
    tiny_encoder: Path, tmp_path: Path, quantize: bool
) -> None:
    from training.aspects import build_zero_shot, load_aspect_config

    model, _ = build_zero_shot(load_aspect_config(_taxonomy(tmp_path, str(tiny_encoder), quantize=quantize)))
    texts = review_texts(6, seed=9)["text"].tolist() + ["THE WORST " * 20]
    together = model.predict(texts)
    alone = [model.predict([t]) for t in texts]
    assert np.array_equal(together.scores, np.concatenate([a.scores for a in alone]))
    assert together.aspects == [a.aspects[0] for a in alone]
    reversed_ = model.predict(texts[::-1])
    assert np.array_equal(reversed_.scores[::-1], together.scores)


def test_zero_shot_run_is_evaluated_logged_registered_and_reloads(
    tiny_encoder: Path, labelled: Path, tmp_path: Path
) -> None:
    import mlflow

    from features.spec import load_spec
    from models.aspects import ZeroShotAspects, load_aspect_model
    from training.aspects import THRESHOLDS, load_aspect_config, train_zero_shot

    config = load_aspect_config(_taxonomy(tmp_path, str(tiny_encoder)))
    result = train_zero_shot(config, load_spec(labelled))
    assert result.version == "1" and result.model_uri == f"models:/{config.model_name}/1"
    assert result.threshold in THRESHOLDS
    for key in ("test_accuracy", "test_macro_f1", "validation_macro_f1", "test_majority_accuracy"):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["churnsense.model"] == "aspects" and run.data.tags["aspects.kind"] == "zero-shot"
    assert float(run.data.params["chosen_threshold"]) == result.threshold
    assert run.data.metrics["test_macro_f1"] == pytest.approx(result.metrics["test_macro_f1"])
    reloaded = load_aspect_model(result.model_uri)
    assert isinstance(reloaded, ZeroShotAspects) and reloaded.threshold == result.threshold
    texts = ["the crew was rude today", "the seat was great again", "which gate"]
    first = reloaded.predict(texts)
    served = mlflow.pyfunc.load_model(result.model_uri).predict(pd.DataFrame({"text": texts}))
    assert served["aspect"].tolist() == first.aspects
    np.testing.assert_array_equal(served["aspect_score"].to_numpy(), first.best)


def test_config_and_label_errors_name_the_problem(tiny_encoder: Path, labelled: Path, tmp_path: Path) -> None:
    from features.spec import load_spec
    from training.aspects import AspectConfigError, load_aspect_config, train_zero_shot

    bad = tmp_path / "bad.yaml"
    bad.write_text("aspects: [{name: billing, description: bills}]\nthreshhold: 0.3\n", encoding="utf-8")
    with pytest.raises(AspectConfigError, match="threshhold: unknown key"):
        load_aspect_config(bad)
    bad.write_text("aspects: [{name: none, description: x}]\n", encoding="utf-8")
    with pytest.raises(AspectConfigError, match="none_label 'none' is also an aspect name"):
        load_aspect_config(bad)
    bad.write_text("aspects: [{name: a, description: x}, {name: a, description: y}]\n", encoding="utf-8")
    with pytest.raises(AspectConfigError, match=r"aspect names repeat: \['a'\]"):
        load_aspect_config(bad)
    only_positive = load_aspect_config(_taxonomy(tmp_path, str(tiny_encoder), none_label="nothing"))
    with pytest.raises(AspectConfigError, match=r"labelled reasons \['negative', 'neutral'\]|\['neutral'\]"):
        train_zero_shot(only_positive, load_spec(labelled))


def test_fine_tuned_aspects_are_averaged_with_tfidf_registered_and_load(
    tiny_encoder: Path, labelled: Path, tmp_path: Path
) -> None:
    """The registered model is the average the trainer chose on validation, answers the same through MLflow's
    pyfunc and alone or batched, and its digest covers its TF-IDF half."""
    import mlflow
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    from models.aspects import AVERAGE_FILE, TFIDF_FILE, AspectModelError, TrainedAspects, load_aspect_model
    from models.lineage import AspectLineage, LineageError, check_lineage
    from models.sentiment import download_model
    from training.aspect_averaging import WEIGHTS, choose_weight, fit_tfidf_half, package_aspects
    from training.aspects import evaluate_for_promotion, train_fine_tuned
    from training.sentiment import PACKAGE_TAG, check_resumed_package, load_validation_split, package_name
    from training.sentiment_config import load_sentiment_config
    from training.text_logging import package_sentiment

    name = f"test-aspects-{uuid.uuid4().hex[:8]}"
    result = train_fine_tuned(
        labelled, None, backbone=str(tiny_encoder), max_steps=4, batch_size=16, max_length=24,
        model_name=name, baseline=False, num_threads=1,
    )  # fmt: skip
    assert result.version == "1" and result.kind == "trained"
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["churnsense.model"] == "aspects" and run.data.tags["aspects.kind"] == "trained"
    for key in (
        "shipped_test_macro_f1",
        "shipped_val_macro_f1",
        "tfidf_half_test_macro_f1",
        "average_weight",
    ):
        assert run.data.metrics[key] == pytest.approx(result.metrics[key]), key
    assert "encoder weight" in result.headline()
    assert run.data.tags[PACKAGE_TAG] == package_name(package_aspects)
    with pytest.raises(UserError, match="started by `churnsense train aspects --fine-tune`"):
        check_resumed_package(result.run_id, package_sentiment)  # it would register no TF-IDF half
    check_resumed_package(result.run_id, package_aspects)
    # Versions are compared on the run's test split, not on the validation split that chose the weight.
    version = mlflow.MlflowClient().get_model_version(name, "1")
    judged = evaluate_for_promotion(f"models:/{name}/1", version)
    assert judged["macro_f1"] == pytest.approx(result.metrics["shipped_test_macro_f1"], abs=1e-12)
    uri = f"models:/{name}/1"
    model = load_aspect_model(uri)
    assert isinstance(model, TrainedAspects) and set(model.names) == {"negative", "neutral", "positive"}
    assert (
        model.tfidf is not None
        and model.weight == result.metrics["average_weight"]
        and model.weight in WEIGHTS
    )

    texts = [*review_texts(4, seed=11)["text"].tolist(), "the crew was rude", None, ""]
    predicted = model.predict(texts)
    encoder = model.classifier.predict_proba(texts).astype(np.float64)
    expected = model.weight * encoder + (1 - model.weight) * model.tfidf_proba(texts)
    np.testing.assert_array_equal(predicted.scores, expected)
    assert np.allclose(predicted.scores.sum(axis=1), 1.0, atol=1e-5)
    alone = np.concatenate([model.predict([t]).scores for t in texts])
    np.testing.assert_array_equal(alone, predicted.scores)  # batch invariant, both halves
    np.testing.assert_array_equal(model.predict(texts[::-1]).scores[::-1], predicted.scores)
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))
    assert served["aspect"].tolist() == predicted.aspects
    np.testing.assert_array_equal(served["aspect_score"].to_numpy(), predicted.best)

    validation = load_validation_split(result.run_id)
    val_texts = validation["text"].tolist()
    chosen, curve = choose_weight(
        model.classifier.predict_proba(val_texts).astype(np.float64),
        model.tfidf_proba(val_texts),
        validation["label"].astype(str).tolist(),
        model.names,
    )
    assert chosen == model.weight and curve[chosen] == max(curve.values())

    # Another weight is another model: the churn model's lineage of this one refuses it.
    folder = download_model(uri, tmp_path / "copy")
    lineage = AspectLineage.of(model, uri)
    average = next(folder.rglob(AVERAGE_FILE))
    average.write_text(average.read_text().replace(str(model.weight), "0.55", 1), encoding="utf-8")
    edited = load_aspect_model(folder, quantize=model.quantized)
    assert edited.weight == 0.55
    with pytest.raises(LineageError, match="expected"):
        check_lineage(lineage, edited, what="aspect model")
    # The bare classifier folder (no MLmodel to say int8 or fp32) scores as the weight was chosen.
    assert load_aspect_model(average.parent).quantized == model.quantized
    average.write_text('{"weight": 0.5, "tfidf": "../elsewhere.skops"}', encoding="utf-8")
    with pytest.raises(
        AspectModelError, match=r"tfidf must be 'aspect_tfidf.skops', got '../elsewhere.skops'"
    ):
        load_aspect_model(folder)
    average.write_text('{"weight": "heavy", "tfidf": "aspect_tfidf.skops"}', encoding="utf-8")
    with pytest.raises(AspectModelError, match=r"aspect_average.json: not an aspect average .*heavy"):
        load_aspect_model(folder)
    average.write_text('{"weight": 1.5, "tfidf": "aspect_tfidf.skops"}', encoding="utf-8")
    with pytest.raises(AspectModelError, match=r"weight 1.5: the classifier's share must be between 0 and 1"):
        load_aspect_model(folder)
    average.write_text('{"weight": 0.5, "tfidf": "aspect_tfidf.skops"}', encoding="utf-8")
    tfidf_file = average.parent / TFIDF_FILE
    other = review_texts(4, seed=3).assign(label=lambda f: f["label"].replace({"neutral": "meh"}))
    tfidf_file.write_bytes(skops.io.dumps(fit_tfidf_half(other, load_sentiment_config(None))[0]))
    with pytest.raises(AspectModelError, match=r"TF-IDF half answers .*'meh'.*not the classifier's aspects"):
        load_aspect_model(folder)
    tfidf_file.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AspectModelError, match=r"aspect_tfidf.skops: not a skops file"):
        load_aspect_model(folder)
    # A TF-IDF half that would call anything outside scikit-learn is refused, not run.
    tfidf_file.write_bytes(skops.io.dumps(FunctionTransformer(os.path.basename)))
    with pytest.raises(AspectModelError, match=r"refusing to load types .*posixpath\.basename"):
        load_aspect_model(folder)


def test_the_tfidf_half_is_balanced_and_cross_validated_unless_a_class_is_too_rare() -> None:
    from models.aspects import TrainedAspects
    from training.aspect_averaging import C_GRID, fit_tfidf_half
    from training.sentiment_config import load_sentiment_config

    config = load_sentiment_config(None)
    frame = review_texts(12, seed=5)
    model, c = fit_tfidf_half(frame, config)
    assert c in C_GRID and model.named_steps["logreg"].class_weight == "balanced"
    assert sorted(model.classes_) == ["negative", "neutral", "positive"]
    rare = pd.concat(
        [frame, pd.DataFrame({"text": ["a lost bag", "my bag was lost"], "label": ["bags"] * 2})]
    )
    model, c = fit_tfidf_half(rare, config)  # two "bags" texts cannot fill three folds: the config's C
    assert c == config.baseline_c and "bags" in set(model.classes_)
    # It reads texts as every scorer does: normalised (here, stray spaces and a missing text).
    read = TrainedAspects.tfidf_frame(["  my   bag  was lost ", None])
    assert read["text"].tolist() == ["my bag was lost", ""] and model.predict(read)[0] == "bags"


def test_the_encoder_share_is_chosen_by_validation_macro_f1() -> None:
    from training.aspect_averaging import choose_weight

    names = ["a", "b", "c"]
    truth = ["a", "b", "c", "c"]
    # The encoder knows a and b, the TF-IDF model c: only a mix gets all four right.
    encoder = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.5, 0.4, 0.1], [0.4, 0.5, 0.1]])
    tfidf = np.array([[0.3, 0.3, 0.4], [0.3, 0.3, 0.4], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    weight, curve = choose_weight(encoder, tfidf, truth, names)
    assert curve[weight] == 1.0 and 0.0 < weight < 1.0
    assert curve[1.0] < 1.0 and curve[0.0] < 1.0
    best = [w for w, f1 in curve.items() if f1 == 1.0]
    assert weight == max(best)  # among equals, the larger encoder share
    assert choose_weight(encoder, encoder, truth, names)[0] == 1.0  # nothing to gain: the encoder alone


def test_cli_aspect_errors_and_predict_sentiment_with_aspects(
    tiny_encoder: Path, labelled: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from tests.integration.test_sentiment import run_cli
    from training.aspects import load_aspect_config, train_zero_shot

    code, _, err = run_cli(["train", "aspects", "--fine-tune"], capsys, monkeypatch)
    assert code == 2 and "error: --fine-tune needs --spec" in err
    code, _, err = run_cli(["train", "aspects", "--config", str(tmp_path / "x.yaml")], capsys, monkeypatch)
    assert code == 2 and "--config is for --fine-tune" in err
    code, _, err = run_cli(["train", "aspects", "--resume", "0123abcd"], capsys, monkeypatch)
    assert code == 2 and "--resume is for --fine-tune" in err
    aspects = train_zero_shot(load_aspect_config(_taxonomy(tmp_path, str(tiny_encoder))))
    from training.sentiment import train_sentiment

    sentiment_run = train_sentiment(
        labelled, None, backbone=str(tiny_encoder), max_steps=4, batch_size=16, max_length=24,
        model_name=f"test-sentiment-{uuid.uuid4().hex[:8]}", baseline=False, num_threads=1,
    )  # fmt: skip
    texts = pd.DataFrame({"id": [1, 2, 3], "body": ["the crew was rude", None, "great seat"]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    out = tmp_path / "scored.parquet"
    code, stdout, err = run_cli(
        [
            "predict-sentiment", "--input", str(tmp_path / "texts.csv"), "--text-column", "body",
            "--out", str(out), "--model", sentiment_run.model_uri, "--aspect-model", aspects.model_uri,
        ],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    scored = pd.read_parquet(out)
    assert scored["aspect"].isna().tolist() == [False, True, False]
    assert set(scored["aspect"].dropna()) <= {"positive", "negative", "neutral"}
    assert scored["aspect_score"].isna().tolist() == [False, True, False]
    assert (scored["aspect_model"] == aspects.model_uri).all()
    with pytest.raises(UserError, match="no such aspect model folder"):
        from models.aspects import load_aspect_model

        load_aspect_model(tmp_path / "missing")


def test_the_aspect_cache_answers_as_the_model_does(tiny_encoder: Path, tmp_path: Path) -> None:
    from models.aspects import AspectCache, annotate_aspects
    from training.aspects import build_zero_shot, load_aspect_config

    model, _ = build_zero_shot(load_aspect_config(_taxonomy(tmp_path, str(tiny_encoder))))
    texts = review_texts(5, seed=11)["text"].tolist()
    cache = AspectCache(model, size=4)
    direct = model.predict(texts).aspects
    assert cache.aspects(texts + texts[:2]) == direct + direct[:2]
    assert len(cache._known) == 4  # bounded
    assert cache.aspects(texts[::-1]) == direct[::-1]
    evidence = [
        {"total": 2, "events": [{"text": texts[0], "sentiment": -0.5}, {"text": texts[1], "sentiment": None}]}
    ]
    annotate_aspects([*evidence, None], cache)
    assert evidence[0]["events"][0]["aspect"] == direct[0] and "aspect" not in evidence[0]["events"][1]
