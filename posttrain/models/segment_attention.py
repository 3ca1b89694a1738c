"""Attention over packed rows that computes only the blocks a token may see (segment attention).

A padding-free preference batch (``posttrain.data.collate.collate_shared_prefix``) packs several
groups into each row: a group's shared prefix once, then each member's remainder, which attends
to the prefix and to itself only. Run with the batch's 4-D mask, attention computes every
(row width)^2 score of every head, most of them masked, and every layer runs on the rows'
padding too. Here (``posttrain.models.logprobs.forward_packed_logprobs``) the rows' N tokens run
end to end as one row of N (no padding; ``position_ids`` still count from each sequence's
start), and attention computes only what a padded batch of the sequences would: every sequence
(its group's prefix, then its remainder) is a causal segment. The collate step gives each
sequence's tokens among the N (``segment_tokens``), its length, and which segment slot each
token's output comes from (``segment_out``: a prefix token takes its group's first member's);
``build`` groups the sequences into buckets of similar length (``buckets``: fewest padded scores
plus a fixed cost a bucket). In every layer the queries, keys and values are gathered into
(sequences, heads, L_b, head_dim) per bucket, each bucket runs one
``scaled_dot_product_attention(is_causal=True, enable_gqa=True)`` (no mask tensor: the fused
causal kernels; a sequence's padding comes after its tokens, so no real query sees it), and each
token's output is read back. Embeddings, projections, MLP and norms run once per real token.
The duplicated work is the prefix's queries for the members after the first, and the prefix's
keys gathered once per member.

How the layout reaches attention (no global state): the attention function is registered once
with transformers' ``AttentionInterface`` under the name ``posttrain_segments``;
``segments_used(model)`` is a context manager that switches the model's attention implementation
to it (``set_attn_implementation``) and restores the previous one on exit, and the layout travels
with the forward call itself: ``model(..., segments=Segments(...))`` (no ``attention_mask``), a
keyword argument transformers passes unchanged to every layer's attention function. Outside the
context manager, or in a call without ``segments``, nothing changes. Models where it does not
apply (``applies(model)`` false: not a llama-like model type, an attention other than ``eager``
or ``sdpa``, a sliding window, logit softcapping) keep the 4-D mask path, as does
``ENABLED = False``.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

NAME = "posttrain_segments"
ENABLED = True  # False: packed rows always take the 4-D mask path (benchmarks, tests)
# model types whose attention is plain causal softmax attention over rotary q/k through
# transformers' AttentionInterface (checked further per config by ``applies``)
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


# a bucket's fixed cost (call overhead) in units of its padded scores per head (sequences x L^2)
BUCKET_COST = 64 * 64


@dataclass(frozen=True)
class Segments:
    """Where each sequence's tokens are among the N tokens of the forward, bucketed by length:
    bucket b holds ``shapes[b] = (sequences, L_b)``, its sequences right-padded to its longest."""

    index: torch.Tensor  # (S,) the token in each slot of the buckets, bucket after bucket
    shapes: tuple[tuple[int, int], ...]
    out: torch.Tensor  # (N,) the slot whose attention output each token takes


def buckets(lengths: list[int]) -> list[list[int]]:
    """Sequence indices grouped into buckets of similar length (shortest first), minimising the
    padded scores plus ``BUCKET_COST`` a bucket: sum over buckets of size x longest^2 + cost."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    best, cut = [0.0] + [float("inf")] * len(sizes), [0] * (len(sizes) + 1)
    for end in range(1, len(sizes) + 1):  # best[end]: the shortest `end` sequences
        for start in range(end):
            cost = best[start] + (end - start) * sizes[end - 1] ** 2 + BUCKET_COST
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(sizes)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def build(batch: dict[str, torch.Tensor]) -> Segments:
    """The ``Segments`` of a ``collate_shared_prefix`` batch (its ``segment_*`` entries)."""
    tokens, out = batch["segment_tokens"], batch["segment_out"]
    width = tokens.shape[1]
    lengths = batch["segment_lengths"].tolist()
    index, shapes = [], []
    slot = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)  # first slot
    offset = 0
    for group in buckets(lengths):
        longest = max(lengths[i] for i in group)
        rows = torch.tensor(group, device=tokens.device)
        index.append(tokens.index_select(0, rows)[:, :longest].flatten())
        slot[rows] = offset + torch.arange(len(group), device=tokens.device) * longest
        shapes.append((len(group), longest))
        offset += len(group) * longest
    return Segments(torch.cat(index), tuple(shapes), slot[out // width] + out % width)


def segment_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: Segments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (1, h, N, d) query, (1, h_kv, N, d) key and value ->
    (1, N, h, d), each token attending causally within its sequence (``segments``). Without
    ``segments``, transformers' SDPA attention with ``attention_mask``."""
    if segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    for name in ("sliding_window", "softcap", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise RuntimeError(f"segment attention does not support {name}")
    assert query.shape[0] == 1, "segment attention runs on the tokens end to end, one row"
    sizes = [n * length for n, length in segments.shapes]

    def gather(x: torch.Tensor) -> list[torch.Tensor]:  # (1, h, N, d) -> [(n_b, h, L_b, d)]
        parts = x[0].index_select(1, segments.index).split(sizes, dim=1)
        return [
            part.unflatten(1, shape).transpose(0, 1)
            for part, shape in zip(parts, segments.shapes, strict=True)
        ]

    outs = [
        torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=True
        ).transpose(1, 2)  # (n_b, L_b, h, d)
        for q, k, v in zip(gather(query), gather(key), gather(value), strict=True)
    ]
    out = torch.cat([o.flatten(0, 1) for o in outs])  # (S, h, d)
    return out.index_select(0, segments.out)[None], None


@functools.cache
def _registered() -> bool:
    """Register the attention function with transformers once; False if it has no interface."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(NAME, segment_attention_forward)
    return True


def applies(model) -> bool:
    """Whether ``model`` can run packed rows through segment attention (else: the 4-D mask)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return False
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if (
        getattr(config, "use_sliding_window", False)
        or getattr(config, "layer_types", None)
        and any(kind != "full_attention" for kind in config.layer_types)
    ):
        return False
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return False
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    return _registered()


@contextlib.contextmanager
def segments_used(model):
    """Inside the block ``model``'s attention is segment attention; restored on exit."""
    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
