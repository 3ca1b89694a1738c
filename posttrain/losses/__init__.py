"""Losses, advantages and estimators as pure functions of tensors (float64 in -> float64 out)."""

from posttrain.losses.advantages import (
    gae,
    grpo_advantages,
    moving_baseline_advantages,
    rloo_advantages,
)
from posttrain.losses.common import (
    entropy_from_logits,
    log1mexp,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from posttrain.losses.kl import KL_KINDS, kl_estimate, kl_to_reference
from posttrain.losses.ppo import ppo_policy_loss, ppo_value_loss
from posttrain.losses.preference import (
    DPO_LOSS_TYPES,
    PREFERENCE_LOSS_TYPES,
    REFERENCE_FREE_LOSS_TYPES,
    SOFT_LABEL_LOSS_TYPES,
    bradley_terry_loss,
    dpo_loss,
    kto_kl_reference_point,
    kto_loss,
    orpo_loss,
    preference_loss,
    reference_free_dpo_loss,
    reward_accuracy,
    rpo_loss,
    simpo_loss,
    soft_label_problem,
    soft_label_smoothing,
)
from posttrain.losses.reward import reward_centering_loss, soft_bradley_terry_loss
from posttrain.losses.rl import (
    KLController,
    adaptive_kl_coef,
    explained_variance,
    kl_shaped_rewards,
    value_clipfrac,
)
from posttrain.losses.sft import sft_loss, unlikelihood_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "PREFERENCE_LOSS_TYPES",
    "REFERENCE_FREE_LOSS_TYPES",
    "SOFT_LABEL_LOSS_TYPES",
    "KLController",
    "KL_KINDS",
    "adaptive_kl_coef",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "kl_estimate",
    "kl_shaped_rewards",
    "kl_to_reference",
    "kto_kl_reference_point",
    "kto_loss",
    "log1mexp",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "moving_baseline_advantages",
    "orpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_loss",
    "reference_free_dpo_loss",
    "reward_accuracy",
    "reward_centering_loss",
    "rloo_advantages",
    "rpo_loss",
    "sft_loss",
    "simpo_loss",
    "soft_bradley_terry_loss",
    "soft_label_problem",
    "soft_label_smoothing",
    "unlikelihood_loss",
    "value_clipfrac",
]
