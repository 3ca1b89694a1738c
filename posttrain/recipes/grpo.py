"""GRPO: group-relative advantages (Shao et al. 2024, DeepSeekMath, Sec. 4.1.2): each response's
reward minus its group's mean, divided by the group's std (``scale_rewards``), K samples per
prompt; the KL to the reference as a per-token k3 loss term by default. No value model.

The loop is shared with RLOO and REINFORCE (``posttrain/recipes/_policy_gradient.py``); only the
estimator and the default place of the KL differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from posttrain.config import check
from posttrain.losses import grpo_advantages
from posttrain.recipes._policy_gradient import PolicyGradientConfig, run_policy_gradient

SUMMARY = "GRPO: group-normalised advantages over K samples per prompt, KL as a loss term."


@dataclass(kw_only=True)
class Config(PolicyGradientConfig):
    kl_in: Literal["reward", "loss"] = "loss"
    """Where the KL to the reference goes (GRPO: a per-token k3 loss term weighted by kl_coef)."""
    scale_rewards: bool = True
    """Divide by the group's std (False: Dr. GRPO's mean-only baseline)."""

    def validate(self) -> None:
        super().validate()
        check(self.num_samples >= 2, "num_samples", "must be >= 2 (a group)", self.num_samples)


def run(cfg: Config, flags: dict[str, bool]) -> None:
    run_policy_gradient(
        cfg, flags, "grpo", lambda rewards, state: grpo_advantages(rewards, scale=cfg.scale_rewards)
    )
