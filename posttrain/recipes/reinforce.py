"""REINFORCE with a baseline (Williams 1992): advantage = reward - b, where b is an exponential
moving average of past batches' mean reward (kept in checkpoints). One sample per prompt works.

The loop is shared with RLOO and GRPO (``posttrain/recipes/_policy_gradient.py``); only the
estimator differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import check
from posttrain.losses import moving_baseline_advantages
from posttrain.recipes._policy_gradient import PolicyGradientConfig, run_policy_gradient
from posttrain.training import distributed

SUMMARY = "REINFORCE with a moving-average baseline."


@dataclass(kw_only=True)
class Config(PolicyGradientConfig):
    num_samples: int = 1
    """Responses sampled per prompt."""
    baseline_decay: float = 0.9
    """b <- decay * b + (1 - decay) * mean reward of the batch (after the advantages are taken)."""

    def validate(self) -> None:
        super().validate()
        check(
            0 <= self.baseline_decay < 1, "baseline_decay", "must be in [0, 1)", self.baseline_decay
        )


def moving_baseline(rewards: torch.Tensor, state: dict, decay: float) -> torch.Tensor:
    """``losses.moving_baseline_advantages`` with b kept in ``state`` (checkpointed) and the
    batch mean over every process's rows. rewards (B, K) -> (B, K)."""
    mean = distributed.all_sum(float(rewards.sum())) / distributed.all_sum(rewards.numel())
    advantages, state["baseline"] = moving_baseline_advantages(
        rewards, state.get("baseline"), mean, decay=decay
    )
    return advantages


def run(cfg: Config, flags: dict[str, bool]) -> None:
    run_policy_gradient(
        cfg, flags, "reinforce", lambda r, state: moving_baseline(r, state, cfg.baseline_decay)
    )
