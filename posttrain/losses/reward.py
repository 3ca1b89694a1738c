"""Reward-model losses beside the Bradley–Terry loss of ``losses.preference``: its soft-label
form, and regularisers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    p_chosen: torch.Tensor | float,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Bradley–Terry cross-entropy against a soft label: ``-p log s(d) - (1 - p) log s(-d)``,
    ``d = r_c - r_r - margin``, ``s`` the logistic sigmoid.

    The Bradley–Terry model (Bradley & Terry 1952) says P(chosen preferred) = s(r_c - r_r); the
    reward-model loss of Ouyang et al. 2022 (InstructGPT, eq. 1) is its negative log-likelihood
    for a certain label (p = 1, where this equals ``bradley_terry_loss``). With p the share of
    labellers (or the judge's probability) preferring chosen, this is the expected negative
    log-likelihood over the label, minimised at d = log(p / (1 - p)): a reward model trained on
    pairs labelled 0.7 serves s(d) = 0.7 on them instead of 1. p = 0.5 (a tie) pulls d to 0.
    The margin (Llama 2, eq. 2) shifts d as in ``bradley_terry_loss``.

    Shapes: chosen_rewards, rejected_rewards (B,); p_chosen (B,) or scalar in [0, 1]; margin
    (B,) or scalar -> losses (B,).
    """
    d = chosen_rewards - rejected_rewards
    if margin is not None:
        d = d - margin
    p = torch.as_tensor(p_chosen, dtype=d.dtype, device=d.device)
    return -p * F.logsigmoid(d) - (1.0 - p) * F.logsigmoid(-d)


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
