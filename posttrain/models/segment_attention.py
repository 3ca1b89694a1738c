"""Attention over packed rows that computes only the blocks a token may see (segment attention).

A padding-free preference batch (``posttrain.data.collate.collate_shared_prefix``) packs several
groups into each row: a group's shared prefix once, then each member's remainder, which attends
to the prefix and to itself only. Run with the batch's 4-D mask, attention computes every
(row width)^2 score of every head, most of them masked, and every layer runs on the rows'
padding too. Here (``posttrain.models.logprobs.forward_packed_logprobs``) the rows' N tokens run
end to end as one row of N (no padding; ``position_ids`` still count from each sequence's
start), and attention computes only what each token may see: a group's first member queries
its whole sequence (its group's prefix, then its remainder), causally; the members after it query
only their remainder, over keys and values of the prefix then the remainder (query i of a member
whose prefix is p tokens sees keys 0..p + i: causal aligned to the bottom right), so every token
gets exactly one output and no prefix query is computed twice. The collate step gives each
sequence's tokens among the N (``segment_tokens``), its length, and which slot each token's
output comes from (``segment_out``: a prefix token takes its group's first member's); ``build``
reads from it which tokens a sequence queries (the last ones whose output it gives) and groups
the sequences into buckets (``buckets``: first members and later members apart, of similar
length, fewest queries x keys plus a fixed cost a bucket). In every layer the queries are
gathered into (sequences, heads, Lq_b, head_dim) and keys and values into (sequences, heads_kv,
Lk_b, head_dim) per bucket, and each bucket runs one attention call: a first members' bucket
``scaled_dot_product_attention(is_causal=True, enable_gqa=True)`` (no mask tensor: the fused
causal kernels; a sequence's padding comes after its tokens, so no real query sees it), a later
members' bucket SDPA with its bottom-right causal mask (built once per bucket in ``build``, made
additive once per dtype; SDPA's own ``causal_lower_right`` materialises a mask on CPU too, and
one shift for the whole bucket would not fit prefixes of different lengths). On CPU, buckets
of at most ``MATMUL_KEYS`` keys in bfloat16/float16 run as explicit matmuls and softmax
instead: the fused kernel's forward + backward there is 1.7-2.5x slower (89-180 keys).
Each token's output is read back. Embeddings, projections, MLP and norms run once per real
token; the remaining duplicated work is the prefix's keys and values gathered once per member.

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

Ordinary (padded) forwards on CPU take the same shortcut: ``load_model`` switches an eligible
model to ``posttrain_attention`` (:func:`attention_forward`, registered with transformers' SDPA
mask builder), which runs attention over at most ``MATMUL_KEYS`` keys in bfloat16/float16 on CPU
as explicit matmuls and softmax (SmolLM2, 8 rows x 83 tokens: a LoRA forward + backward 1.63 s
against 1.86 s with SDPA's fused kernel, 1.72 s with its math backend; 4 x 256: 2.33 vs 2.58 s;
4 x 512, beyond the limit: 6.43 vs 5.67 s) and everything else (other devices, float32, longer
rows, dropout, sliding windows) through transformers' SDPA attention unchanged. Its name is the
model's in memory only: ``save_pretrained`` writes the model's config without it.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch

NAME = "posttrain_segments"
ENABLED = True  # False: packed rows always take the 4-D mask path (benchmarks, tests)
MATMUL_ATTENTION = True  # False: ordinary forwards keep SDPA's attention (benchmarks' old path)
# model types whose attention is plain causal softmax attention over rotary q/k through
# transformers' AttentionInterface (checked further per config by ``applies``)
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


# a bucket's fixed cost (call overhead) in units of its scores per head (sequences x Lq x Lk)
BUCKET_COST = 64 * 64
# on CPU, buckets of at most this many keys in these dtypes run as explicit matmuls and softmax
# instead of SDPA's fused kernel, whose forward + backward in bfloat16 is 1.7-2.5x slower there
# (SmolLM2 heads, 89-180 keys; about equal at 246; float32: the fused kernel is faster)
MATMUL_KEYS = 256
MATMUL_DTYPES = frozenset({torch.bfloat16, torch.float16})


@dataclass(frozen=True)
class Segments:
    """Where each sequence's queries and keys are among the N tokens of the forward, bucketed:
    bucket b holds ``shapes[b] = (sequences, Lq_b, Lk_b)``, its sequences' queries and keys
    right-padded to its longest; ``masks[b]`` None (causal: each sequence's queries are its keys)
    or (sequences, 1, Lq_b, Lk_b), True where query i of a sequence whose queries start after
    ``p`` tokens of its keys may see key j <= i + p (causal, aligned to those p)."""

    q_index: torch.Tensor  # (S_q,) the token in each query slot of the buckets, bucket after bucket
    kv_index: torch.Tensor  # (S_k,) the token in each key slot
    shapes: tuple[tuple[int, int, int], ...]
    masks: tuple[torch.Tensor | None, ...]
    out: torch.Tensor  # (N,) the query slot whose attention output each token takes
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # masks per dtype

    def mask(self, b: int, dtype: torch.dtype, causal: bool = False) -> torch.Tensor | None:
        """Bucket ``b``'s mask as the additive float mask added to its scores, made once a dtype
        (a boolean one SDPA would convert in every layer); a causal bucket's None, or with
        ``causal`` its (Lq_b, Lk_b) causal mask."""
        mask = self.masks[b]
        if mask is None and not causal:
            return None
        if (b, dtype) not in self.cache:
            if mask is None:
                _, n_q, n_k = self.shapes[b]
                mask = torch.ones(n_q, n_k, dtype=torch.bool, device=self.q_index.device).tril()
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            low = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device)
            self.cache[b, dtype] = torch.where(mask, zero, low)
        return self.cache[b, dtype]


def buckets(lengths: list[int], starts: list[int] | None = None) -> list[list[int]]:
    """Sequence indices grouped into buckets of similar length (shortest first), minimising the
    computed scores plus ``BUCKET_COST`` a bucket. A sequence with ``starts[i] = 0`` queries all
    its ``lengths[i]`` tokens (a causal bucket), one with ``starts[i] = p > 0`` only its last
    ``lengths[i] - p`` (a masked bucket, only such sequences); a bucket costs size x longest
    queries x longest keys (CPU's fused causal kernel skips little below ~512 keys)."""
    starts = starts or [0] * len(lengths)
    groups = []
    for masked in (False, True):
        order = sorted(
            (i for i in range(len(lengths)) if (starts[i] > 0) == masked),
            key=lambda i: (lengths[i], lengths[i] - starts[i]),
        )
        keys = [lengths[i] for i in order]
        queries = [lengths[i] - starts[i] for i in order]
        best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
        for end in range(1, len(order) + 1):  # best[end]: the first `end` sequences of `order`
            most = 0
            for start in range(end - 1, -1, -1):
                most = max(most, queries[start])  # the bucket's longest queries
                cost = best[start] + (end - start) * keys[end - 1] * most + BUCKET_COST
                if cost <= best[end]:  # a tie: the larger bucket
                    best[end], cut[end] = cost, start
        part, end = [], len(order)
        while end > 0:
            part.append(order[cut[end] : end])
            end = cut[end]
        groups += part[::-1]
    return groups


def build(batch: dict[str, torch.Tensor]) -> Segments:
    """The ``Segments`` of a ``collate_shared_prefix`` batch (its ``segment_*`` entries).

    A sequence whose first ``p`` tokens are a prefix whose outputs another sequence gives (a
    group's members after the first) queries only its other tokens, over all its keys."""
    tokens, out = batch["segment_tokens"], batch["segment_out"]
    device, width = tokens.device, tokens.shape[1]
    lengths = batch["segment_lengths"].tolist()
    # each sequence's tokens whose output it gives: its last `own` ones
    own = torch.bincount(out // width, minlength=len(lengths)).tolist()
    starts = [n - o for n, o in zip(lengths, own, strict=True)]
    q_index, kv_index, shapes, masks = [], [], [], []
    slot = torch.zeros(tokens.shape[0], dtype=torch.long, device=device)  # query 0's slot - start
    offset = 0
    for group in buckets(lengths, starts):
        n_k = max(lengths[i] for i in group)
        rows = torch.tensor(group, device=device)
        keys = tokens.index_select(0, rows)[:, :n_k]
        kv_index.append(keys.flatten())
        start = torch.tensor([starts[i] for i in group], device=device)
        n_q = max(lengths[i] - starts[i] for i in group)
        if starts[group[0]] == 0:  # queries = keys, causal
            q_index.append(keys.flatten())
            masks.append(None)
        else:
            at = (start[:, None] + torch.arange(n_q, device=device)).clamp(max=width - 1)
            q_index.append(tokens.index_select(0, rows).gather(1, at).flatten())
            i, j = torch.arange(n_q, device=device), torch.arange(n_k, device=device)
            masks.append((j <= i[:, None] + start[:, None, None])[:, None])
        slot[rows] = offset + torch.arange(len(group), device=device) * n_q - start
        shapes.append((len(group), n_q, n_k))
        offset += len(group) * n_q
    return Segments(
        torch.cat(q_index),
        torch.cat(kv_index),
        tuple(shapes),
        tuple(masks),
        slot[out // width] + out % width,
    )


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

    def gather(x: torch.Tensor, index: torch.Tensor, at: int) -> list[torch.Tensor]:
        """(1, h, N, d) -> [(n_b, h, L_b, d)], L_b = shapes[b][at]"""
        sizes = [shape[0] * shape[at] for shape in segments.shapes]
        parts = x[0].index_select(1, index).split(sizes, dim=1)
        return [
            part.unflatten(1, (shape[0], shape[at])).transpose(0, 1)
            for part, shape in zip(parts, segments.shapes, strict=True)
        ]

    queries = gather(query, segments.q_index, 1)
    keys, values = gather(key, segments.kv_index, 2), gather(value, segments.kv_index, 2)
    outs = []
    for b, (q, k, v) in enumerate(zip(queries, keys, values, strict=True)):
        if _matmul_short(q, k):
            o = _matmul_attention(q, k, v, segments.mask(b, q.dtype, causal=True), scaling)
        else:
            mask = segments.mask(b, q.dtype)
            o = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, mask, dropout, is_causal=mask is None, scale=scaling, enable_gqa=True
            )
        outs.append(o.transpose(1, 2))  # (n_b, Lq_b, h, d)
    out = torch.cat([o.flatten(0, 1) for o in outs])  # (S_q, h, d)
    return out.index_select(0, segments.out)[None], None


ATTENTION = "posttrain_attention"
"""The attention implementation of an ordinary forward (:func:`attention_forward`)."""


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (B, h, Lq, d) query, (B, h_kv, Lk, d) key and value with
    SDPA's mask (boolean or additive (B, 1, Lq, Lk), or None: causal, aligned to the last key) ->
    (B, Lq, h, d). Explicit matmuls where they are faster (``_matmul_short``), else SDPA's."""
    if (
        _matmul_short(query, key)
        and dropout == 0.0
        and not any(
            kwargs.get(name) is not None
            for name in ("sliding_window", "softcap", "s_aux", "position_bias")
        )
    ):
        n_q, n_k = query.shape[2], key.shape[2]
        if attention_mask is None:  # no padding: causal (or one query, which sees every key)
            causal = getattr(module, "is_causal", True) and n_q > 1
            ones = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device)
            attention_mask = ones.tril(diagonal=n_k - n_q) if causal else ones
        mask = attention_mask[..., :n_k]
        if mask.dtype == torch.bool:
            low = torch.tensor(torch.finfo(query.dtype).min, dtype=query.dtype, device=mask.device)
            mask = torch.where(mask, torch.zeros((), dtype=query.dtype, device=mask.device), low)
        out = _matmul_attention(query, key, value, mask.to(query.dtype), scaling)
        return out.transpose(1, 2).contiguous(), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _matmul_short(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Explicit matmuls beat SDPA's fused kernel here: CPU, half precision, few keys."""
    return q.dtype in MATMUL_DTYPES and q.device.type == "cpu" and k.shape[2] <= MATMUL_KEYS


def _matmul_attention(q, k, v, mask, scaling):
    """softmax(q k^T scaling + mask) v: (n, h, Lq, d) queries over
    (n, h_kv, Lk, d) keys and values, each key and value head shared by h / h_kv query heads."""
    n, h, n_q, d = q.shape
    groups = h // k.shape[1]
    q = q.unflatten(1, (k.shape[1], groups)).flatten(2, 3)  # (n, h_kv, groups x Lq, d)
    scores = (q @ k.transpose(-1, -2)).unflatten(2, (groups, n_q))  # (n, h_kv, g, Lq, Lk)
    scale = d**-0.5 if scaling is None else scaling
    mask = mask[:, :, None] if mask.dim() == 4 else mask  # (n, 1, 1, Lq, Lk) or (Lq, Lk)
    # softmax in the scores' dtype: its output is all the backward keeps of the scores (2 bytes
    # a score in bfloat16, not 6 with a float32 softmax then a cast: peak RSS 3.56 vs 4.10 GB,
    # 3.26 GB fused, SmolLM2 4 x 449); on CPU within one bfloat16 ulp of the float32 one
    weights = torch.softmax(scores * scale + mask, dim=-1)
    return (weights.flatten(2, 3) @ v).view(n, h, n_q, d)


@functools.cache
def _registered() -> bool:
    """Register the attention function with transformers once; False if it has no interface."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention_forward)
    AttentionInterface.register(ATTENTION, attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # padded rows get SDPA's masks
    return True


def applies(model) -> bool:
    """Whether ``model`` can run packed rows through segment attention (else: the 4-D mask)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return False
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", ATTENTION):
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


def use_attention(model):
    """Switch ``model`` to :func:`attention_forward` when it uses SDPA and segment attention
    ``applies`` to it (the same plain causal attention); returns ``model``."""
    config = getattr(model, "config", None)
    if (
        MATMUL_ATTENTION
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and applies(model)
    ):
        model.set_attn_implementation(ATTENTION)
    return model


@contextlib.contextmanager
def segments_used(model):
    """Inside the block ``model``'s attention is segment attention; restored on exit."""
    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
