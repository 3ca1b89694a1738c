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


def test_soft_labels_are_per_pair_cdpo_by_hand():
    from types import SimpleNamespace

    from posttrain.losses import preference_loss, soft_label_smoothing

    # p = 0.6, e = 0 -> eps = 0.4; p = 1 -> eps = 0; with e = 0.1: eps = 0.4 * 0.9 + 0.6 * 0.1 = 0.42
    p = torch.tensor([0.6, 1.0], dtype=T)
    torch.testing.assert_close(soft_label_smoothing(p), torch.tensor([0.4, 0.0], dtype=T))
    torch.testing.assert_close(soft_label_smoothing(p, 0.1), torch.tensor([0.42, 0.1], dtype=T))
    assert soft_label_smoothing(torch.ones(3, dtype=T), 0.1) == 0.1  # certain data: as before
    # beta h = 0.1 * (2 - 1 - (0 - 0)) ... policy (c, r) = (-1, -3), ref (-2, -2): h = 2, beta h = 0.2
    # pair 1, p = 0.6: -0.6 log s(0.2) - 0.4 log s(-0.2)
    #   log s(0.2) = -0.598138869381, log s(-0.2) = -0.798138869381 -> 0.678138869381
    policy = SimpleNamespace(chosen=torch.tensor([-1.0, -1.0], dtype=T),
                             rejected=torch.tensor([-3.0, -3.0], dtype=T))  # fmt: skip
    ref = torch.tensor([-2.0, -2.0], dtype=T)
    losses, rc, rr = preference_loss(policy, ref, ref, loss_type="sigmoid", beta=0.1, p_chosen=p)
    assert abs(float(losses[0]) - 0.678138869381) < 1e-6
    assert abs(float(losses[1]) - 0.598138869381) < 1e-6  # p = 1: plain DPO
    # robust, p = 0.6 (eps 0.4): (0.6 l(h) - 0.4 l(-h)) / 0.2 = (0.6*0.598139 - 0.4*0.798139)/0.2
    losses, _, _ = preference_loss(policy, ref, ref, loss_type="robust", beta=0.1, p_chosen=p)
    assert abs(float(losses[0]) - (0.6 * 0.598138869381 - 0.4 * 0.798138869381) / 0.2) < 1e-6


def test_soft_cdpo_is_minimised_at_the_log_odds():
    from posttrain.losses import dpo_loss

    # d loss / d(beta h) = s(beta h) - p = 0 at beta h = log(p / (1 - p)): log(0.6 / 0.4) = 0.405
    beta, p = 0.1, 0.6
    h = torch.tensor([math.log(p / (1 - p)) / beta], dtype=T, requires_grad=True)
    zero = torch.zeros(1, dtype=T)
    losses, _, _ = dpo_loss(
        h, zero, zero, zero, beta=beta, label_smoothing=torch.tensor([1 - p], dtype=T)
    )
    losses.sum().backward()
    assert abs(float(h.grad)) < 1e-12


def test_losses_without_a_soft_form_refuse_p_below_1():
    from types import SimpleNamespace

    import pytest

    from posttrain.losses import preference_loss, soft_label_problem

    assert soft_label_problem("sigmoid", 0.5) is None and soft_label_problem("robust", 0.7) is None
    assert "cannot train ties" in soft_label_problem("robust", 0.5)
    for loss_type in ("ipo", "hinge", "simpo", "orpo", "unlikelihood", "kto"):
        assert "has no soft-label form" in soft_label_problem(loss_type, 0.9)
        assert soft_label_problem(loss_type, 1.0) is None
    policy = SimpleNamespace(chosen=torch.zeros(1, dtype=T), rejected=torch.zeros(1, dtype=T))
    with pytest.raises(ValueError, match="loss_type ipo has no soft-label form"):
        preference_loss(policy, policy.chosen, policy.rejected, loss_type="ipo", beta=0.1,
                        p_chosen=torch.tensor([0.8], dtype=T))  # fmt: skip
