"""Sentiment model speed on this CPU: inference texts/second, fp32 vs int8, and training seconds per 1,000 texts.

    .venv/bin/python benchmarks/sentiment.py                 # packaged MiniLM with a fresh 3-class head
    .venv/bin/python benchmarks/sentiment.py --model models:/churnsense-sentiment@champion --threads 2

Inputs are token sequences of exactly 32 and 64 tokens (airline tweets are 31 tokens at the median, 50 at the
99th percentile), so every batch is full-width and the numbers do not depend on padding. Each cell runs for at
least `--seconds`; the int8 column is the dynamically quantised copy of the same model. On a shared machine the
absolute numbers move with the load: compare the ratios, which are taken minutes apart at most.
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

from models.sentiment import SentimentClassifier, packaged_minilm_dir, quantize_int8  # noqa: E402


def token_batch(
    vocab_size: int, batch: int, length: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """[CLS] + random word pieces + [SEP], `length` tokens each, no padding."""
    ids = torch.randint(1000, vocab_size, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def texts_per_second(model: torch.nn.Module, batch: dict[str, torch.Tensor], seconds: float) -> float:
    """Forward passes over the same batch until `seconds` have passed (after one warm-up pass)."""
    model(**batch)
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done < 3:
        model(**batch)
        done += 1
    return done * batch["input_ids"].shape[0] / elapsed


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
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    fp32 = load_model(args.model)
    int8 = quantize_int8(fp32)
    vocab = fp32.config.vocab_size
    print(
        f"torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
        f" (ACTIVE: faster on an idle machine, much slower on a contended one), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"\ninference (texts/second, >= {args.seconds:g} s per cell)")
    print(f"{'tokens':>7} {'batch':>6} {'fp32':>10} {'int8':>10} {'int8/fp32':>10}")
    ratios = {}
    for length in args.lengths:
        for size in args.batch_sizes:
            batch = token_batch(vocab, size, length, generator)
            speed_fp32 = texts_per_second(fp32, batch, args.seconds)
            speed_int8 = texts_per_second(int8, batch, args.seconds)
            ratios[(length, size)] = speed_int8 / speed_fp32
            print(
                f"{length:>7} {size:>6} {speed_fp32:>10.1f} {speed_int8:>10.1f} {ratios[(length, size)]:>9.2f}x"
            )

    print(f"\ntraining fp32 (AdamW, batch 16, {args.train_steps} steps)")
    print(f"{'tokens':>7} {'s/step':>8} {'s/1k texts':>11} {'vs 32 tokens':>13}")
    baseline = None
    for length in args.lengths:
        per_1k = training_seconds_per_1k(fp32, token_batch(vocab, 16, length, generator), args.train_steps)
        baseline = baseline or per_1k
        print(f"{length:>7} {per_1k * 16 / 1000:>8.2f} {per_1k:>11.1f} {per_1k / baseline:>12.2f}x")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
