"""Modes of a model a recipe switches: evaluation mode for a no-grad pass (restored after), and
dropout off, so a training forward computes the log-probs sampling did."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module):
    """Put ``models`` in eval mode for the block and restore each one's own mode afterwards
    (train or eval, as it was), also when the block raises."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (``nn.Dropout`` modules and attention dropout), so the
    training forward computes the same log-probs as sampling did (the notes' PPO: "give up
    dropout throughout"). Returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model
