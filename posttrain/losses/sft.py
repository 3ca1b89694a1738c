"""Likelihood objectives on token log-probabilities: SFT and the unlikelihood baseline."""

from __future__ import annotations

import torch

from posttrain.losses.common import log1mexp, masked_mean, masked_sum

SFT_NORMALIZE = ("tokens", "sequences", "sum")
UNLIKELIHOOD_MAX_LOGP = -1e-6  # log-probs are clamped here so log(1 - p) stays finite


def sft_loss(
    token_logps: torch.Tensor, mask: torch.Tensor, *, normalize: str = "tokens"
) -> torch.Tensor:
    """Negative log-likelihood of the masked-in (response) tokens.

    normalize:
      - ``"tokens"``: mean over every masked-in token of the batch, ``-sum(mask * lp) / sum(mask)``
        (the usual cross-entropy; long responses weigh more);
      - ``"sequences"``: mean over sequences of each sequence's mean token NLL;
      - ``"sum"``: the summed NLL of the masked-in tokens, ``-sum(mask * lp)``, for a caller that
        divides by a count of its own (a micro-batch of a larger batch divides by the whole
        batch's tokens, so micro-batches add up to the ``"tokens"`` mean of the batch).

    Shapes: token_logps (B, T) log pi(y_t | ...) of the target tokens, mask (B, T) -> scalar.
    """
    if normalize == "tokens":
        return -masked_mean(token_logps, mask)
    if normalize == "sequences":
        return -masked_mean(token_logps, mask, dim=-1).mean()
    if normalize == "sum":
        return -masked_sum(token_logps, mask)
    raise ValueError(f"unknown normalize {normalize!r}; expected one of {SFT_NORMALIZE}")


def unlikelihood_loss(
    chosen_token_logps: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    alpha: float,
) -> torch.Tensor:
    """Likelihood on the chosen response plus unlikelihood on the rejected one.

    Welleck et al. 2019, eqs. 4-5 (token-level unlikelihood, ``-log(1 - p)`` on negative tokens),
    applied with the rejected response's tokens as the negatives:

        mean_t(-log p(y_w,t)) + alpha * mean_t(-log(1 - p(y_l,t)))

    each a per-sequence mean over its masked-in tokens. ``log(1 - p)`` is computed as
    ``log1mexp(min(lp, -1e-6))`` so a token with p = 1 gives a large finite loss, not inf
    (deviation: the clamp).

    Shapes: token log-probs (B, T_w) / (B, T_l), masks the same -> losses (B,).
    """
    nll = -masked_mean(chosen_token_logps, chosen_mask, dim=-1)  # (B,)
    clamped = torch.clamp(rejected_token_logps, max=UNLIKELIHOOD_MAX_LOGP)
    unlikely = -masked_mean(log1mexp(clamped), rejected_mask, dim=-1)  # (B,)
    return nll + alpha * unlikely
