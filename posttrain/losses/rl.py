"""RLHF reward shaping, the adaptive KL coefficient (and its controller) and the value-function diagnostics of PPO."""

from __future__ import annotations

import torch

from posttrain.losses.common import masked_mean, masked_var
from posttrain.losses.kl import kl_estimate


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    kind: str = "k1",
    clip_zero: bool = False,
) -> torch.Tensor:
    """Per-token RLHF rewards: ``-beta * KL_t`` on every response token, plus the sequence score
    at the last response token.

    Ziegler et al. 2019, eq. 2 (``R(x, y) = r(x, y) - beta log(pi(y|x) / rho(y|x))``) spread over
    tokens as in Stiennon et al. 2020 and the AlpacaFarm PPO of the lecture notes
    (``_shape_reward``). ``KL_t`` is ``kl_estimate(logprobs, ref_logprobs, kind)``;
    ``clip_zero`` clamps it at 0 first (the notes' "clip KL where policy logp < reference logp",
    so tokens the reference likes more earn no bonus). A row with no response token gets nothing.

    Shapes: scores (B,), logprobs, ref_logprobs, mask (B, T) -> rewards (B, T), 0 off the mask.
    """
    m = mask != 0 if mask.dtype != torch.bool else mask
    kl = kl_estimate(logprobs, ref_logprobs, kind=kind)  # (B, T)
    if clip_zero:
        kl = kl.clamp(min=0)
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    rewards = torch.where(m, -kl_coef * kl, zero)  # (B, T)
    positions = torch.arange(m.size(-1), device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).max(-1).values  # (B,)
    has = last >= 0
    rows = torch.arange(m.size(0), device=m.device)[has]
    return rewards.index_put((rows, last[has]), scores[has].to(rewards.dtype), accumulate=True)


def adaptive_kl_coef(
    kl_coef: float, kl: float, *, target: float, horizon: int, n_steps: int
) -> float:
    """One update of the adaptive KL coefficient (Ziegler et al. 2019, Sec. 2.2):
    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``.

    ``kl`` is the measured KL per response of the batch just used; ``n_steps`` the number of
    samples in it (the paper's ``n_steps``), so the horizon is counted in samples.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


class KLController:
    """The KL coefficient beta of an online run: fixed (``target`` None) or adaptive
    (:func:`adaptive_kl_coef`, Ziegler et al. 2019); its state goes into checkpoints."""

    def __init__(self, value: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.target is not None:
            self.value = adaptive_kl_coef(
                self.value, kl, target=self.target, horizon=self.horizon, n_steps=n_steps
            )

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor):
    """``1 - Var[R - V] / Var[R]`` over masked-in tokens (unbiased variances; 1 = perfect value
    function, 0 = no better than a constant, < 0 = worse). 0 when ``Var[R]`` is 0.

    Shapes: values, returns, mask (B, T) -> scalar tensor.
    """
    var = masked_var(returns, mask)
    if float(var) == 0.0:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return 1 - masked_var(returns - values, mask) / var


def value_clipfrac(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
) -> torch.Tensor:
    """Share of masked-in tokens whose clipped value error is strictly larger than the unclipped
    one (those the clip of ``ppo_value_loss`` takes the gradient from), as in the notes' PPO
    (``vf_clipfrac = (vf_losses2 > vf_losses1).mean()``), over response tokens only. Detached.

    Shapes: values, old_values, returns, mask (B, T) -> scalar tensor.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    larger = (clipped - returns) ** 2 > (values - returns) ** 2
    return masked_mean(larger.to(values.dtype), mask).detach()
