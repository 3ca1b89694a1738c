"""Hand-worked and Monte-Carlo checks of the KL estimators k1, k2, k3."""

import math

import pytest
import torch
from torch.testing import assert_close

from posttrain.losses import kl_estimate, kl_to_reference

TOL = {"atol": 1e-9, "rtol": 1e-9}
LN2 = math.log(2.0)

# Token 0: p = 1/2, q = 1/4 -> logp - logq = ln 2; token 1: p = 1/4, q = 1/2 -> -ln 2.
LOGP = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
LOGQ = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)


def test_kl_estimators_by_hand():
    """k1 = +-ln 2; k2 = 0.5 ln^2 2 (both); abs = ln 2 (both);
    k3 = e^{logq - logp} - 1 - (logq - logp): 1/2 - 1 + ln 2 = ln 2 - 1/2 and 2 - 1 - ln 2 = 1 - ln 2."""
    expected = {
        "k1": [LN2, -LN2],
        "k2": [0.5 * LN2**2, 0.5 * LN2**2],
        "k3": [LN2 - 0.5, 1.0 - LN2],
        "abs": [LN2, LN2],
    }
    for kind, values in expected.items():
        out = kl_estimate(LOGP, LOGQ, kind=kind)
        assert out.shape == (1, 2) and out.dtype == torch.float64
        assert_close(out, torch.tensor([values], dtype=torch.float64), **TOL)
    assert_close(kl_estimate(LOGP, LOGQ), kl_estimate(LOGP, LOGQ, kind="k1"), **TOL)


def test_k3_nonnegative():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 16, generator=gen, dtype=torch.float64) * 3
    logq = torch.randn(64, 16, generator=gen, dtype=torch.float64) * 3
    assert (kl_estimate(logp, logq, kind="k3") >= 0).all()


def test_unknown_kind():
    with pytest.raises(ValueError):
        kl_estimate(LOGP, LOGQ, kind="k4")


# p = (0.5, 0.3, 0.2), q = (0.2, 0.3, 0.5):
# KL(p || q) = 0.5 ln 2.5 + 0.3 ln 1 + 0.2 ln 0.4 = 0.3 ln 2.5
P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
Q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
EXACT_KL = 0.3 * math.log(2.5)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_k1_k3_unbiased_exact_expectation(kind):
    """E_p[k] = sum_x p(x) k(x) equals KL(p || q) exactly for k1 and k3
    (for k3: sum p (q/p - 1 - ln(q/p)) = sum q - 1 + KL = KL)."""
    per_outcome = kl_estimate(P.log(), Q.log(), kind=kind)
    assert_close((P * per_outcome).sum(), torch.tensor(EXACT_KL, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_k1_k3_unbiased_monte_carlo(kind):
    """Sample 200k tokens from p (seeded); the sample mean is within 0.01 of the exact KL."""
    gen = torch.Generator().manual_seed(1234)
    samples = torch.multinomial(P, 200_000, replacement=True, generator=gen)
    estimate = kl_estimate(P.log()[samples], Q.log()[samples], kind=kind).mean()
    assert abs(estimate.item() - EXACT_KL) < 0.01


def test_k2_is_biased_here():
    """E_p[k2] = 0.5 * (0.5 ln^2 2.5 + 0.2 ln^2 0.4) != KL: a check that k2 is not silently k1/k3."""
    per_outcome = kl_estimate(P.log(), Q.log(), kind="k2")
    expected = 0.5 * (0.5 * math.log(2.5) ** 2 + 0.2 * math.log(0.4) ** 2)
    assert_close((P * per_outcome).sum(), torch.tensor(expected, dtype=torch.float64), **TOL)
    assert abs(expected - EXACT_KL) > 0.01


def test_kl_to_reference_by_hand():
    """q = (1/2, 1/2) against p = (1/4, 3/4): 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3);
    its gradient in the policy's logits is p - q = (-1/4, 1/4); zero where p = q, whatever the
    logits' offset."""
    ref = torch.tensor([[0.5, 0.5]], dtype=torch.float64).log()
    logits = (torch.tensor([[0.25, 0.75]], dtype=torch.float64).log() + 3.0).requires_grad_()
    kl = kl_to_reference(logits, ref)
    assert kl.shape == (1,)
    assert_close(kl, torch.tensor([0.5 * math.log(4 / 3)], dtype=torch.float64), **TOL)
    kl.sum().backward()
    assert_close(logits.grad, torch.tensor([[-0.25, 0.25]], dtype=torch.float64), **TOL)
    assert_close(kl_to_reference(ref - 7.0, ref), torch.zeros(1, dtype=torch.float64), **TOL)


def test_kl_to_reference_is_the_nll_of_reference_samples_less_their_entropy():
    """E_{y ~ q}[-log p(y)] - H(q) = KL(q || p), by sampling (5 vocabulary entries, 200,000
    draws: standard error ~0.003)."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, generator=g, dtype=torch.float64)
    logits = torch.randn(5, generator=g, dtype=torch.float64)
    q, logp = torch.softmax(ref, -1), torch.log_softmax(logits, -1)
    draws = torch.multinomial(q, 200_000, replacement=True, generator=g)
    entropy = -(q * q.log()).sum()
    estimate = -logp[draws].mean() - entropy
    assert abs(float(estimate - kl_to_reference(logits, ref))) < 0.015
