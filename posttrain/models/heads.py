"""Scalar heads on a causal-LM trunk: reward models (read at the last token) and value heads
(read at every token)."""

from __future__ import annotations

import torch
from torch import nn


class ScalarHead(nn.Module):
    """Linear map from hidden states to ``n_out`` scalars: (..., H) -> (..., n_out).

    Initialised with a small normal (std 1/sqrt(H+1)) and zero bias, so the initial outputs are
    near zero whatever the trunk. ``bias=False``: no bias, like the ``score`` layer of a
    transformers ``*ForSequenceClassification`` (reward models and separate critics)."""

    def __init__(self, hidden_size: int, n_out: int = 1, *, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(hidden_size, n_out, bias=bias)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last attended token of each row (right or left padding)."""
    width = attention_mask.size(1)
    positions = torch.arange(width, device=attention_mask.device).expand_as(attention_mask)
    return (
        torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values
    )


def gather_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): the hidden state at each row's last attended token."""
    idx = last_token_index(attention_mask)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), idx]
