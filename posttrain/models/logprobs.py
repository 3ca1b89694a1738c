"""Per-token log-probabilities of response tokens: the one implementation every recipe uses.

Convention (all recipes, the rollout engine and the losses): for a batch of sequences
``input_ids`` (B, T) the model's logits at position t predict token t + 1, so the outputs are
(B, T - 1): entry ``[:, t]`` is log p(input_ids[:, t + 1] | input_ids[:, :t + 1]), and the
matching mask is ``response_mask[:, 1:]``. Position ids are derived from the attention mask, so
left- and right-padded batches give the same numbers. Packed rows (several sequences per row, a
shared prompt once) go through ``forward_packed_logprobs``, which gives the same layout.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from posttrain.losses.common import entropy_from_logits
from posttrain.models import chunked, segment_attention
from posttrain.training.device import at_least_float32, module_device, to_device

SHARE_PREFIX = True
"""False: ``forward_logprobs(share_prefix=True)`` computes the padded batch anyway (benchmarks)."""
SHARE_PREFIX_MIN_SAVING = 0.1
"""Share prefixes only when that leaves out at least this fraction of a batch's tokens."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting only attended tokens (0 for leading padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def gather_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature) at ``labels``: (B, T, V), (B, T) -> (B, T).

    Computed through ``cross_entropy`` (fused log-softmax + gather, one-pass backward).
    """
    if temperature != 1.0:
        logits = logits / temperature
    # cross_entropy fuses log-softmax and the gather; its backward is one pass (softmax - onehot)
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, -2), labels.flatten(), reduction="none"
    )
    return -nll.view(labels.shape)


@dataclass
class TokenLogprobs:
    logps: torch.Tensor  # (B, T-1), zero where mask is 0
    mask: torch.Tensor  # (B, T-1), response tokens
    entropy: torch.Tensor | None = None  # (B, T-1)
    hidden: torch.Tensor | None = None  # (B, T, H) last hidden state, for value/reward heads

    def sum(self) -> torch.Tensor:
        """Summed sequence log-prob of the response, (B,)."""
        return self.logps.sum(-1)

    def lengths(self) -> torch.Tensor:
        """Response lengths in tokens, (B,)."""
        return self.mask.sum(-1)


def forward_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    with_hidden: bool = False,
    position_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
    share_prefix: bool = False,
) -> TokenLogprobs:
    """Run ``model`` on (B, T) ids and return log-probs of the response tokens (see module doc).

    ``attention_mask`` may be 2-D (B, T) padding mask, or 4-D for packed rows (then pass
    ``position_ids``). The output layer runs only at response positions, ``chunk_size`` of them
    at a time (default ``posttrain.models.chunked.DEFAULT_CHUNK_SIZE``; 0: every position's
    logits at once), so the (B, T, V) logits never exist whole; models that are not eligible
    (``chunked.can_chunk``) get whole logits. ``hidden`` is the output layer's input either way.
    ``entropy_grad=False`` detaches the entropy (a reported statistic, not a loss term: the
    backward then skips it). Inputs elsewhere than the model are moved to its device; the outputs
    are on the model's device.

    ``share_prefix``: rows that repeat a prompt (an online batch's K samples of each) run it once
    (:func:`forward_shared_prefix`), when that saves tokens and the model is eligible; the
    outputs are the same, to float rounding, in the same (B, T - 1) / (B, T, H) layout.
    """
    if share_prefix and position_ids is None and attention_mask.dim() == 2 and chunk_size is None:
        out = forward_shared_prefix(
            model,
            input_ids,
            attention_mask,
            response_mask,
            temperature=temperature,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
            with_hidden=with_hidden,
        )
        if out is not None:
            return out
    input_ids, attention_mask, response_mask, position_ids = to_device(
        (input_ids, attention_mask, response_mask, position_ids), module_device(model)
    )
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    if chunk_size is None:
        chunk_size = chunked.DEFAULT_CHUNK_SIZE
    if chunk_size > 0 and chunked.can_chunk(model):  # response positions only, in chunks
        with chunked.lm_head_skipped(model) as (head, box):
            model(
                input_ids=input_ids,
                attention_mask=additive_mask(model, attention_mask),
                position_ids=position_ids,
                use_cache=False,
            )
        hidden = box["hidden"]  # (B, T, H): the output layer's input, the last hidden state
        logps, entropy = chunked.chunked_token_logprobs(
            head,
            hidden[:, :-1],
            input_ids[:, 1:],
            response_mask[:, 1:],
            temperature=temperature,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
            chunk_size=chunk_size,
        )
        mask = response_mask[:, 1:].to(logps.dtype)
        return TokenLogprobs(logps, mask, entropy, hidden if with_hidden else None)
    out = model(
        input_ids=input_ids,
        attention_mask=additive_mask(model, attention_mask),
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=with_hidden,
    )
    logits = at_least_float32(out.logits[:, :-1])  # (B, T-1, V)
    mask = response_mask[:, 1:].to(logits.dtype)
    logps = gather_logprobs(logits, input_ids[:, 1:], temperature) * mask
    if with_entropy:  # of the distribution sampled from: softmax(logits / temperature)
        scaled = logits / temperature if temperature != 1.0 else logits
        entropy = entropy_from_logits(scaled if entropy_grad else scaled.detach()) * mask
    else:
        entropy = None
    hidden = out.hidden_states[-1] if with_hidden else None
    return TokenLogprobs(logps=logps, mask=mask, entropy=entropy, hidden=hidden)


def forward_shared_prefix(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    **kwargs,
) -> TokenLogprobs | None:
    """:func:`forward_logprobs` of a padded (B, T) batch of prompt-then-response rows with each
    distinct prompt computed once: the rows go through ``collate_shared_prefix`` (rows sharing a
    prompt are one group, its members the rows' responses; no padding) and
    :func:`forward_packed_logprobs` (segment attention), and the outputs are laid back out as the
    padded batch's. None (the caller computes it padded) when that would not leave out at least
    ``SHARE_PREFIX_MIN_SAVING`` of the B x T tokens, when a row is not one run of prompt then response, or when
    the model is not eligible (``chunked.can_chunk`` and ``segment_attention.applies``) or
    ``SHARE_PREFIX`` is off. ``kwargs``: temperature, with_entropy, entropy_grad, with_hidden."""
    from posttrain.data.collate import collate_shared_prefix, rows_as_groups

    if not (
        SHARE_PREFIX
        and chunked.DEFAULT_CHUNK_SIZE > 0
        and chunked.can_chunk(model)
        and segment_attention.ENABLED
        and segment_attention.applies(model)
    ):
        return None
    layout = rows_as_groups(input_ids, attention_mask, response_mask)
    if layout is None:
        return None
    groups, numbers, left = layout
    tokens = sum(  # the prompt once, then each row's response
        g[0].response_start + sum(len(m.input_ids) - m.response_start for m in g) for g in groups
    )
    b, t = input_ids.shape
    if tokens > (1.0 - SHARE_PREFIX_MIN_SAVING) * b * t:
        return None
    batch = collate_shared_prefix(groups, pad_id=0, numbers=numbers)
    out = forward_packed_logprobs(model, batch, **kwargs)  # (B, L - 1) and (B, L, H), per row
    # padded position p of row r is its sequence's position p - left[r] (else: 0)
    device = out.logps.device
    shift = torch.arange(t, device=device) - torch.tensor(left, device=device)[:, None]  # (B, T)

    def padded(x: torch.Tensor | None, width: int) -> torch.Tensor | None:
        if x is None:
            return None
        col = shift[:, :width]
        col = torch.where((col >= 0) & (col < x.shape[1]), col, x.shape[1])  # x.shape[1]: a 0
        x = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], dim=1)
        if x.dim() == 3:
            return x.gather(1, col[..., None].expand(-1, -1, x.shape[2]))
        return x.gather(1, col)

    mask = response_mask[:, 1:].to(device=device, dtype=out.logps.dtype)
    return TokenLogprobs(
        logps=padded(out.logps, t - 1),
        mask=mask,
        entropy=padded(out.entropy, t - 1),
        hidden=padded(out.hidden, t),
    )


@dataclass
class PairLogps:
    """Summed response log-probs and lengths of a (2B, T) pair batch, split into halves."""

    chosen: torch.Tensor  # (B,)
    rejected: torch.Tensor  # (B,)
    chosen_lengths: torch.Tensor  # (B,)
    rejected_lengths: torch.Tensor  # (B,)
    chosen_tokens: torch.Tensor  # (B, T-1) per-token log-probs (0 off the response)
    rejected_tokens: torch.Tensor
    chosen_mask: torch.Tensor  # (B, T-1)
    rejected_mask: torch.Tensor


def pair_logps(model, batch: dict[str, torch.Tensor]) -> PairLogps:
    """Log-probs of a preference batch (``posttrain.data.preference.collate_pairs``) in one
    forward over chosen and rejected together: padded rows (chosen rows, then rejected), or
    padding-free rows holding each prompt once (``forward_packed_logprobs``)."""
    if "label_from" in batch:
        out = forward_packed_logprobs(model, batch)
    else:
        out = forward_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
    b = batch["margin"].shape[0]
    sums, lengths = out.sum(), out.lengths()
    return PairLogps(
        sums[:b],
        sums[b:],
        lengths[:b],
        lengths[b:],
        out.logps[:b],
        out.logps[b:],
        out.mask[:b],
        out.mask[b:],
    )


def forward_packed_logprobs(
    model,
    batch: dict[str, torch.Tensor],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    with_hidden: bool = False,
) -> TokenLogprobs:
    """Response log-probs of the sequences packed in ``batch`` (see
    ``posttrain.data.collate.collate_shared_prefix``), one row per sequence as a right-padded batch
    of them would give: (n, L - 1), zero off the response; ``with_entropy`` / ``with_hidden``
    (eligible models only, see below) as :func:`forward_logprobs` gives them, the hidden states
    (n, L, H) (each sequence's own, a shared prefix's copied to every member; 0 after its end).

    Logits are computed only at the positions that predict a response token (the vocabulary
    projection of the prompt and the padding is skipped), through transformers' boolean
    ``logits_to_keep``, which returns them in row-major order: as ``label_from`` is strictly
    increasing (one label per position), they are already in label order. With a transformers too
    old for it, logits come at every position. Eligible models (``chunked.can_chunk``) skip the
    model's own output layer and compute those positions' log-probs in chunks instead."""
    batch = to_device(batch, module_device(model))
    label_from = batch["label_from"]
    assert bool((label_from[1:] > label_from[:-1]).all()), "label_from must be strictly increasing"
    inputs, attention, flat_index = packed_inputs(model, batch)
    label_from = flat_index(label_from)
    tokens = batch.get("segment_tokens")  # (n, L) each sequence's tokens among the rows'
    if tokens is not None:
        tokens = flat_index(batch["token_index"][tokens])
    if chunked.DEFAULT_CHUNK_SIZE > 0 and chunked.can_chunk(model):  # output layer in chunks
        with chunked.lm_head_skipped(model) as (head, box), attention:
            model(**inputs)
        flat = box["hidden"].flatten(0, 1)  # (tokens, H)
        values, entropy = chunked.chunked_logprobs(
            head,
            flat.index_select(0, label_from),  # (K, H)
            batch["label_ids"],
            temperature=temperature,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
            chunk_size=chunked.DEFAULT_CHUNK_SIZE,
        )
        mask = batch["label_mask"].to(values.dtype)
        logps, entropy = (
            v.new_zeros(mask.numel()).index_put((batch["label_to"],), v).view(mask.shape)
            if v is not None
            else None
            for v in (values, entropy)
        )
        hidden = None
        if with_hidden:
            n, width = tokens.shape
            inside = torch.arange(width, device=tokens.device) < batch["segment_lengths"][:, None]
            hidden = flat.index_select(0, tokens.flatten()).view(n, width, -1)
            hidden = hidden * inside[..., None].to(hidden.dtype)
        return TokenLogprobs(logps=logps, mask=mask, entropy=entropy, hidden=hidden)
    if with_entropy or with_hidden or temperature != 1.0:
        raise ValueError("entropy, hidden states and temperature need a chunk-eligible model")
    if _keeps_by_mask():
        ids = inputs["input_ids"]
        keep = torch.zeros(ids.numel(), dtype=torch.bool, device=ids.device)
        keep[label_from] = True
        inputs["logits_to_keep"] = keep.view(ids.shape)
    with attention:
        out = model(**inputs)
    if out.logits.dim() == 2:  # (K, V): the kept positions, in label order
        logits = out.logits
    else:
        logits = out.logits.flatten(0, 1)[label_from]
    logits = at_least_float32(logits)
    values = gather_logprobs(logits, batch["label_ids"])
    mask = batch["label_mask"].to(values.dtype)
    logps = values.new_zeros(mask.numel()).index_put((batch["label_to"],), values)
    return TokenLogprobs(logps=logps.view(mask.shape), mask=mask)


def packed_inputs(model, batch: dict[str, torch.Tensor]):
    """How ``model`` runs a ``collate_shared_prefix`` batch (on the model's device):
    ``(inputs, attention, flat_index)``, to be called as ``with attention: model(**inputs)``;
    ``flat_index`` maps flat indices in the (R, T) rows to the positions of the output's
    flattened hidden states. With segment attention (eligible models, when the batch has
    ``segment_tokens``) the rows' tokens run end to end as one row, attention only within each
    sequence; else the rows run with their 4-D mask."""
    ids, positions = batch["input_ids"], batch["position_ids"]
    if "segment_tokens" in batch and segment_attention.ENABLED and segment_attention.applies(model):
        token_index = batch["token_index"]  # (N,) the real tokens' flat indices, increasing
        inputs = {
            "input_ids": ids.flatten().index_select(0, token_index)[None],
            "position_ids": positions.flatten().index_select(0, token_index)[None],
            "segments": segment_attention.build(batch),
            "use_cache": False,
        }
        return (
            inputs,
            segment_attention.segments_used(model),
            lambda flat: torch.searchsorted(token_index, flat),  # its place among the tokens
        )
    inputs = {
        "input_ids": ids,
        "position_ids": positions,
        "attention_mask": additive_mask(model, batch["attention_mask"]),
        "use_cache": False,
    }
    return inputs, contextlib.nullcontext(), lambda flat: flat


def additive_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """A 4-D boolean attention mask (True = attend) as the additive float mask attention adds
    to its scores (0 or the dtype's lowest value), in the dtype attention computes in; other masks
    unchanged. Given a boolean mask, SDPA converts it to such a float tensor in every layer and
    keeps each copy for the backward (L x rows x T x T values); this one is shared."""
    if mask.dim() != 4 or mask.dtype != torch.bool:
        return mask
    device = mask.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, torch.finfo(dtype).min
    )


@functools.cache
def _keeps_by_mask() -> bool:
    """transformers >= 5 slices hidden states by a boolean (B, T) ``logits_to_keep``."""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")
