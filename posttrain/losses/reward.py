"""Reward-model regularisers (the Bradley–Terry loss itself is in ``losses.preference``)."""

from __future__ import annotations

import torch


def reward_centering_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """Auxiliary term ``(r_c + r_r)^2`` per pair, which pulls the rewards towards zero mean.

    Eisenstein et al. 2023 ("Helping or Herding? Reward Model Ensembles Mitigate but do not
    Eliminate Reward Hacking", arXiv:2312.09244), eq. 2: the Bradley–Terry loss only sees reward
    differences, so the level of r is free; this term pins it near zero, so rewards of different
    models (or of one model across runs) sit on a common scale. The recipe adds
    ``coef * mean(...)`` over the pairs to the BT loss (0.01 is the usual coefficient).
    Shapes: (B,), (B,) -> (B,).
    """
    return (chosen_rewards + rejected_rewards) ** 2
