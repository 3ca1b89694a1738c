"""Advantage estimators: GAE for PPO, leave-one-out (RLOO) and group-normalised (GRPO) baselines."""

from __future__ import annotations

import torch

GRPO_STD_EPS = 1e-4  # added to the group std before dividing


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked-in (response) tokens.

    Schulman et al. 2016, Sec. 3, eq. 16: ``delta_t = r_t + gamma V_{t+1} - V_t`` and
    ``A_t = sum_l (gamma lam)^l delta_{t+l}``, computed backwards as
    ``A_t = delta_t + gamma lam A_{t+1}``.

    The episode is the contiguous run of masked-in tokens (it may start after left prompt
    positions and be followed by right padding). Nothing flows past its last token: the value
    after the last masked-in token is 0 and the recursion stops there, so rewards and values at
    masked-out positions never matter (they may even be nan). Masked-out positions get advantage
    0 and return 0. A masked-out position inside a row would also end the bootstrap (an episode
    boundary); the contract asks for contiguous masks.

    Returns ``advantages`` (not whitened; see ``masked_whiten``) and
    ``returns = advantages + values`` on masked-in positions (the value-function targets).
    Callers pass detached rewards and values.

    Shapes: rewards (B, T) per-token rewards, values (B, T), mask (B, T) ->
        (advantages (B, T), returns (B, T)).
    """
    m = mask != 0 if mask.dtype != torch.bool else mask  # (B, T)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(m, values, zero)
    T = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[..., 0])  # (B,) A_{t+1}
    for t in reversed(range(T)):
        # V_{t+1}: 0 past the last masked-in token (values were zeroed off the mask) and at the end.
        next_value = values[..., t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        # A_{t+1} is 0 past the last masked-in token (set there on the previous step), so the
        # recursion restarts at each row's last masked-in token.
        last = torch.where(m[..., t], delta + gamma * lam * last, zero)
        advantages[..., t] = last
    returns = torch.where(m, advantages + values, zero)
    return advantages, returns


def _check_group(rewards: torch.Tensor) -> None:
    if rewards.dim() < 1 or rewards.shape[-1] < 2:
        raise ValueError(
            f"need K >= 2 samples per prompt in the last dimension, got shape {tuple(rewards.shape)}"
        )


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: ``r_i - mean_{j != i} r_j``.

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free!"); Ahmadian et
    al. 2024 ("Back to Basics", the RLOO estimator). Computed as ``r_i - (sum_j r_j - r_i) / (K - 1)``.

    Shapes: rewards (B, K), K >= 2 samples per prompt -> advantages (B, K).
    """
    _check_group(rewards)
    k = rewards.shape[-1]
    baseline = (rewards.sum(dim=-1, keepdim=True) - rewards) / (k - 1)  # (B, K)
    return rewards - baseline


def grpo_advantages(rewards: torch.Tensor, *, scale: bool = True) -> torch.Tensor:
    """GRPO outcome advantages: ``(r_i - mean(r)) / (std(r) + 1e-4)``.

    Shao et al. 2024 (DeepSeekMath), Sec. 4.1.2, outcome supervision. The std is the group's
    sample std (correction = 1). Deviations: the 1e-4 added to the std (avoids division by zero
    for a group with equal rewards, whose advantages are then 0); ``scale=False`` skips the
    division (Liu et al. 2025, "Dr. GRPO").

    Shapes: rewards (B, K), K >= 2 -> advantages (B, K).
    """
    _check_group(rewards)
    centered = rewards - rewards.mean(dim=-1, keepdim=True)  # (B, K)
    if not scale:
        return centered
    std = rewards.std(dim=-1, keepdim=True, correction=1)  # (B, 1)
    return centered / (std + GRPO_STD_EPS)


def moving_baseline_advantages(
    rewards: torch.Tensor, baseline: float | None, batch_mean: float, *, decay: float
) -> tuple[torch.Tensor, float]:
    """REINFORCE with a moving-average baseline (Williams 1992, Sec. 4: any baseline that does
    not depend on the action keeps the gradient unbiased): ``A = r - b``, then
    ``b <- decay * b + (1 - decay) * batch_mean``.

    ``baseline`` is b before this batch (None for the first batch: b = ``batch_mean``, so its
    advantages are centred); ``batch_mean`` the batch's mean reward (under torchrun, over every
    process's rows, which is why the caller passes it). Returns ``(advantages, new baseline)``;
    the advantages of a batch never use its own update.

    Shapes: rewards (B, K) -> advantages (B, K).
    """
    b = batch_mean if baseline is None else baseline
    return rewards - b, decay * b + (1 - decay) * batch_mean
