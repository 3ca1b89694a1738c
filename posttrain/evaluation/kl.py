"""KL(policy || reference) on the policy's own samples, with standard errors.

For responses ``y ~ pi(. | x)`` sampled from the policy at temperature 1, the sequence KL
``KL(pi(.|x) || pi_ref(.|x)) = E_y[sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]`` is
estimated per sequence by summing a per-token estimator over the response tokens (EOS included):

- k1: ``sum_t (log p_t - log q_t)`` — unbiased, high variance, can be negative;
- k3: ``sum_t (q_t / p_t - 1 - log(q_t / p_t))`` — unbiased too (each term's expectation over
  ``y_t ~ p`` given the prefix is that position's KL, so the sum is unbiased for the sequence KL by
  the tower rule), and never negative (Schulman 2020, "Approximating KL Divergence").

The mean over sequences is reported with its standard error ``std / sqrt(N)`` (ddof 1). The
per-token estimators are :func:`posttrain.losses.kl_estimate`; the log-probs are
:func:`posttrain.models.forward_logprobs` — nothing here re-implements either.

Samples must come from the policy itself at temperature 1 without top-k / top-p truncation;
otherwise both estimators are biased (they estimate a different expectation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from posttrain.losses import kl_estimate
from posttrain.models import forward_logprobs


@dataclass
class KLResult:
    k1: float  # mean sequence KL, k1 estimator (nats)
    k1_se: float
    k3: float  # mean sequence KL, k3 estimator (nats)
    k3_se: float
    n: int  # sequences
    entropy: float  # policy's mean per-token entropy on its own samples (nats / token)
    per_sequence_k1: list[float]
    per_sequence_k3: list[float]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std with ddof 1, over sqrt(N)); SE is 0 for N < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


@torch.no_grad()
def sequence_kl(
    policy, reference, input_ids, attention_mask, response_mask
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence k1 and k3 sums, summed policy entropy and response lengths, each (B,).

    input_ids, attention_mask, response_mask: (B, T), e.g. a :class:`posttrain.rollout.Rollout`.
    """
    pol = forward_logprobs(policy, input_ids, attention_mask, response_mask, with_entropy=True)
    ref = forward_logprobs(reference, input_ids, attention_mask, response_mask)
    mask = pol.mask  # (B, T-1)
    k1 = (kl_estimate(pol.logps, ref.logps, kind="k1") * mask).sum(-1)  # (B,)
    k3 = (kl_estimate(pol.logps, ref.logps, kind="k3") * mask).sum(-1)  # (B,)
    return k1, k3, pol.entropy.sum(-1), mask.sum(-1)


def kl_on_samples(
    policy, reference, input_ids, attention_mask, response_mask, *, batch_size: int = 32
) -> KLResult:
    """KL(policy || reference) from sequences sampled from ``policy``; tensors (N, T)."""
    was = (policy.training, reference.training)
    policy.eval()
    reference.eval()
    k1s: list[float] = []
    k3s: list[float] = []
    ent_sum, tok_sum = 0.0, 0.0
    for i in range(0, input_ids.size(0), batch_size):
        sl = slice(i, i + batch_size)
        k1, k3, ent, n_tok = sequence_kl(
            policy, reference, input_ids[sl], attention_mask[sl], response_mask[sl]
        )
        k1s += k1.tolist()
        k3s += k3.tolist()
        ent_sum += float(ent.sum())
        tok_sum += float(n_tok.sum())
    policy.train(was[0])
    reference.train(was[1])
    k1_mean, k1_se = mean_and_se(k1s)
    k3_mean, k3_se = mean_and_se(k3s)
    return KLResult(
        k1=k1_mean,
        k1_se=k1_se,
        k3=k3_mean,
        k3_se=k3_se,
        n=len(k1s),
        entropy=ent_sum / max(tok_sum, 1.0),
        per_sequence_k1=k1s,
        per_sequence_k3=k3s,
    )
