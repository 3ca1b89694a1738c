"""Soft-label preference losses, worked by hand in float64."""

from __future__ import annotations

import math

import torch

from posttrain.losses.preference import bradley_terry_loss
from posttrain.losses.reward import soft_bradley_terry_loss

T = torch.float64


def test_soft_bradley_terry_by_hand():
    # d = 0.5, p = 0.7: -0.7 log s(0.5) - 0.3 log s(-0.5)
    # s(0.5) = 0.622459331201855, log = -0.474076984180...; s(-0.5) = 0.377540668798145,
    # log = -0.974076984180... -> 0.7 * 0.47407698418 + 0.3 * 0.97407698418 = 0.62407698418
    loss = soft_bradley_terry_loss(torch.tensor([1.5], dtype=T), torch.tensor([1.0], dtype=T), 0.7)
    assert loss.dtype == T
    assert abs(float(loss) - 0.6240769841801067) < 1e-6
    # with a margin 0.5, d = 0: -0.7 log 0.5 - 0.3 log 0.5 = log 2 whatever p
    loss = soft_bradley_terry_loss(
        torch.tensor([1.5], dtype=T),
        torch.tensor([1.0], dtype=T),
        torch.tensor([0.9], dtype=T),
        margin=torch.tensor([0.5], dtype=T),
    )
    assert abs(float(loss) - math.log(2)) < 1e-12


def test_soft_bradley_terry_is_bt_at_p_1_and_symmetric():
    rc, rr = torch.tensor([0.3, -2.0, 4.0], dtype=T), torch.tensor([1.0, 0.5, -1.0], dtype=T)
    torch.testing.assert_close(soft_bradley_terry_loss(rc, rr, 1.0), bradley_terry_loss(rc, rr))
    # p and (chosen, rejected) swapped with 1 - p give the same loss
    p = torch.tensor([0.7, 0.2, 0.5], dtype=T)
    torch.testing.assert_close(
        soft_bradley_terry_loss(rc, rr, p), soft_bradley_terry_loss(rr, rc, 1 - p)
    )


def test_soft_bradley_terry_is_minimised_at_the_log_odds():
    # dL/dd = s(d) - p = 0 at d = log(p / (1 - p))
    for p in (0.5, 0.6, 0.7, 0.95):
        d = torch.tensor([math.log(p / (1 - p))], dtype=T, requires_grad=True)
        soft_bradley_terry_loss(d, torch.zeros(1, dtype=T), p).sum().backward()
        assert abs(float(d.grad)) < 1e-12
        d = torch.tensor([0.0], dtype=T, requires_grad=True)
        soft_bradley_terry_loss(d, torch.zeros(1, dtype=T), p).sum().backward()
        assert abs(float(d.grad) - (0.5 - p)) < 1e-12
