"""Hand-worked checks of GAE, RLOO and GRPO advantages."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.losses import gae, grpo_advantages, moving_baseline_advantages, rloo_advantages

TOL = {"atol": 1e-9, "rtol": 1e-9}
GAMMA, LAM = 0.9, 0.8  # gamma * lam = 0.72


def f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_full_row_by_hand():
    """rewards (0, 0, 0, 1), values (0.5, 0.4, 0.3, 0.2), all masked in; V after the end = 0.
    t=3: delta = 1 + 0.9*0 - 0.2 = 0.8;             A3 = 0.8
    t=2: delta = 0 + 0.9*0.2 - 0.3 = -0.12;         A2 = -0.12 + 0.72*0.8 = 0.456
    t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13;         A1 = -0.13 + 0.72*0.456 = 0.19832
    t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14;         A0 = -0.14 + 0.72*0.19832 = 0.0027904
    returns = A + V = (0.5027904, 0.59832, 0.756, 1.0)."""
    adv, ret = gae(
        f64([[0.0, 0.0, 0.0, 1.0]]),
        f64([[0.5, 0.4, 0.3, 0.2]]),
        torch.ones(1, 4),
        gamma=GAMMA,
        lam=LAM,
    )
    assert adv.dtype == torch.float64 and ret.dtype == torch.float64
    assert_close(adv, f64([[0.0027904, 0.19832, 0.456, 0.8]]), **TOL)
    assert_close(ret, f64([[0.5027904, 0.59832, 0.756, 1.0]]), **TOL)


# Padded rows; masked-out positions hold garbage (5, 9, 7, 3, nan, inf) that must not matter.
#   row 0, right-padded, mask (1, 1, 1, 0), rewards (0, 0, 1, .), values (0.5, 0.4, 0.3, .):
#     t=2: delta = 1 + 0 - 0.3 = 0.7 (nothing after the last token); A2 = 0.7
#     t=1: delta = 0.9*0.3 - 0.4 = -0.13; A1 = -0.13 + 0.72*0.7 = 0.374
#     t=0: delta = 0.9*0.4 - 0.5 = -0.14; A0 = -0.14 + 0.72*0.374 = 0.12928
#     returns (0.62928, 0.774, 1.0, 0)
#   row 1, starts later, mask (0, 1, 1, 1), rewards (., 0, 0, 1), values (., 0.4, 0.3, 0.2):
#     the same as t=1..3 of the full row: A = (0, 0.19832, 0.456, 0.8); returns (0, 0.59832, 0.756, 1)
#   row 2, both sides padded, mask (0, 1, 1, 0), rewards (., 0, 1, .), values (., 0.4, 0.3, .):
#     A2 = 1 - 0.3 = 0.7; A1 = -0.13 + 0.72*0.7 = 0.374; returns (0, 0.774, 1.0, 0)
PAD_MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 0]])
PAD_REWARDS = f64([[0.0, 0.0, 1.0, 5.0], [7.0, 0.0, 0.0, 1.0], [math.nan, 0.0, 1.0, 5.0]])
PAD_VALUES = f64([[0.5, 0.4, 0.3, 9.0], [3.0, 0.4, 0.3, 0.2], [math.inf, 0.4, 0.3, 9.0]])
PAD_ADV = f64([[0.12928, 0.374, 0.7, 0.0], [0.0, 0.19832, 0.456, 0.8], [0.0, 0.374, 0.7, 0.0]])
PAD_RET = f64([[0.62928, 0.774, 1.0, 0.0], [0.0, 0.59832, 0.756, 1.0], [0.0, 0.774, 1.0, 0.0]])


def test_gae_padded_rows_by_hand():
    adv, ret = gae(PAD_REWARDS, PAD_VALUES, PAD_MASK, gamma=GAMMA, lam=LAM)
    assert_close(adv, PAD_ADV, **TOL)
    assert_close(ret, PAD_RET, **TOL)


def test_gae_nothing_flows_past_last_masked_token():
    """Changing rewards and values after the last masked-in token (and before the first) changes
    nothing."""
    rewards, values = PAD_REWARDS.clone(), PAD_VALUES.clone()
    outside = PAD_MASK == 0
    rewards[outside] = -1234.0
    values[outside] = 4321.0
    adv, ret = gae(rewards, values, PAD_MASK.bool(), gamma=GAMMA, lam=LAM)
    assert_close(adv, PAD_ADV, **TOL)
    assert_close(ret, PAD_RET, **TOL)


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    """gamma = lam = 1: A_t = sum_{s>=t} r_s - V_t (Monte-Carlo return minus baseline).
    rewards (1, 2, 3) -> returns-to-go (6, 5, 3); values (1, 1, 1) -> A = (5, 4, 2)."""
    adv, ret = gae(
        f64([[1.0, 2.0, 3.0]]), f64([[1.0, 1.0, 1.0]]), torch.ones(1, 3), gamma=1.0, lam=1.0
    )
    assert_close(adv, f64([[5.0, 4.0, 2.0]]), **TOL)
    assert_close(ret, f64([[6.0, 5.0, 3.0]]), **TOL)


REWARDS_2x3 = f64([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])


def test_rloo_by_hand():
    """Row 0: 1 - (2+6)/2 = -3; 2 - (1+6)/2 = -1.5; 6 - (1+2)/2 = 4.5.
    Row 1: 0 - (0+3)/2 = -1.5 (twice); 3 - 0 = 3."""
    out = rloo_advantages(REWARDS_2x3)
    assert out.dtype == torch.float64
    assert_close(out, f64([[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]]), **TOL)


def test_grpo_by_hand():
    """Row 0: mean 3, centered (-2, -1, 3), sample var (4+1+9)/2 = 7 -> divide by sqrt 7 + 1e-4.
    Row 1: mean 1, centered (-1, -1, 2), sample var (1+1+4)/2 = 3 -> divide by sqrt 3 + 1e-4."""
    s0, s1 = math.sqrt(7.0) + 1e-4, math.sqrt(3.0) + 1e-4
    out = grpo_advantages(REWARDS_2x3)
    assert out.dtype == torch.float64
    assert_close(out, f64([[-2 / s0, -1 / s0, 3 / s0], [-1 / s1, -1 / s1, 2 / s1]]), **TOL)
    unscaled = grpo_advantages(REWARDS_2x3, scale=False)
    assert_close(unscaled, f64([[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]]), **TOL)


def test_grpo_equal_rewards_give_zero_not_nan():
    assert_close(grpo_advantages(f64([[2.0, 2.0, 2.0]])), f64([[0.0, 0.0, 0.0]]), **TOL)


def test_group_of_one_rejected():
    with pytest.raises(ValueError):
        rloo_advantages(f64([[1.0], [2.0]]))
    with pytest.raises(ValueError):
        grpo_advantages(f64([[1.0], [2.0]]))


def test_moving_baseline_by_hand():
    """decay 0.5. Batch 1 (mean 2, no baseline yet): b = 2, A = (-1, 1), b <- 2.
    Batch 2 (mean 5): A = (4 - 2, 6 - 2) = (2, 4), b <- 0.5 * 2 + 0.5 * 5 = 3.5."""
    a, b = moving_baseline_advantages(f64([[1.0], [3.0]]), None, 2.0, decay=0.5)
    assert_close(a, f64([[-1.0], [1.0]]), **TOL)
    assert b == 2.0
    a, b = moving_baseline_advantages(f64([[4.0], [6.0]]), b, 5.0, decay=0.5)
    assert_close(a, f64([[2.0], [4.0]]), **TOL)
    assert b == 3.5
