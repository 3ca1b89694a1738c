"""Preference pairs as token ids, and the one concatenated batch of chosen and rejected.

Chosen and rejected share the prompt, encoded as by :func:`posttrain.data.encode_example` (chat
template, EOS) and truncated together: both keep the same end of the prompt. ``collate_pairs``
puts them in ONE batch — 2B padded rows, chosen first, or padding-free rows holding each prompt
once — so a single forward serves both halves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from posttrain.data.chat import (
    Encoded,
    encode_prompt,
    encode_response,
    join_truncated,
    prompt_kept,
)
from posttrain.data.collate import collate, collate_shared_prefix
from posttrain.data.formats import Example, strength


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    margin: float | None = None
    p_chosen: float = 1.0  # P(chosen preferred): the soft label of the pair (1 = certain)

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def encode_pair(tokenizer, example: Example, max_length: int) -> EncodedPair:
    """Chosen and rejected after the same prompt: when either is too long, both keep the same
    end of the prompt (as much as the longer response leaves room for), so the two log-probs are
    conditioned on the same context (and the prompt is computed once in padding-free batches)."""
    prompt = encode_prompt(tokenizer, example.prompt)
    chosen = encode_response(tokenizer, example.chosen)
    rejected = encode_response(tokenizer, example.rejected)
    keep = min(prompt_kept(len(prompt), len(r), max_length) for r in (chosen, rejected))
    return EncodedPair(
        join_truncated(prompt, chosen, max_length, keep),
        join_truncated(prompt, rejected, max_length, keep),
        example.margin,
        strength(example),
    )


def encode_pairs(
    tokenizer, examples: Sequence[Example], max_length: int
) -> tuple[list[EncodedPair], int]:
    """Encode preference examples; returns the pairs and how many were truncated."""
    pairs = [encode_pair(tokenizer, ex, max_length) for ex in examples]
    return pairs, sum(p.truncated for p in pairs)


def collate_pairs(
    pairs: Sequence[EncodedPair], pad_id: int, *, side: str = "right", padding_free: bool = False
) -> dict[str, torch.Tensor]:
    """(2B, T) ``input_ids`` / ``attention_mask`` / ``response_mask``: chosen rows, then rejected.

    Also ``margin`` (B,) (0 where absent) and ``p_chosen`` (B,) (float64 soft labels, 1 where the
    data gave no strength). Split model outputs with ``x[:B], x[B:]``.

    ``padding_free``: instead each pair's prompt (the common prefix of chosen and rejected, but
    its last token, which each response repeats) once, followed by both, pairs packed into as few
    rows as fit the longest (``posttrain.data.collate.collate_shared_prefix``; sequence i is the chosen of pair i for
    i < B, the rejected of pair i - B after); read with ``models.forward_packed_logprobs``.
    """
    if padding_free:
        batch = collate_shared_prefix([(p.chosen, p.rejected) for p in pairs], pad_id)
    else:
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, side=side)
    batch["margin"] = torch.tensor([p.margin or 0.0 for p in pairs])
    batch["p_chosen"] = torch.tensor([p.p_chosen for p in pairs], dtype=torch.float64)
    return batch
