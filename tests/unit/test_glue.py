"""The small helpers recipes share instead of repeating them: the eval-step condition, the
micro-batch size (``training.Run``) and train/eval mode toggling (``models.modes.eval_mode``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from posttrain.models.modes import eval_mode
from posttrain.training import Run


def _run(**cfg):
    return SimpleNamespace(config=SimpleNamespace(**cfg))


def test_should_eval_every_eval_steps_and_at_the_end():
    run = _run(max_steps=10, eval_steps=4)
    assert [s for s in range(1, 11) if Run.should_eval(run, s)] == [4, 8, 10]
    for off in (0, None):  # no periodic evaluation: only the last step
        assert [
            s for s in range(1, 11) if Run.should_eval(_run(max_steps=10, eval_steps=off), s)
        ] == [10]


def test_micro_batch_size_divides_by_accumulation_and_processes():
    run = _run(batch_size=16, gradient_accumulation_steps=4)
    assert Run.micro_batch_size.fget(run) == 4  # one process


def test_eval_mode_restores_each_models_own_mode_even_on_error():
    a, b = torch.nn.Dropout(0.5).train(), torch.nn.Dropout(0.5).eval()
    with eval_mode(a, b):
        assert not a.training and not b.training
    assert a.training and not b.training
    with pytest.raises(RuntimeError), eval_mode(a):
        raise RuntimeError("boom")
    assert a.training
