"""RLOO: REINFORCE with a leave-one-out baseline over K samples per prompt (Kool et al. 2019;
Ahmadian et al. 2024, "Back to Basics"). Each response's advantage is its reward minus the mean
reward of the other K - 1 responses to the same prompt; the KL to the reference is subtracted
from the sequence reward by default. No value model.

The loop (sampling, scoring, KL, the policy-gradient step, logging, checkpoints) is shared with
GRPO and REINFORCE: ``posttrain/recipes/_policy_gradient.py``. Only the estimator differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import check
from posttrain.losses import rloo_advantages
from posttrain.recipes._policy_gradient import PolicyGradientConfig, run_policy_gradient

SUMMARY = "RLOO: REINFORCE with a leave-one-out baseline over K samples per prompt."


@dataclass(kw_only=True)
class Config(PolicyGradientConfig):
    def validate(self) -> None:
        super().validate()
        check(
            self.num_samples >= 2,
            "num_samples",
            "must be >= 2 (the baseline needs other samples)",
            self.num_samples,
        )


def run(cfg: Config, flags: dict[str, bool]) -> None:
    run_policy_gradient(cfg, flags, "rloo", lambda rewards, state: rloo_advantages(rewards))
