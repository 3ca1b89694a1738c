"""Response log-probs without the (tokens x vocabulary) logits ever existing whole.

A causal LM's last step is ``logits = lm_head(hidden)`` over every position: on SmolLM2
(49,152 tokens) a batch of 64 x 80 tokens makes 1 GB of float32 logits, several times over once
log-softmax, entropy and their gradients are kept. Only the positions that predict a response
token are needed, and each one's log-prob needs only its own row of logits. So:

1. the model runs with its output layer fed an empty slice (:func:`lm_head_skipped`: a forward
   pre-hook that keeps the layer's input, the last hidden state, and passes on ``hidden[..., :0,
   :]``), so no logits are made;
2. :func:`chunked_token_logprobs` takes the hidden states at the response positions only and
   applies the output layer, log-softmax, the gather (and the entropy) ``chunk_size`` positions at
   a time. With gradients each chunk runs under activation checkpointing (non-reentrant), so the
   backward recomputes one chunk's logits at a time instead of keeping them all: peak memory is
   one chunk's (chunk_size x V) logits, forward or backward. When all the positions' logits
   together are small (at most ``KEEP_LOGITS_MAX`` numbers: a small vocabulary, or few response
   tokens) they are kept for the backward instead, which spares recomputing the output layer.

The numbers are those of the whole-logits computation (the same operations on the same rows;
``tests/unit/test_chunked_logprobs.py`` checks values and gradients to 1e-6 in float64).
Models whose output is not a plain ``lm_head(hidden)`` (final logit soft-capping, a logit scale)
and wrapped (DDP / FSDP) models are not eligible (:func:`can_chunk`): the caller computes whole
logits for them.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils.checkpoint import checkpoint

from posttrain.losses.common import entropy_from_logits
from posttrain.training.device import at_least_float32

DEFAULT_CHUNK_SIZE = 1024
"""Positions per chunk: 1024 x 49,152 float32 logits are 200 MB."""
KEEP_LOGITS_MAX = 1 << 22
"""With gradients, no checkpointing when the positions x vocabulary logits number at most this
(16 MB in float32; autograd keeps them and their log-softmax): the backward then reuses them
instead of running the output layer again: on a 4 x 256 llama with an 833-token vocabulary the
DPO forward + backward ran 1.04-1.05x faster (``benchmarks/bench_dpo.py keep-logits``); SmolLM2's
49,152-token vocabulary passes the limit from 86 positions on."""


def can_chunk(model) -> bool:
    """Whether ``model``'s logits are ``get_output_embeddings()(last hidden state)`` and nothing
    else (a transformers causal LM, possibly with peft adapters, not wrapped for DDP/FSDP)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return False
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        return False
    from posttrain.training.distributed import is_fsdp

    if is_fsdp(model):
        return False
    config = getattr(model, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1.0):
            return False
    return True


@contextlib.contextmanager
def lm_head_skipped(model):
    """Inside the block, a forward of ``model`` makes no logits (its output layer sees an empty
    slice of positions); yields ``(head, box)``: the output layer and a dict whose ``"hidden"``
    is the last forward's full input to it, (B, T, H)."""
    head = model.get_output_embeddings()
    box: dict[str, torch.Tensor] = {}

    def keep_input(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("input")
        box["hidden"] = hidden
        return (hidden[..., :0, :],) + tuple(args[1:]), kwargs

    handle = head.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        yield head, box
    finally:
        handle.remove()


def _chunk(head, hidden, labels, temperature: float, with_entropy: bool, entropy_grad: bool = True):
    """(C, H) hidden, (C,) labels -> log-probs (C,) [and entropies (C,)] in at least float32;
    without ``entropy_grad`` the entropy is a constant to autograd (no backward through it)."""
    logits = at_least_float32(head(hidden))
    if temperature != 1.0:
        logits = logits / temperature
    logps = -torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    if with_entropy:
        return logps, entropy_from_logits(logits if entropy_grad else logits.detach())
    return (logps,)


def chunked_logprobs(
    head: torch.nn.Module,
    rows: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rows (K, H) output-layer inputs, targets (K,) -> log p(target) (K,) [and entropy (K,)] in
    at least float32, ``chunk_size`` rows at a time (checkpointed when gradients are on and the
    logits of all K rows number more than ``KEEP_LOGITS_MAX``).
    ``entropy_grad=False``: the entropy is only reported (detached), which spares the backward
    a pass over each chunk's (chunk_size x V) softmax."""
    fn = functools.partial(
        _chunk,
        head,
        temperature=temperature,
        with_entropy=with_entropy,
        entropy_grad=entropy_grad,
    )
    grad = torch.is_grad_enabled() and (
        rows.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    # logits small enough to keep are kept: autograd records the chunks as they run
    checkpointed = grad and rows.size(0) * _vocab_size(head) > KEEP_LOGITS_MAX
    parts: list[tuple[torch.Tensor, ...]] = []
    for lo in range(0, rows.size(0), max(chunk_size, 1)):
        args = (rows[lo : lo + chunk_size], targets[lo : lo + chunk_size])
        if checkpointed:
            parts.append(checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(fn(*args))
    dtype = torch.promote_types(rows.dtype, torch.float32)
    out = [
        torch.cat([p[j] for p in parts]) if parts else rows.new_zeros(0, dtype=dtype)
        for j in range(2 if with_entropy else 1)
    ]
    return out[0], out[1] if with_entropy else None


def _vocab_size(head: torch.nn.Module) -> int:
    """Rows of the output layer's weight (a peft-wrapped layer exposes its base layer's)."""
    return int(head.weight.shape[0])


def chunked_token_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of ``labels`` at the positions where ``mask`` is set.

    hidden (B, T - 1, H): the output layer's inputs at the positions that predict ``labels``
    (B, T - 1); mask (B, T - 1). Returns ``(logps, entropy)``, each (B, T - 1) in at least
    float32, 0 where ``mask`` is 0 (entropy None unless ``with_entropy``); see
    :func:`chunked_logprobs`."""
    b, t = labels.shape
    idx = (mask.reshape(-1) != 0).nonzero().squeeze(-1)  # (K,) positions to score
    rows = hidden.reshape(b * t, -1).index_select(0, idx)  # (K, H)
    targets = labels.reshape(-1).index_select(0, idx)  # (K,)
    values = chunked_logprobs(
        head,
        rows,
        targets,
        temperature=temperature,
        with_entropy=with_entropy,
        entropy_grad=entropy_grad,
        chunk_size=chunk_size,
    )
    full = [
        v.new_zeros(b * t).index_put((idx,), v).view(b, t) if v is not None else None
        for v in values
    ]
    return full[0], full[1]
