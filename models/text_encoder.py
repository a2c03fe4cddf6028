"""Batch-invariant forward passes of a sequence classifier: a text's logits never depend on its batch neighbours.

A text's sentiment must be a function of the text and the model artifact alone, whichever path scores it (training
features, the service alone or under load, the local batch engine, Spark). Two things in an ordinary padded batch
break that:

- **int8 dynamic quantisation** (`torch.ao.quantization.quantize_dynamic`) picks one activation scale for the whole
  batch tensor, so a long angry text changes the rounding of every other text in its batch (seen: polarity -0.587
  alone, -0.646 beside two other texts).
- **padding and shapes**: attention over a padded length, and float kernels chosen by the batch's shape, round
  differently (seen in fp32: 1e-8 differences between `/churn_risk` and `/churn_risk_batch`).

`BatchInvariantBert` runs a BERT-family classifier (MiniLM, BERT, ...) on *packed* tokens, no padding:

- every `nn.Linear` is an int8 matmul with **one activation scale per token** (each token row scaled by its own
  max |value|) and per-output-channel weight scales (`Int8TokenLinear`: `torch._int_mm`, or an fp32 matmul of
  the codes in slices small enough to be exact). Both sum integers exactly whatever the order, so a token's
  output depends on that token's row and the weights only;
- embeddings, LayerNorm, GELU and residual sums are per token (hidden sizes are multiples of 32, so every value
  goes through full vector lanes however the rows are split between threads);
- attention runs per text, texts of one length stacked together: each text's attention sees only its own
  tokens, with the same shapes whoever else is in the batch.

In fp32 (`int8=False`) the linears are float matmuls whose rounding depends on how many rows they get and on the
thread count, so each text runs alone (same shapes every time) on one torch thread (`one_torch_thread`): slower.
Architectures other than BERT fall back to `PerTextForward`: the Hugging Face model called on one text at a time
(int8 dynamic or fp32) on one thread, invariant for the same reasons.
`tests/unit/test_text_encoder.py` checks bit-identity against neighbours, batch sizes and thread counts.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TokenIds = Sequence[int]
_TINY = torch.finfo(torch.float32).tiny


@contextlib.contextmanager
def _quiet_quantized_warnings() -> Iterator[None]:
    """torch 2.13 deprecates quantized tensor creation in favour of torchao; the fbgemm ops still work and need
    no extra package (tracked as its own issue)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantized tensor creation.*")
        yield


def int8_matmul_available() -> bool:
    """Whether this torch build multiplies int8 matrices exactly on the CPU (`torch._int_mm`, int32 sums)."""
    try:
        codes = torch.ones(1, 4, dtype=torch.int8)
        return int(torch._int_mm(codes, codes.t())[0, 0]) == 4
    except (AttributeError, RuntimeError):
        return False


# Integer codes in [-127, 127] multiply to at most 127^2; up to this many such products, and every partial sum of
# them in any order, stay below 2^24, where float32 holds every integer: an fp32 matmul over at most this many
# inputs is exact integer arithmetic, whatever its blocking, vector width or thread count.
_EXACT_FP32_TERMS = (2**24) // (127 * 127)  # 1040


class Int8TokenLinear:
    """`y = x @ W.T + b` with int8 weights (one scale per output channel) and int8 activations (one scale per
    input row, symmetric): a row's result depends on that row and the weights alone, bit for bit.

    The codes' products are summed exactly, then become float32 and take the channel's and the row's scale and
    the bias elementwise (the same roundings for every row). Two kernels give those exact sums, and so the same
    bits: `torch._int_mm` (int32 accumulation; fast where the CPU has VNNI) and an fp32 matmul of the codes
    held as floats, split into slices of at most `_EXACT_FP32_TERMS` inputs (fast on any CPU with AVX2, where
    `_int_mm` ran 20x slower than fp32 on an AMD EPYC without AVX-512). `exact_int8_kernel` times both once per
    process and picks the faster. oneDNN's `qlinear_pointwise`, used before, fell back to its reference kernel
    on AMD EPYC (40x slower than fp32).
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        weight = linear.weight.detach().float()
        self.out_features = weight.shape[0]
        self.weight_scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(_TINY)
        codes = torch.round(weight / self.weight_scales[:, None]).to(torch.int8)
        self.kernel = exact_int8_kernel()
        # (in, out): a view of the row-major (out, in) codes, the layout _int_mm reads fastest.
        self.codes = codes.t()
        inputs = weight.shape[1]
        self.slices = [(a, min(a + _EXACT_FP32_TERMS, inputs)) for a in range(0, inputs, _EXACT_FP32_TERMS)]
        # The same codes as float32, one contiguous (in, out) block per slice of inputs (fp32 kernel only).
        self.float_codes = (
            [self.codes[a:b].float().contiguous() for a, b in self.slices] if self.kernel == "fp32" else []
        )
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Each row's largest |value| maps to 127 (a row of zeros divides by the smallest normal float: its
        # 0 * inf is NaN, code 0; the clamp keeps any code an int8 can hold, whichever kernel reads it).
        largest = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())
        largest = largest.clamp_min_(_TINY)
        codes = (x * (127.0 / largest)).round_().nan_to_num_(0.0).clamp_(-127.0, 127.0)
        out = exact_sums(codes, self).mul_(self.weight_scales)
        row_scale = largest.div_(127.0)
        if self.bias is None:
            return out.mul_(row_scale)
        return torch.addcmul(self.bias, out, row_scale, out=out)  # in place: no second large buffer


def exact_sums(codes: torch.Tensor, layer: Int8TokenLinear) -> torch.Tensor:
    """codes @ layer's weight codes, summed exactly, as float32 (each sum rounded once, to nearest)."""
    if layer.kernel == "int_mm":
        return torch._int_mm(codes.to(torch.int8), layer.codes).float()
    if len(layer.slices) == 1:
        return torch.mm(codes, layer.float_codes[0])  # |sum| < 2^24: already the exact integer
    total = None  # each slice's sums are exact; their total is formed in int32, then rounded once
    for (a, b), weights in zip(layer.slices, layer.float_codes, strict=True):
        part = torch.mm(codes[:, a:b].contiguous(), weights).to(torch.int32)
        total = part if total is None else total.add_(part)
    return total.float()


_KERNEL: list[str] = []


def exact_int8_kernel() -> str:
    """The kernel, "int_mm" or "fp32", that sums a MiniLM-sized layer (256 x 384 by 384 x 1536) faster here, timed
    once per process (best of three). Both give identical bits, so the choice changes speed only."""
    if _KERNEL:
        return _KERNEL[0]
    import time

    codes = torch.randint(-127, 128, (256, 384), dtype=torch.int8)
    weights = torch.randint(-127, 128, (1536, 384), dtype=torch.int8).t()
    as_floats = (codes.float(), weights.float().contiguous())
    timings = {}
    for name, run in (
        ("fp32", lambda: torch.mm(*as_floats)),
        ("int_mm", lambda: torch._int_mm(codes, weights)),
    ):
        if name == "int_mm" and not int8_matmul_available():
            continue
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    _KERNEL.append(min(timings, key=timings.get))
    return _KERNEL[0]


_THREAD_COUNT_LOCK = threading.RLock()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the enclosed torch calls on one thread. fp32 matmuls (MKL's sgemm) split their sums between threads,
    so their last bit depends on the thread count: 4 of 60 MiniLM texts' fp32 logits differed between 1 and 2
    threads. One thread is one summation order everywhere. torch's thread count is process-wide, so the change
    is made under a lock and undone afterwards (other threads' torch calls meanwhile run on one thread too)."""
    with _THREAD_COUNT_LOCK:
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if threads != 1:
                torch.set_num_threads(threads)


class Fp32Linear:
    """The float layer as it is (used when every call sees one text, so shapes never vary by batch)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        self.weight = linear.weight.detach().float()
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def supports_packed(model: Any) -> bool:
    """Whether `BatchInvariantBert` can run this model: a BERT sequence classifier with absolute positions."""
    return (
        _absolute_bert(model)
        and hasattr(model, "bert")
        and getattr(model.bert, "pooler", None) is not None
        and hasattr(model, "classifier")
    )


def supports_packed_encoder(model: Any) -> bool:
    """Whether `BatchInvariantBert` can mean-pool this model: a BERT encoder (`BertModel`, no head needed)."""
    return _absolute_bert(model) and hasattr(model, "encoder") and hasattr(model, "embeddings")


def _absolute_bert(model: Any) -> bool:
    config = getattr(model, "config", None)
    return (
        config is not None
        and getattr(config, "model_type", None) == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
    )


class BatchInvariantBert:
    """Logits of a `BertForSequenceClassification`, or mean-pooled token states of a `BertModel` (a sentence
    encoder), from token ids, each text independent of the others.

    Args:
        model: the fp32 model (left unchanged; its weights are copied or quantised).
        int8: int8 linears with per-token scales (fast, packed batches) or fp32 (one text per pass).
    """

    def __init__(self, model: Any, int8: bool) -> None:
        classifier = supports_packed(model)
        if not classifier and not supports_packed_encoder(model):
            raise ValueError("BatchInvariantBert needs a BERT sequence classifier or a BERT encoder")
        self.int8 = bool(int8)
        linear = Int8TokenLinear if self.int8 else Fp32Linear
        config = model.config
        bert = model.bert if classifier else model
        embeddings = bert.embeddings
        self.word = embeddings.word_embeddings.weight.detach()
        self.position = embeddings.position_embeddings.weight.detach()
        self.token_type0 = embeddings.token_type_embeddings.weight.detach()[0]
        self.embed_norm = embeddings.LayerNorm
        self.heads = int(config.num_attention_heads)
        self.head_size = int(config.hidden_size) // self.heads
        self.hidden = int(config.hidden_size)
        self.max_positions = int(config.max_position_embeddings)
        self.layers = []
        for layer in bert.encoder.layer:
            attention = layer.attention
            self.layers.append(
                {
                    # One matmul for query, key and value: each output channel keeps its own weight scale and
                    # each token its own activation scale, so fusing changes no bit.
                    "qkv": linear(_stacked(attention.self.query, attention.self.key, attention.self.value)),
                    "attn_out": linear(attention.output.dense),
                    "attn_norm": attention.output.LayerNorm,
                    "up": linear(layer.intermediate.dense),
                    "act": layer.intermediate.intermediate_act_fn,
                    "down": linear(layer.output.dense),
                    "out_norm": layer.output.LayerNorm,
                }
            )
        self.pooler = linear(model.bert.pooler.dense) if classifier else None
        self.classifier = linear(model.classifier) if classifier else None
        self.texts_per_pass = None if self.int8 else 1

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[TokenIds]) -> torch.Tensor:
        """Logits (len(token_ids), num_labels) in input order; each row depends only on its own ids."""
        if self.classifier is None or self.pooler is None:
            raise ValueError("this model has no classification head")
        if not token_ids:
            return torch.zeros(0, 0)
        with self._threads():  # the pooler and the head too: fp32 linears all
            if self.texts_per_pass == 1 and len(token_ids) > 1:
                return torch.cat([self.logits([ids]) for ids in token_ids])
            x, order, starts, _ = self._states(token_ids)
            pooled = torch.tanh(self.pooler(x[torch.from_numpy(starts)]))
            logits = self.classifier(pooled)
        return logits[torch.from_numpy(np.argsort(order, kind="stable"))]

    @torch.inference_mode()
    def mean_pooled(self, token_ids: Sequence[TokenIds]) -> np.ndarray:
        """The mean of each text's last token states (what sentence-transformers' mean pooling gives), float64
        (len(token_ids), hidden) in input order; each row depends only on its own ids (the mean of a text's own
        rows, summed in float64 in token order)."""
        if not token_ids:
            return np.zeros((0, self.hidden))
        if self.texts_per_pass == 1 and len(token_ids) > 1:
            with self._threads():  # one thread-count change for the whole list, not one per text
                return np.concatenate([self.mean_pooled([ids]) for ids in token_ids])
        x, order, starts, lengths = self._states(token_ids)
        states = x.numpy().astype(np.float64)
        pooled = np.stack([states[s : s + n].sum(axis=0) / n for s, n in zip(starts, lengths, strict=True)])
        return pooled[np.argsort(order, kind="stable")]

    def _states(
        self, token_ids: Sequence[TokenIds]
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """Packed last-layer token states, shortest text first: (states, the packing order, each packed text's
        first row, its length)."""
        lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
        if lengths.min() < 1 or lengths.max() > self.max_positions:
            raise ValueError(f"token sequences must hold 1 to {self.max_positions} ids")
        # Texts packed shortest first, so the texts of one length are one contiguous block of rows.
        order = np.argsort(lengths, kind="stable")
        lengths = lengths[order]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        ids = torch.tensor([i for k in order for i in token_ids[k]], dtype=torch.long)
        positions = torch.from_numpy(np.concatenate([np.arange(n) for n in lengths]))
        with self._threads():
            x = F.embedding(ids, self.word) + self.token_type0
            x = self.embed_norm(x + F.embedding(positions, self.position))
            blocks = _length_blocks(lengths, starts)
            for layer in self.layers:
                context = self._attention(layer["qkv"](x), blocks)
                x = layer["attn_norm"](layer["attn_out"](context) + x)
                x = layer["out_norm"](layer["down"](layer["act"](layer["up"](x))) + x)
        return x, order, starts, lengths

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        """int8 sums are exact on any thread count; fp32 ones are not, so fp32 runs on one thread."""
        return contextlib.nullcontext() if self.int8 else one_torch_thread()

    def _attention(self, qkv: torch.Tensor, blocks: list[tuple[int, int, int]]) -> torch.Tensor:
        """Self-attention of each text over its own tokens. Texts of one length share one call: the same
        per-text shapes whoever else is in the batch."""
        out = torch.empty(qkv.shape[0], self.hidden)
        for start, end, length in blocks:
            n = (end - start) // length
            q, k, v = (
                qkv[start:end, part * self.hidden : (part + 1) * self.hidden]
                .reshape(n, length, self.heads, self.head_size)
                .transpose(1, 2)
                for part in range(3)
            )
            attended = F.scaled_dot_product_attention(q, k, v)
            out[start:end] = attended.transpose(1, 2).reshape(end - start, self.hidden)
        return out


def _stacked(*layers: torch.nn.Linear) -> torch.nn.Linear:
    """One `nn.Linear` whose outputs are the given layers' outputs side by side."""
    weight = torch.cat([layer.weight.detach() for layer in layers])
    stacked = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=layers[0].bias is not None)
    with torch.no_grad():
        stacked.weight.copy_(weight)
        if stacked.bias is not None:
            stacked.bias.copy_(torch.cat([layer.bias.detach() for layer in layers]))
    return stacked


def _length_blocks(lengths: np.ndarray, starts: np.ndarray) -> list[tuple[int, int, int]]:
    """(first row, end row, length) of each run of equal-length texts in packed (length-sorted) order."""
    blocks = []
    begin = 0
    for index in range(1, len(lengths) + 1):
        if index == len(lengths) or lengths[index] != lengths[begin]:
            end = int(starts[index - 1] + lengths[index - 1])
            blocks.append((int(starts[begin]), end, int(lengths[begin])))
            begin = index
    return blocks


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """torch's int8 *dynamic* quantisation of every `nn.Linear` (one activation scale per call): batch-invariant
    only when each call holds one text. Kept for `PerTextForward` and as the benchmark's yardstick."""
    from torch.ao.quantization import quantize_dynamic

    with _quiet_quantized_warnings():
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)


class PerTextForward:
    """Any Hugging Face sequence classifier, one text per forward pass (int8 dynamic or fp32): with a batch of
    one there are no neighbours, no padding and a per-text activation scale."""

    def __init__(self, model: Any, int8: bool) -> None:
        self.int8 = bool(int8)
        self.model = (quantize_dynamic_int8(model) if self.int8 else model).eval()

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[TokenIds]) -> torch.Tensor:
        with one_torch_thread():  # the model's attention is fp32 in both modes
            rows = [
                self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long)).logits.float()
                for ids in token_ids
            ]
        return torch.cat(rows) if rows else torch.zeros(0, 0)


class PerTextEncoder(PerTextForward):
    """Any Hugging Face encoder, one text per forward pass (int8 dynamic or fp32), mean-pooled in float64."""

    @torch.inference_mode()
    def mean_pooled(self, token_ids: Sequence[TokenIds]) -> np.ndarray:
        with one_torch_thread():
            rows = [
                self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long))
                .last_hidden_state[0]
                .numpy()
                .astype(np.float64)
                .mean(axis=0)
                for ids in token_ids
            ]
        return np.stack(rows) if rows else np.zeros((0, int(self.model.config.hidden_size)))


def invariant_encoder(model: Any, int8: bool) -> BatchInvariantBert | PerTextEncoder:
    """The fastest batch-invariant mean-pooling forward of a sentence encoder this model and machine support."""
    if supports_packed_encoder(model):  # int8 needs no _int_mm: the fp32 kernel sums the codes exactly too
        return BatchInvariantBert(model, int8)
    return PerTextEncoder(model, int8)


def invariant_forward(model: Any, int8: bool) -> BatchInvariantBert | PerTextForward:
    """The fastest batch-invariant forward this model and machine support."""
    if supports_packed(model):
        return BatchInvariantBert(model, int8)
    return PerTextForward(model, int8)
