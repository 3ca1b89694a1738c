"""posttrain.losses.rl by hand: KL-shaped rewards, the adaptive KL coefficient, explained
variance and the value clip fraction (float64, tolerance 1e-6)."""

from __future__ import annotations

import pytest
import torch

from posttrain.losses import (
    adaptive_kl_coef,
    explained_variance,
    kl_shaped_rewards,
    value_clipfrac,
)

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def test_kl_shaped_rewards_by_hand():
    # row 0: response on positions 1..2; logp - ref = 0.5, -0.25; beta 0.1, score 2
    #   k1 rewards: -0.1 * 0.5 = -0.05; -0.1 * -0.25 = +0.025, plus the score 2 at the last token
    # row 1: response on positions 0..3; logp - ref = 1, 0, 0, -1; score -1
    # row 2: no response token: nothing, not even the score
    logps = t([[0.0, -1.0, -2.0, 0.0], [-1.0, -2.0, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0]])
    ref = t([[0.0, -1.5, -1.75, 0.0], [-2.0, -2.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    mask = t([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    scores = t([2.0, -1.0, 5.0])
    r = kl_shaped_rewards(scores, logps, ref, mask, kl_coef=0.1)
    expected = t([[0, -0.05, 2.025, 0], [-0.1, 0, 0, 0.1 - 1.0], [0, 0, 0, 0]])
    torch.testing.assert_close(r, expected, atol=1e-6, rtol=0)
    assert r.dtype == D
    # clipped at 0: the -0.25 and -1 log-ratios give no bonus
    r = kl_shaped_rewards(scores, logps, ref, mask, kl_coef=0.1, clip_zero=True)
    expected = t([[0, -0.05, 2.0, 0], [-0.1, 0, 0, -1.0], [0, 0, 0, 0]])
    torch.testing.assert_close(r, expected, atol=1e-6, rtol=0)
    # k3 at log-ratio 0.5: exp(-0.5) - 1 + 0.5 = 0.1065306597; at -0.25: exp(0.25) - 1 - 0.25
    r = kl_shaped_rewards(scores[:1], logps[:1], ref[:1], mask[:1], kl_coef=1.0, kind="k3")
    k3a, k3b = 0.10653065971263342, 0.03402541668774148
    torch.testing.assert_close(r, t([[0, -k3a, 2.0 - k3b, 0]]), atol=1e-6, rtol=0)


def test_adaptive_kl_coef_by_hand():
    # KL 9 vs target 6: error = clip(9/6 - 1, -0.2, 0.2) = 0.2; beta = 0.1 * (1 + 0.2 * 100/1000)
    assert adaptive_kl_coef(0.1, 9.0, target=6.0, horizon=1000, n_steps=100) == pytest.approx(
        0.102, abs=1e-12
    )
    # KL 5.4: error = -0.1 -> 0.102 * (1 - 0.1 * 0.1) = 0.10098
    assert adaptive_kl_coef(0.102, 5.4, target=6.0, horizon=1000, n_steps=100) == pytest.approx(
        0.10098, abs=1e-12
    )
    # far below target: error clipped at -0.2
    assert adaptive_kl_coef(1.0, 0.0, target=6.0, horizon=10, n_steps=5) == pytest.approx(0.9)


def test_explained_variance_by_hand():
    mask = t([[1, 1, 0], [1, 1, 0]])
    returns = t([[1.0, 2.0, 9.0], [3.0, 4.0, 9.0]])  # masked-in 1..4: unbiased var 5/3
    # residuals R - V = 0.5, -0.5, 0.5, -0.5: mean 0, unbiased var 1/3 -> 1 - (1/3) / (5/3) = 0.8
    values = t([[0.5, 2.5, -7.0], [2.5, 4.5, 0.0]])
    torch.testing.assert_close(explained_variance(values, returns, mask), t(0.8), atol=1e-6, rtol=0)
    torch.testing.assert_close(explained_variance(returns, returns, mask), t(1.0))
    # constant returns: 0 (not nan)
    assert float(explained_variance(values, torch.ones_like(returns), mask)) == 0.0


def test_value_clipfrac_by_hand():
    # eps 0.2; old values 0; returns 1 on every token
    #   v = 0.5: clipped to 0.2 -> (0.2 - 1)^2 = 0.64 > (0.5 - 1)^2 = 0.25   -> counts
    #   v = 0.1: inside the clip range -> equal errors                       -> no
    #   v = -0.5: clipped to -0.2 -> 1.44 < 2.25                             -> no
    #   v = 3.0: clipped to 0.2 -> 0.64 < 4                                  -> no (masked out anyway)
    values = t([[0.5, 0.1, -0.5, 3.0]])
    mask = t([[1, 1, 1, 0]])
    frac = value_clipfrac(
        values, torch.zeros_like(values), torch.ones_like(values), mask, clip_eps=0.2
    )
    torch.testing.assert_close(frac, t(1 / 3), atol=1e-6, rtol=0)
