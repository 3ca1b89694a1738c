"""The value function of PPO: V(prefix) at every position, next to the policy.

By default the value head shares the policy's trunk: a :class:`~posttrain.models.heads.ScalarHead`
reads the last hidden state the policy forward already computed
(``forward_logprobs(..., with_hidden=True)``), so values cost no extra forward and no second copy
of the model. ``separate=True`` gives the head its own critic trunk (a copy of the starting
policy, or another causal LM), trained by the same optimizer; it costs a second model and forward
but keeps value gradients out of the policy.

Values follow the log-prob convention of ``posttrain.models.logprobs``: entry ``[:, t]`` is the
value of the state after tokens ``..t``, i.e. before token ``t + 1`` is generated, so values,
log-probs and masks line up as (B, T - 1).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from posttrain.models.heads import ScalarHead
from posttrain.models.logprobs import position_ids_from_mask


class ValueModel(nn.Module):
    """A scalar head on the policy's hidden states (``critic`` None) or on a critic trunk's.

    The head starts at zero (V = 0 everywhere) so the first advantages are the rewards-to-go."""

    def __init__(self, hidden_size: int, critic: nn.Module | None = None):
        super().__init__()
        self.head = ScalarHead(hidden_size)  # float32 whatever the trunk's dtype
        nn.init.zeros_(self.head.linear.weight)
        self.critic = critic

    @property
    def shares_trunk(self) -> bool:
        return self.critic is None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids and mask (+ the policy's (B, T, H) last hidden state when sharing the trunk)
        -> (B, T - 1) float32 values."""
        if self.critic is None:
            if policy_hidden is None:
                raise ValueError("a shared-trunk value head needs the policy's hidden states")
            hidden = policy_hidden
        else:
            hidden = self.critic(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            ).last_hidden_state
        # a new tensor, not a view: FSDP warns that an in-place op on a view would skip its hook
        return self.head(hidden[:, :-1]).squeeze(-1).to(torch.float32, copy=True)


def build_value_model(policy, *, separate: bool = False, critic=None) -> ValueModel:
    """The value model for ``policy`` (a causal LM, before LoRA is applied).

    ``separate``: give it its own trunk — ``critic`` (a causal LM, e.g. loaded from a reward
    model's directory) or, when None, a copy of ``policy``'s decoder as it is now."""
    if not separate:
        return ValueModel(policy.config.hidden_size)
    source = critic if critic is not None else copy.deepcopy(policy)
    trunk = source.get_decoder() if hasattr(source, "get_decoder") else source.base_model
    return ValueModel(source.config.hidden_size, critic=trunk.requires_grad_(True).train())
