"""Sentiment model speed on this CPU: the batch-invariant int8 path against fp32 and dynamic int8, and training.

    .venv/bin/python benchmarks/sentiment.py                 # packaged MiniLM with a fresh 3-class head
    .venv/bin/python benchmarks/sentiment.py --model models:/churnsense-sentiment@champion \
        --labelled ../shared/data/airline_tweets/Tweets.csv --text-column text --label-column airline_sentiment

Three ways to run the same weights, measured in one run:

- `fp32`: the Hugging Face model on padded batches (the yardstick);
- `dyn int8`: torch's dynamic int8 quantisation on padded batches (what served before: NOT batch-invariant,
  a text's score depends on its batch neighbours);
- `invariant int8`: what churnsense serves (`models.text_encoder`): per-token int8 scales, packed tokens,
  bit-identical whatever the batch.

Inputs are token sequences of exactly 32 and 64 tokens (airline tweets are 31 tokens at the median, 50 at the
99th percentile), plus a "mixed" row of lengths 8-64 where padding costs the padded paths. Each cell runs for at
least `--seconds`. Target: invariant int8 at least 1.5x fp32 at batch 32. With `--labelled`, accuracy of the
three on that file (within 1 point of fp32 is the target). On a shared machine the absolute numbers move with the
load: compare the ratios, taken seconds apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see churnsense.cli)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.sentiment import SentimentClassifier, packaged_minilm_dir, pad_batch  # noqa: E402
from models.text_encoder import BatchInvariantBert, quantize_dynamic_int8  # noqa: E402


def token_ids(vocab_size: int, batch: int, length: int | None, generator: torch.Generator) -> list[list[int]]:
    """[CLS] + random word pieces + [SEP]: `length` tokens each, or 8-64 tokens (length None)."""
    out = []
    for _ in range(batch):
        n = length or int(torch.randint(8, 65, (1,), generator=generator))
        ids = torch.randint(1000, vocab_size, (n,), generator=generator).tolist()
        ids[0], ids[-1] = 101, 102
        out.append(ids)
    return out


def padded(ids: list[list[int]]) -> dict[str, torch.Tensor]:
    return pad_batch([{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids], 0)


@torch.inference_mode()
def texts_per_second(forward, ids: list[list[int]], seconds: float) -> float:  # noqa: ANN001
    """Forward passes over the same batch until `seconds` have passed (after one warm-up pass)."""
    forward(ids)
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done < 3:
        forward(ids)
        done += 1
    return done * len(ids) / elapsed


def hf_forward(model: torch.nn.Module):  # noqa: ANN201
    """The padded Hugging Face forward of token id lists (batch as given)."""

    def forward(ids: list[list[int]]) -> torch.Tensor:
        return model(**padded(ids)).logits

    return forward


def accuracy(forward, tokenizer, texts: list[str], labels: list[int], batch: int = 32) -> float:  # noqa: ANN001
    """Accuracy of `forward` (length-sorted batches of `batch`) on a labelled sample."""
    from features.text import normalise_text
    from models.sentiment import length_sorted_batches

    ids = tokenizer([normalise_text(t) or "" for t in texts], truncation=True, max_length=64)["input_ids"]
    predicted = [0] * len(ids)
    with torch.inference_mode():
        for index in length_sorted_batches([len(i) for i in ids], batch):
            logits = forward([ids[i] for i in index])
            for position, row in zip(index, logits.argmax(dim=1).tolist(), strict=True):
                predicted[position] = row
    return sum(int(p == y) for p, y in zip(predicted, labels, strict=True)) / len(labels)


def training_seconds_per_1k(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int) -> float:
    """AdamW steps (forward, backward, clip, update) on one batch; seconds per 1,000 training texts."""
    labels = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step() -> None:
        model(**batch, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - started
    model.eval()
    return 1000 * elapsed / (steps * batch["input_ids"].shape[0])


def load_model(source: str | None) -> torch.nn.Module:
    if source:
        return SentimentClassifier.load(source, quantize=False).model
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoModelForSequenceClassification.from_pretrained(packaged_minilm_dir(), num_labels=3).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model URI or folder (default: packaged MiniLM, fresh head)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per inference cell")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--labelled", type=Path, help="CSV of labelled texts for the accuracy comparison")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--sample", type=int, default=3000, help="labelled rows used (seeded sample)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    fp32 = load_model(args.model)
    paths = {
        "fp32": hf_forward(fp32),
        "dyn int8": hf_forward(quantize_dynamic_int8(fp32)),
        "invariant int8": BatchInvariantBert(fp32, int8=True).logits,
    }
    vocab = fp32.config.vocab_size
    print(
        f"torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
        f" (ACTIVE: faster on an idle machine, much slower on a contended one), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"\ninference (texts/second, >= {args.seconds:g} s per cell)")
    names = list(paths)
    print(f"{'tokens':>7} {'batch':>6}" + "".join(f"{n:>16}" for n in names) + f"{'invariant/fp32':>16}")
    ratios = {}
    for length in [*args.lengths, None]:
        for size in args.batch_sizes:
            ids = token_ids(vocab, size, length, generator)
            speeds = {name: texts_per_second(forward, ids, args.seconds) for name, forward in paths.items()}
            ratios[(length, size)] = speeds["invariant int8"] / speeds["fp32"]
            print(
                f"{length or 'mixed':>7} {size:>6}" + "".join(f"{speeds[n]:>16.1f}" for n in names)
                + f"{ratios[(length, size)]:>15.2f}x"
            )  # fmt: skip
    for key, what in (((64, 32), "64 tokens, every text full width"), ((None, 32), "mixed lengths 8-64")):
        if key in ratios:
            verdict = "met" if ratios[key] >= 1.5 else "MISSED"
            print(f"target: invariant int8 >= 1.5x fp32 at batch 32, {what}: {ratios[key]:.2f}x ({verdict})")

    if args.labelled:
        import pandas as pd

        frame = pd.read_csv(args.labelled).dropna(subset=[args.text_column, args.label_column])
        frame = frame.sample(min(args.sample, len(frame)), random_state=0)
        classifier = SentimentClassifier.load(args.model, quantize=False) if args.model else None
        label_ids = fp32.config.label2id
        known = frame[args.label_column].astype(str).isin(label_ids)
        frame = frame[known]
        labels = [int(label_ids[str(v)]) for v in frame[args.label_column]]
        tokenizer = classifier.tokenizer if classifier else None
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
        print(f"\naccuracy on {len(labels):,} rows of {args.labelled.name} (batch 32, 64 tokens)")
        scores = {
            n: accuracy(f, tokenizer, frame[args.text_column].astype(str).tolist(), labels)
            for n, f in paths.items()
        }
        for name, value in scores.items():
            print(f"  {name:<16}{value:.4f}  ({(value - scores['fp32']) * 100:+.2f} points vs fp32)")

    print(f"\ntraining fp32 (AdamW, batch 16, {args.train_steps} steps)")
    print(f"{'tokens':>7} {'s/step':>8} {'s/1k texts':>11} {'vs 32 tokens':>13}")
    baseline = None
    for length in args.lengths:
        per_1k = training_seconds_per_1k(
            fp32, padded(token_ids(vocab, 16, length, generator)), args.train_steps
        )
        baseline = baseline or per_1k
        print(f"{length:>7} {per_1k * 16 / 1000:>8.2f} {per_1k:>11.1f} {per_1k / baseline:>12.2f}x")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
