"""The batch-invariant text forward and the one text normaliser.

A text's probabilities must be a function of the normalised text and the model artifact alone: bit-identical
whatever else shares its forward pass, whatever the batch size, the torch thread count or the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from features.text import normalise_text, normalise_text_series, normalise_texts
from models.sentiment import SentimentClassifier, artifact_digest, scoring_id
from models.text_encoder import BatchInvariantBert, PerTextForward, quantize_dynamic_int8
from tests.sentiment_helpers import build_tiny_backbone, review_texts

ANGRY = "THE WORST!!! " * 20  # a long text with large activations: it used to change its neighbours' rounding


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sequence classifier saved as a model folder (no training needed for invariance)."""
    from transformers import AutoModelForSequenceClassification

    # The same random backbone every run: a failure here reproduces.
    folder = build_tiny_backbone(tmp_path_factory.mktemp("tiny") / "bert", seed=2)
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )  # fmt: skip
    model.save_pretrained(folder)
    return folder


def _texts() -> list[str]:
    return review_texts(12, seed=4)["text"].tolist() + ["ok", "the crew was rude", ANGRY]


@pytest.mark.parametrize("quantize", [True, False], ids=["int8", "fp32"])
def test_a_text_scores_the_same_whatever_its_neighbours(tiny_classifier: Path, quantize: bool) -> None:
    classifier = SentimentClassifier.from_pretrained_dir(tiny_classifier, quantize=quantize, batch_size=8)
    assert isinstance(classifier.forward, BatchInvariantBert)
    texts = _texts()
    together = classifier.predict_proba(texts)
    alone = np.vstack([classifier.predict_proba([t]) for t in texts])
    np.testing.assert_array_equal(together, alone)
    rng = np.random.default_rng(1)
    for _ in range(5):  # random subsets, orders and batch sizes
        pick = rng.choice(len(texts), size=int(rng.integers(1, len(texts))), replace=False)
        classifier.batch_size = int(rng.integers(1, 20))
        np.testing.assert_array_equal(classifier.predict_proba([texts[i] for i in pick]), together[pick])


def test_dynamic_int8_is_not_batch_invariant_and_the_new_path_is(tiny_classifier: Path) -> None:
    """The defect, kept visible: torch's dynamic int8 changes a text's output when an angry text joins its
    batch. The per-token int8 path does not."""
    from models.sentiment import pad_batch

    classifier = SentimentClassifier.from_pretrained_dir(tiny_classifier, quantize=True)
    dynamic = quantize_dynamic_int8(classifier.model)
    ids = classifier.encode(["the crew was friendly", ANGRY])
    with torch.inference_mode():
        alone = dynamic(input_ids=torch.tensor([ids[0]])).logits[0]
        batch = pad_batch([{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids], 0)
        beside = dynamic(**batch).logits[0]
    assert not torch.equal(alone, beside)
    ours = classifier.forward
    assert torch.equal(ours.logits([ids[0]])[0], ours.logits(ids)[0])


def test_the_packed_forward_matches_the_transformers_model(tiny_classifier: Path) -> None:
    classifier = SentimentClassifier.from_pretrained_dir(tiny_classifier, quantize=False)
    ids = classifier.encode(_texts())
    ours = classifier.forward.logits(ids)
    with torch.inference_mode():
        reference = torch.cat([classifier.model(input_ids=torch.tensor([i])).logits for i in ids])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    int8 = classifier.to_int8().forward.logits(ids)
    assert (int8.argmax(1) == reference.argmax(1)).float().mean() >= 0.8
    assert float((int8 - reference).abs().max()) < 0.1


def test_other_architectures_fall_back_to_one_text_per_pass(tiny_classifier: Path) -> None:
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    config = DistilBertConfig(vocab_size=400, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    classifier = SentimentClassifier.from_pretrained_dir(tiny_classifier, quantize=True)
    classifier.model, classifier.forward = model, None
    from models.text_encoder import invariant_forward

    classifier.forward = invariant_forward(model, True)
    assert isinstance(classifier.forward, PerTextForward)
    texts = _texts()
    together = classifier.predict_proba(texts)
    np.testing.assert_array_equal(together, np.vstack([classifier.predict_proba([t]) for t in texts]))


_THREADS_SCRIPT = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from models.sentiment import SentimentClassifier
classifier = SentimentClassifier.from_pretrained_dir(sys.argv[1], quantize=sys.argv[3] == "int8", batch_size=5)
texts = json.loads(sys.stdin.read())
print(json.dumps(classifier.predict_proba(texts).astype(float).tolist()))
"""


@pytest.mark.parametrize("quantize", ["int8", "fp32"])
def test_thread_count_and_process_do_not_change_a_score(tiny_classifier: Path, quantize: str) -> None:
    texts = _texts()
    # Both processes at once (each spends most of its time importing torch): sharing the cores changes no bit.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _THREADS_SCRIPT, str(tiny_classifier), str(threads), quantize],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        for threads in (1, 2)
    ]
    results = []
    for run in runs:
        out, err = run.communicate(json.dumps(texts), timeout=300)
        assert run.returncode == 0, err[-2000:]
        results.append(np.array(json.loads(out)))
    np.testing.assert_array_equal(results[0], results[1])
    here = SentimentClassifier.from_pretrained_dir(tiny_classifier, quantize=quantize == "int8")
    np.testing.assert_array_equal(here.predict_proba(texts).astype(float), results[0])


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "fp32"])
def test_a_minilm_sized_model_scores_the_same_on_one_and_two_threads(int8: bool) -> None:
    """At MiniLM's width (384 wide, 1536 inner) MKL's fp32 matmul splits its sums between threads: before the fp32
    path ran on one thread, 4 of 60 texts' logits differed in the last bit between 1 and 2 threads (the tiny
    model above shows it only for some random weights)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=2000, hidden_size=384, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536,
        max_position_embeddings=128, num_labels=3,
    )  # fmt: skip
    forward = BatchInvariantBert(BertForSequenceClassification(config).eval(), int8=int8)
    rng = np.random.default_rng(0)
    texts = [rng.integers(5, 2000, size=int(n)).tolist() for n in rng.integers(3, 128, size=40)]
    before = torch.get_num_threads()
    try:
        scores = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            scores[threads] = forward.logits(texts)
            assert torch.get_num_threads() == threads  # the forward puts the caller's thread count back
            alone = torch.cat([forward.logits([t]) for t in texts[:8]])  # one text a call: the service's path
            assert torch.equal(alone, scores[threads][:8])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(scores[1], scores[2])


def test_int8_linear_sums_exactly() -> None:
    """The int8 matmul's sums are the exact integer sums of the codes, then scaled: no kernel-dependent rounding."""
    from models.text_encoder import Int8TokenLinear

    torch.manual_seed(1)
    linear = torch.nn.Linear(384, 96)
    layer = Int8TokenLinear(linear)
    x = torch.randn(7, 384) * torch.logspace(-3, 3, 7)[:, None]
    largest = x.abs().amax(dim=1, keepdim=True)
    codes = (x * (127.0 / largest)).round().to(torch.int64)
    exact = (codes @ layer.codes.to(torch.int64)).float() * layer.weight_scales
    expected = torch.addcmul(layer.bias, exact, largest / 127.0)
    assert torch.equal(layer(x), expected)
    torch.testing.assert_close(layer(x), linear(x), rtol=0.05, atol=0.05 * float(largest.max()))


@pytest.mark.parametrize("inputs", [384, 1536, 2100])  # one slice; two (MiniLM's down projection); three
def test_both_int8_kernels_give_the_exact_sums(monkeypatch: pytest.MonkeyPatch, inputs: int) -> None:
    """`torch._int_mm` and the sliced fp32 matmul of the codes are exact integer sums: bit-identical layers on
    1 and 2 threads, a row of zeros included, and equal to int64 arithmetic, so the kernel a CPU picks never
    changes a score."""
    from models import text_encoder
    from models.text_encoder import Int8TokenLinear, int8_matmul_available

    torch.manual_seed(3)
    linear = torch.nn.Linear(inputs, 64)
    x = torch.randn(50, inputs) * torch.logspace(-3, 3, 50)[:, None]
    x[7] = 0.0
    x[8, :] = 127.0  # every product at its largest: the sums' worst case for float32
    outputs, threads_before = [], torch.get_num_threads()
    try:
        for kernel in ("fp32", "int_mm") if int8_matmul_available() else ("fp32",):
            monkeypatch.setattr(text_encoder, "_KERNEL", [kernel])
            layer = Int8TokenLinear(linear)
            assert layer.kernel == kernel
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outputs.append(layer(x.clone()))
    finally:
        torch.set_num_threads(threads_before)
    largest = x.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    codes = (x * (127.0 / largest)).round().nan_to_num(0.0).to(torch.int64)
    exact = (codes @ layer.codes.to(torch.int64)).float() * layer.weight_scales
    expected = torch.addcmul(layer.bias, exact, largest / 127.0)
    for out in outputs:
        assert torch.equal(out, expected)
    assert not outputs[0][7].isnan().any()


def test_scores_are_a_function_of_the_normalised_text(tiny_classifier: Path) -> None:
    classifier = SentimentClassifier.from_pretrained_dir(tiny_classifier, quantize=True)
    variants = ["the crew was rude", "  the crew\twas\n rude ", "the\u00a0crew was rude\r\n"]
    proba = classifier.predict_proba(variants)
    assert (proba == proba[0]).all()


def test_normaliser() -> None:
    assert normalise_text("  a\t b\n\nc ") == "a b c"
    assert normalise_text("caf\u0065\u0301") == "caf\u00e9"  # NFC
    assert normalise_text("a\u2003b") == "a b"  # Unicode spaces, not only ASCII ones
    for blank in ("", "   ", "\n", None, float("nan")):
        assert normalise_text(blank) is None
    assert normalise_texts(["x ", None, "x "]) == ["x", None, "x"]
    import pandas as pd

    series = normalise_text_series(pd.Series([" a  b", None, " "], dtype="str"))
    assert series.tolist()[0] == "a b" and series.isna().tolist() == [False, True, True]


def test_the_normaliser_shortcut_gives_the_full_rule() -> None:
    """Texts taken as already normal (`_already_normal`) are exactly those the full rule leaves unchanged."""
    import random
    import unicodedata

    from features.text import _already_normal

    def full_rule(text: str) -> str | None:
        return " ".join(unicodedata.normalize("NFC", text).split()) or None

    pieces = ["a", "Z", "9", "é", "e\u0301", " ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85",
              "\xa0", "\u2003", "\u3000", "\x00", "\x7f", "~", ".", "ﬁ", "Å", "A\u030a"]  # fmt: skip
    rng = random.Random(0)
    texts = ["", " ", "ok", " ok", "ok ", "o  k", "o k", *pieces]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(5000)]
    for text in texts:
        assert normalise_text(text) == full_rule(text), repr(text)
        if _already_normal(text):
            assert full_rule(text) == text, repr(text)


def test_artifact_digest_is_content_not_name(tiny_classifier: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_classifier, copy)
    assert artifact_digest(copy) == artifact_digest(tiny_classifier)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert artifact_digest(copy) != artifact_digest(tiny_classifier)
    digest = artifact_digest(tiny_classifier)
    assert scoring_id(digest, True) != scoring_id(digest, False)
