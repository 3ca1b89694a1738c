"""The value function of PPO: V(prefix) at every position, next to the policy.

By default the value head shares the policy's trunk: a :class:`~posttrain.models.heads.ScalarHead`
reads the last hidden state the policy forward already computed
(``forward_logprobs(..., with_hidden=True)``), so values cost no extra forward and no second copy
of the model. ``separate=True`` gives the head its own critic trunk (a copy of the starting
policy, or another causal LM or reward model: :func:`load_critic`), trained by the same
optimizer; it costs a second model and forward but keeps value gradients out of the policy. A
separate critic's head has no bias, and ``ValueModel.save`` writes it as the ecosystem saves
critics: a transformers ``*ForSequenceClassification`` directory (one label, ``value``) whose
logits at a prefix's last token are V(prefix).

Values follow the log-prob convention of ``posttrain.models.logprobs``: entry ``[:, t]`` is the
value of the state after tokens ``..t``, i.e. before token ``t + 1`` is generated, so values,
log-probs and masks line up as (B, T - 1).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from posttrain.models.heads import ScalarHead
from posttrain.models.logprobs import position_ids_from_mask


class ValueModel(nn.Module):
    """A scalar head on the policy's hidden states (``critic`` None) or on a critic trunk's.

    The head starts at zero (V = 0 everywhere) so the first advantages are the rewards-to-go. On
    a critic trunk it has no bias, like transformers' ``score`` layer, so the saved critic's
    classifier computes the same values."""

    def __init__(self, hidden_size: int, critic: nn.Module | None = None):
        super().__init__()
        self.head = ScalarHead(hidden_size, bias=critic is None)  # float32 whatever the trunk
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

    def save(self, path: str | Path, tokenizer, *, state: dict | None = None) -> None:
        """Write a separate critic as a transformers sequence-classification directory (one
        label, ``value``), atomically; ``state``: the full weights when this module's own are
        FSDP shards. ``AutoModelForSequenceClassification`` then gives V(prefix) at the
        prefix's last token (the policy's tokenizer is saved with it)."""
        from posttrain.models.reward import save_classifier, write_atomically

        if self.critic is None:
            raise ValueError("a shared-trunk value head has no model of its own to save")
        state = self.state_dict() if state is None else state
        trunk = {k.removeprefix("critic."): v for k, v in state.items() if k.startswith("critic.")}
        score = state["head.linear.weight"]

        def write(tmp: Path) -> None:
            save_classifier(self.critic, tokenizer, tmp, state=trunk, score=score, labels=["value"])

        write_atomically(path, write)


def load_critic(name: str, *, dtype: str = "float32", tokenizer=None, device=None) -> nn.Module:
    """A separate critic's starting trunk: a reward model's (a directory ``posttrain rm`` or
    transformers saved: its transformer body), or a causal LM's (model name / HF directory), on
    ``device`` (None: the CPU)."""
    from posttrain.models.load import load_model, model_dir
    from posttrain.models.reward import is_reward_model_dir, load_reward_model

    path = model_dir(name)
    if path is not None and is_reward_model_dir(path):
        return load_reward_model(path, dtype=dtype, device=device).trunk
    return load_model(name, dtype=dtype, tokenizer=tokenizer, device=device)


def build_value_model(policy, *, separate: bool = False, critic=None) -> ValueModel:
    """The value model for ``policy`` (a causal LM, before LoRA is applied).

    ``separate``: give it its own trunk — ``critic`` (a causal LM or a transformer body, e.g.
    :func:`load_critic` of a reward model's directory) or, when None, a copy of ``policy``'s
    decoder as it is now."""
    if not separate:
        return ValueModel(policy.config.hidden_size)
    source = critic if critic is not None else copy.deepcopy(policy)
    trunk = source.get_decoder() if hasattr(source, "get_decoder") else source.base_model
    return ValueModel(source.config.hidden_size, critic=trunk.requires_grad_(True).train())
