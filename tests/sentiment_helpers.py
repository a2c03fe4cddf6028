"""Builders for the sentiment tests: seeded review texts and a tiny randomly initialised BERT "backbone"."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

POSITIVE_WORDS = ["great", "love", "excellent", "wonderful", "amazing", "perfect", "friendly", "fast"]
NEGATIVE_WORDS = ["terrible", "awful", "hate", "broken", "rude", "worst", "slow", "lost"]
NEUTRAL_WORDS = ["okay", "question", "info", "schedule", "where", "which", "update", "details"]
SUBJECTS = ["flight", "service", "app", "support", "delivery", "staff", "seat", "meal", "crew", "gate"]
FILLERS = ["today", "again", "this time", "yesterday", "as usual", "on monday", "tonight", "for once"]


def review_texts(n_per_class: int = 60, seed: int = 0) -> pd.DataFrame:
    """Distinct short reviews whose label is carried by one sentiment word (learnable in a few steps)."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    for label, words in (
        ("positive", POSITIVE_WORDS),
        ("negative", NEGATIVE_WORDS),
        ("neutral", NEUTRAL_WORDS),
    ):
        seen: set[str] = set()
        while len(seen) < n_per_class:
            text = f"the {rng.choice(SUBJECTS)} was {rng.choice(words)} {rng.choice(FILLERS)}"
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["text", "label"])


def all_vocabulary_texts() -> list[str]:
    words = POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS + SUBJECTS + FILLERS
    return [f"the {w} was is and a of to" for w in words] + review_texts(40, seed=99)["text"].tolist()


def build_tiny_backbone(folder: Path, texts: list[str] | None = None, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with random weights drawn from `seed` and a WordPiece tokenizer of the words in
    `texts`, saved like a pretrained checkpoint (what `from_pretrained(folder)` expects). The same arguments
    give the same files in every process, whatever ran before."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The vocabulary built here, not by `WordPieceTrainer`: the trainer breaks ties between merges, and numbers
    # its tokens, in hash order, which differs from one process to the next, so every run had another tiny
    # model (the monitor test once saw a text feature's PSI cross its threshold that way). Every word of
    # `texts` whole, and each character alone and as a continuation, in a fixed order: the same ids every run.
    words: set[str] = set()
    for text in texts or all_vocabulary_texts():
        normal = wordpiece.normalizer.normalize_str(text)
        words.update(piece for piece, _ in wordpiece.pre_tokenizer.pre_tokenize_str(normal))
    characters = sorted({c for word in words for c in word})
    tokens = [*specials, *sorted(words - set(characters)), *characters, *(f"##{c}" for c in characters)]
    wordpiece.model = models.WordPiece({token: i for i, token in enumerate(tokens)}, unk_token="[UNK]")
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=wordpiece.token_to_id("[PAD]"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        backbone = BertModel(config)
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_reviews(folder: Path, frame: pd.DataFrame, name: str = "reviews.csv", **spec_keys: str) -> Path:
    """Write `frame` as CSV and a spec YAML whose `reviews` section points at it; returns the spec path."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)
    reviews = {"path": name, "text": "text", "label": "label", **spec_keys}
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"reviews": reviews}), encoding="utf-8")
    return spec


def train_tiny_sentiment(folder: Path, seed: int = 0):
    """A tiny random-BERT sentiment model fine-tuned for six steps and registered in the session's store
    (the recipe the service and batch tests share). Returns the `SentimentRunResult`."""
    from training.sentiment import train_sentiment

    backbone = build_tiny_backbone(folder / "tiny_bert", seed=seed)
    reviews = write_reviews(folder / "reviews", review_texts(40, seed=1))
    return train_sentiment(
        reviews,
        None,
        backbone=str(backbone),
        max_steps=6,
        batch_size=16,
        max_length=32,
        baseline=False,
        quantize=True,  # served as int8, as the default config does: the parity tests run the real arithmetic
        num_threads=1,
    )
