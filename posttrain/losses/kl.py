"""Per-token estimators of KL(policy || ref) from samples of the policy."""

from __future__ import annotations

import torch

KL_KINDS = ("k1", "k2", "k3", "abs")


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, kind: str = "k1"
) -> torch.Tensor:
    """Estimate KL(p || q) per token from tokens sampled from p, with logp - logq.

    Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html):
      - ``"k1"``: ``logp - logq``, unbiased, high variance, can be negative;
      - ``"k2"``: ``0.5 * (logp - logq)^2``, biased, low variance, >= 0;
      - ``"k3"``: ``exp(logq - logp) - 1 - (logq - logp)``, unbiased, >= 0 (since e^x >= 1 + x);
      - ``"abs"``: ``|logp - logq|`` (extra, biased; a diagnostic used by some RLHF codebases).

    Shapes: logprobs (B, T) of the sampled tokens under the policy, ref_logprobs (B, T) under the
    reference -> (B, T). Mask and reduce with ``masked_mean``.
    """
    log_ratio = logprobs - ref_logprobs  # (B, T): logp - logq
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected one of {KL_KINDS}")


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(ref || policy) per position, summed over the vocabulary:
    ``sum_v q_v (log q_v - log p_v)`` with ``q = softmax(ref_logits)``, ``p = softmax(logits)``.

    The expected NLL of the reference's own tokens at a position is the reference's entropy plus
    this KL, so minimising it is the NLL of infinitely many reference samples there: it is zero
    at the reference exactly and cannot fall below by fitting particular tokens, as the NLL of a
    fixed set of samples can. Shapes: logits and ref_logits (..., V) -> (...). Mask and reduce
    with ``masked_sum`` / ``masked_mean``.
    """
    ref_logp = torch.log_softmax(ref_logits, dim=-1)
    logp = torch.log_softmax(logits, dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)
