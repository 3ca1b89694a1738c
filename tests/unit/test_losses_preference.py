"""Hand-worked checks of the Bradley-Terry loss and the DPO family (float64, tight tolerance)."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.losses import (
    bradley_terry_loss,
    dpo_loss,
    kto_kl_reference_point,
    kto_loss,
    orpo_loss,
    reference_free_dpo_loss,
    reward_accuracy,
    rpo_loss,
    simpo_loss,
)

TOL = {"atol": 1e-9, "rtol": 1e-9}


def f64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(z):
    """-log sigmoid(-z) = log(1 + e^z), written out with math, not torch."""
    return math.log1p(math.exp(z))


# Two pairs with known h = (pc - rc) - (pr - rr):
#   row 0: pc=-1, pr=-3, rc=-2, rr=-2.5 -> chosen ratio 1.0, rejected ratio -0.5, h = 1.5
#   row 1: pc= 0, pr=-3, rc=-1, rr=-1   -> chosen ratio 1.0, rejected ratio -2.0, h = 3.0
# beta = 0.5, so beta*h = 0.75 and 1.5.
PC, PR, RC, RR = f64(-1.0, 0.0), f64(-3.0, -3.0), f64(-2.0, -1.0), f64(-2.5, -1.0)
BETA = 0.5


def test_dpo_sigmoid_known_h():
    """-log sigmoid(beta h) = log(1 + e^{-beta h}): log(1 + e^-0.75), log(1 + e^-1.5)."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, RC, RR, beta=BETA)
    assert_close(losses, f64(softplus(-0.75), softplus(-1.5)), **TOL)
    # rewards = beta * (policy - ref): 0.5 * 1.0 ; 0.5 * (-0.5), 0.5 * (-2.0)
    assert_close(chosen_rewards, f64(0.5, 0.5), **TOL)
    assert_close(rejected_rewards, f64(-0.25, -1.0), **TOL)


def test_dpo_ipo_known_h():
    """(h - 1/(2 beta))^2 with 1/(2*0.5) = 1: (1.5 - 1)^2 = 0.25, (3 - 1)^2 = 4."""
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="ipo")
    assert_close(losses, f64(0.25, 4.0), **TOL)


def test_dpo_hinge_known_h():
    """relu(1 - beta h): 1 - 0.75 = 0.25; 1 - 1.5 < 0 -> 0."""
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="hinge")
    assert_close(losses, f64(0.25, 0.0), **TOL)


def test_dpo_cdpo_known_h():
    """eps = 0.1: 0.9 * log(1 + e^{-beta h}) + 0.1 * log(1 + e^{beta h})."""
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.1)
    expected = [0.9 * softplus(-z) + 0.1 * softplus(z) for z in (0.75, 1.5)]
    assert_close(losses, f64(*expected), **TOL)


def test_dpo_per_pair_label_smoothing_known_h():
    """eps = (0.1, 0.3), one per pair (soft labels: a judge 90% and 70% sure):
    row 0: 0.9 * log(1 + e^-0.75) + 0.1 * log(1 + e^0.75) = 0.9 * 0.3868710 + 0.1 * 1.1368710;
    row 1: 0.7 * log(1 + e^-1.5) + 0.3 * log(1 + e^1.5). Rewards do not depend on eps."""
    eps = f64(0.1, 0.3)
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=eps)
    expected = [
        0.9 * softplus(-0.75) + 0.1 * softplus(0.75),
        0.7 * softplus(-1.5) + 0.3 * softplus(1.5),
    ]
    assert_close(losses, f64(*expected), **TOL)
    assert_close(losses[0], torch.tensor(0.9 * 0.38687101 + 0.1 * 1.13687101, dtype=torch.float64))
    assert_close(rc, f64(0.5, 0.5), **TOL)
    assert_close(rr, f64(-0.25, -1.0), **TOL)
    # a per-pair eps equal for every pair is the one-number eps
    same, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=f64(0.1, 0.1))
    one, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.1)
    assert_close(same, one, **TOL)
    # robust takes per-pair flip rates too: ((1 - e) l(h) - e l(-h)) / (1 - 2e) per row
    robust, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="robust", label_smoothing=eps)
    expected = [
        (0.9 * softplus(-0.75) - 0.1 * softplus(0.75)) / 0.8,
        (0.7 * softplus(-1.5) - 0.3 * softplus(1.5)) / 0.4,
    ]
    assert_close(robust, f64(*expected), **TOL)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=f64(0.1, 0.6))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="hinge", label_smoothing=f64(0.0, 0.1))


def test_reward_accuracy_counts_ties_half():
    got = reward_accuracy(f64(1.0, 0.0, -1.0, 2.0), f64(0.0, 0.0, 0.0, 2.0))
    assert got.tolist() == [1.0, 0.5, 0.0, 0.5] and got.dtype == torch.float64


def test_dpo_robust_known_h():
    """eps = 0.1: (0.9 * log(1 + e^{-beta h}) - 0.1 * log(1 + e^{beta h})) / (1 - 0.2)."""
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="robust", label_smoothing=0.1)
    expected = [(0.9 * softplus(-z) - 0.1 * softplus(z)) / 0.8 for z in (0.75, 1.5)]
    assert_close(losses, f64(*expected), **TOL)


def test_cdpo_and_robust_with_zero_eps_equal_sigmoid():
    sigmoid, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA)
    cdpo, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.0)
    robust, _, _ = dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="robust", label_smoothing=0.0)
    assert_close(cdpo, sigmoid, **TOL)
    assert_close(robust, sigmoid, **TOL)


def test_dpo_gradient_matches_paper():
    """Rafailov et al. 2023, Sec. 4: dL/d log pi(y_w) = -beta sigmoid(-beta h), and the opposite
    for log pi(y_l). sigmoid(-0.75) = 1 / (1 + e^0.75)."""
    pc = PC.clone().requires_grad_(True)
    pr = PR.clone().requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, RC, RR, beta=BETA)
    losses.sum().backward()
    expected = f64(*[-BETA / (1.0 + math.exp(z)) for z in (0.75, 1.5)])
    assert_close(pc.grad, expected, **TOL)
    assert_close(pr.grad, -expected, **TOL)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpo_dtype_preserved(loss_type, dtype):
    args = [x.to(dtype) for x in (PC, PR, RC, RR)]
    outs = dpo_loss(*args, beta=BETA, loss_type=loss_type)
    assert all(o.dtype == dtype and o.shape == (2,) for o in outs)


def test_dpo_bad_arguments():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="sigmod")
    with pytest.raises(TypeError):
        dpo_loss(PC, PR, RC, RR)  # beta is required
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(PC, PR, RC, RR, beta=0.0)


def test_reference_free_dpo():
    """h = pc - pr: row 0 -1 - (-3) = 2, row 1 0 - (-3) = 3; beta h = 1, 1.5; rewards beta * pi."""
    losses, chosen_rewards, rejected_rewards = reference_free_dpo_loss(PC, PR, beta=BETA)
    assert_close(losses, f64(softplus(-1.0), softplus(-1.5)), **TOL)
    assert_close(chosen_rewards, f64(-0.5, 0.0), **TOL)
    assert_close(rejected_rewards, f64(-1.5, -1.5), **TOL)
    ipo, _, _ = reference_free_dpo_loss(PC, PR, beta=BETA, loss_type="ipo")
    assert_close(ipo, f64(1.0, 4.0), **TOL)  # (2 - 1)^2, (3 - 1)^2


def test_bradley_terry():
    """No margin: -log sigmoid(2 - 1) = log(1 + e^-1), -log sigmoid(0 - 1) = log(1 + e).
    Margins 0.5, -1: diffs 0.5 and 0 -> log(1 + e^-0.5), log 2."""
    chosen, rejected = f64(2.0, 0.0), f64(1.0, 1.0)
    assert_close(bradley_terry_loss(chosen, rejected), f64(softplus(-1.0), softplus(1.0)), **TOL)
    with_margin = bradley_terry_loss(chosen, rejected, f64(0.5, -1.0))
    assert_close(with_margin, f64(softplus(-0.5), math.log(2.0)), **TOL)
    assert with_margin.dtype == torch.float64


def test_rpo():
    """NLL per token 6 / 4 = 1.5 and 1 / 1 = 1. alpha 0.5: 0.3 + 0.75 = 1.05; alpha 2: 3.3, 2.1."""
    out = rpo_loss(f64(0.3, 0.1), f64(-6.0, -1.0), torch.tensor([4, 1]), alpha=0.5)
    assert_close(out[0], torch.tensor(1.05, dtype=torch.float64), **TOL)
    out = rpo_loss(f64(0.3, 0.1), f64(-6.0, -1.0), torch.tensor([4, 1]), alpha=2.0)
    assert_close(out, f64(0.3 + 3.0, 0.1 + 2.0), **TOL)
    assert out.dtype == torch.float64


def test_simpo():
    """Chosen: -4 over 2 tokens (avg -2), rejected: -9 over 3 tokens (avg -3); beta 2, gamma 0.5.
    Rewards 2 * -2 = -4 and 2 * -3 = -6; logit = -4 - (-6) - 0.5 = 1.5 -> log(1 + e^-1.5)."""
    args = (f64(-4.0), f64(-9.0), torch.tensor([2]), torch.tensor([3]))
    losses, chosen_rewards, rejected_rewards = simpo_loss(*args, beta=2.0, gamma=0.5)
    assert_close(losses, f64(softplus(-1.5)), **TOL)
    assert_close(chosen_rewards, f64(-4.0), **TOL)
    assert_close(rejected_rewards, f64(-6.0), **TOL)
    smoothed, _, _ = simpo_loss(*args, beta=2.0, gamma=0.5, label_smoothing=0.2)
    assert_close(smoothed, f64(0.8 * softplus(-1.5) + 0.2 * softplus(1.5)), **TOL)


def test_orpo():
    """Chosen: mean token prob 0.5 (log-prob 2 ln 0.5 over 2 tokens) -> odds 1.
    Rejected: mean token prob 0.2 (4 ln 0.2 over 4 tokens) -> odds 0.25.
    log odds ratio = ln 1 - ln 0.25 = ln 4; L_OR = -log sigmoid(ln 4) = -ln(4/5) = ln 1.25.
    L_SFT = -ln 0.5 = ln 2; lam = 0.1 -> ln 2 + 0.1 ln 1.25."""
    losses, log_odds_ratio = orpo_loss(
        f64(2 * math.log(0.5)),
        f64(4 * math.log(0.2)),
        torch.tensor([2]),
        torch.tensor([4]),
        lam=0.1,
    )
    assert_close(log_odds_ratio, f64(math.log(4.0)), **TOL)
    assert_close(losses, f64(math.log(2.0) + 0.1 * math.log(1.25)), **TOL)


def test_orpo_stable_near_probability_one():
    """Mean log-prob -1e-9 (p ~ 1): log odds = -1e-9 - log(1 - e^{-1e-9}) ~ -log(1e-9); finite."""
    lp = -1e-9
    _, lor = orpo_loss(f64(lp), f64(math.log(0.5)), torch.tensor([1]), torch.tensor([1]), lam=1.0)
    expected = (lp - math.log(-math.expm1(lp))) - 0.0  # odds(0.5) = 1
    assert_close(lor, f64(expected), **TOL)


def test_kto():
    """r = policy - ref = [0.5, -1.0]; z0 = 0.2; beta = 2.
    desirable row:   1.5 * (1 - sigmoid(2 * (0.5 - 0.2))) = 1.5 / (1 + e^0.6)
    undesirable row: 0.5 * (1 - sigmoid(2 * (0.2 + 1.0))) = 0.5 / (1 + e^2.4)
    rewards = beta * r = [1.0, -2.0]."""
    policy, ref, desirable = f64(-1.0, -2.0), f64(-1.5, -1.0), torch.tensor([True, False])
    losses, rewards = kto_loss(
        policy, ref, desirable, 0.2, beta=2.0, desirable_weight=1.5, undesirable_weight=0.5
    )
    assert_close(losses, f64(1.5 / (1 + math.exp(0.6)), 0.5 / (1 + math.exp(2.4))), **TOL)
    assert_close(rewards, f64(1.0, -2.0), **TOL)


def test_kto_reference_point_clamped_and_detached():
    """A negative z0 acts as 0; no gradient reaches the reference point."""
    policy = f64(-1.0, -2.0).requires_grad_(True)
    ref, desirable = f64(-1.5, -1.0), torch.tensor([True, False])
    z0 = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    clamped, _ = kto_loss(policy, ref, desirable, z0, beta=2.0)
    zero, _ = kto_loss(policy, ref, desirable, 0.0, beta=2.0)
    assert_close(clamped, zero, **TOL)
    # z0 = 0: 1 - sigmoid(1.0) = 1 / (1 + e), 1 - sigmoid(2.0) = 1 / (1 + e^2)
    assert_close(zero, f64(1 / (1 + math.e), 1 / (1 + math.exp(2.0))), **TOL)
    clamped.sum().backward()
    assert policy.grad is not None and z0.grad is None


def test_kto_kl_reference_point():
    """diffs 0.5, -0.5, -0.6 -> mean -0.2 -> clamped to 0; diffs 1, 0.5, 0 -> 0.5."""
    policy = f64(-1.0, -2.0, -3.0)
    assert_close(kto_kl_reference_point(policy, f64(-1.5, -1.5, -2.4)), f64(0.0)[0], **TOL)
    policy = policy.clone().requires_grad_(True)
    z0 = kto_kl_reference_point(policy, f64(-2.0, -2.5, -3.0))
    assert_close(z0, f64(0.5)[0], **TOL)
    assert not z0.requires_grad
