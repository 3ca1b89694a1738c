"""Win rate, its Wilson interval and the length-controlled win rate, on data with known answers."""

import math

import numpy as np
import pytest

from posttrain.evaluation.win_rate import (
    bootstrap_interval,
    fit_logistic,
    length_controlled_win_rate,
    preferences_from_scores,
    wilson_interval,
    win_rate,
)


def test_wilson_interval_by_hand():
    """7 wins of 10, z = 1.959964 (z^2 = 3.841459): centre = (0.7 + z^2/20) / (1 + z^2/10)
    = 0.892073 / 1.384146 = 0.644493; half = z sqrt(0.021 + z^2/400) / (1 + z^2/10)
    = 1.959964 * 0.174939 / 1.384146 = 0.247715 -> [0.396778, 0.892209]
    (the textbook Wilson interval for 7/10, [0.397, 0.892])."""
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=2e-6)
    assert hi == pytest.approx(0.892209, abs=2e-6)
    # all wins: the interval still has width, and stays inside [0, 1]
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(20 / (20 + 1.959964**2), abs=1e-6)


def test_ties_count_half():
    res = win_rate([1.0, 0.0, 0.5, 0.5])
    assert res.win_rate == 0.5
    assert (res.wins, res.ties, res.losses, res.n) == (1, 2, 1, 4)
    assert preferences_from_scores([0.3, 0.1, 0.2], [0.1, 0.3, 0.2]) == [1.0, 0.0, 0.5]
    assert preferences_from_scores([0.30], [0.25], tie_tol=0.1) == [0.5]


def test_judge_prefers_policy_70_percent():
    """A judge that prefers the policy with probability 0.7: win rate near 0.7, inside the CI."""
    rng = np.random.default_rng(0)
    prefs = (rng.random(2000) < 0.7).astype(float)
    res = win_rate(prefs)
    assert abs(res.win_rate - 0.7) < 0.03
    assert res.ci[0] < 0.7 < res.ci[1]
    assert res.ci[1] - res.ci[0] == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 2000), rel=0.05)


def test_wilson_coverage_with_ties():
    """Over many repeated experiments the 95% interval covers the true rate about 95% of the time
    (at least that: with ties the interval is conservative)."""
    rng = np.random.default_rng(1)
    covered = 0
    trials = 400
    for _ in range(trials):
        # win 0.55, tie 0.2, loss 0.25 -> true win rate 0.55 + 0.1 = 0.65
        u = rng.random(100)
        prefs = np.where(u < 0.55, 1.0, np.where(u < 0.75, 0.5, 0.0))
        lo, hi = win_rate(prefs).ci
        covered += lo <= 0.65 <= hi
    assert 0.93 <= covered / trials <= 1.0


def test_bootstrap_interval_close_to_wilson():
    rng = np.random.default_rng(2)
    prefs = (rng.random(500) < 0.6).astype(float)
    lo, hi = bootstrap_interval(prefs, n_resamples=2000, seed=0)
    wl, wh = win_rate(prefs).ci
    assert abs(lo - wl) < 0.015 and abs(hi - wh) < 0.015


def test_fit_logistic_recovers_coefficients():
    """Data drawn from sigmoid(0.4 + 1.5 x): the (lightly penalised) fit recovers a and b."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.4 + 1.5 * x)))).astype(float)
    a, b = fit_logistic(x, y, l2=1.0)
    assert a == pytest.approx(0.4, abs=0.05) and b == pytest.approx(1.5, abs=0.07)


def _lengths(rng, n, shift):
    opp = rng.integers(20, 60, n).astype(float)
    pol = opp + shift + rng.normal(0, 12, n)
    return pol, opp


def test_length_biased_judge_lc_near_half():
    """A judge whose preference is explained entirely by length (it prefers the longer answer,
    noisily) and a policy that is longer most of the time: raw win rate is high, LC ~ 0.5."""
    rng = np.random.default_rng(4)
    pol, opp = _lengths(rng, 1000, shift=12.0)
    z = (pol - opp) / 12.0
    prefs = (rng.random(1000) < 1 / (1 + np.exp(-2.0 * z))).astype(float)
    raw = win_rate(prefs).win_rate
    lc = length_controlled_win_rate(prefs, pol, opp, seed=0)
    assert raw > 0.7
    assert abs(lc.lc_win_rate - 0.5) < 0.05
    assert lc.ci[0] < 0.5 < lc.ci[1]
    assert lc.length_coef > 1.0


def test_always_longer_judge_lc_near_half():
    """The extreme case: the judge always picks the longer answer (length separates the
    preferences perfectly); the penalty keeps the fit finite and LC stays near 0.5."""
    rng = np.random.default_rng(5)
    pol, opp = _lengths(rng, 600, shift=10.0)
    prefs = np.where(pol > opp, 1.0, np.where(pol < opp, 0.0, 0.5))
    raw = win_rate(prefs).win_rate
    lc = length_controlled_win_rate(prefs, pol, opp, n_resamples=50, seed=0)
    assert raw > 0.7
    assert abs(lc.lc_win_rate - 0.5) < 0.1
    assert math.isfinite(lc.length_coef)


def test_quality_judge_lc_keeps_the_win_rate():
    """A judge indifferent to length that prefers the policy 70% of the time: controlling for
    length must not take the real quality difference away (LC ~ raw ~ 0.7)."""
    rng = np.random.default_rng(6)
    pol, opp = _lengths(rng, 1500, shift=12.0)
    prefs = (rng.random(1500) < 0.7).astype(float)
    lc = length_controlled_win_rate(prefs, pol, opp, seed=0)
    assert abs(lc.lc_win_rate - 0.7) < 0.04
    assert lc.ci[0] < 0.7 < lc.ci[1]
    assert abs(lc.length_coef) < 0.2


def test_lc_equal_lengths_is_raw_win_rate():
    """With no length differences at all there is nothing to control for: LC == raw."""
    prefs = [1.0, 1.0, 0.0, 0.5, 1.0]
    lc = length_controlled_win_rate(prefs, [10] * 5, [10] * 5, n_resamples=20)
    assert lc.lc_win_rate == pytest.approx(0.7, abs=1e-6)


def test_bad_preferences_rejected():
    with pytest.raises(ValueError):
        win_rate([1.2, 0.0])
    with pytest.raises(ValueError):
        win_rate([])


def test_gold_gain_is_the_mean_of_paired_differences_with_its_standard_error():
    """Gold rewards 1, 2, 3 against the reference's 0, 2, 1 on the same prompts: differences
    1, 0, 2, mean 1, sample sd 1, standard error 1 / sqrt(3)."""
    from posttrain.evaluation.policy import Sources, score_side

    src = Sources(gold=lambda prompts, texts: [float(len(t)) for t in texts])
    row, golds = score_side(src, ["p"] * 3, ["a", "bb", "ccc"], ref_gold=[0.0, 2.0, 1.0])
    assert golds == [1.0, 2.0, 3.0]
    assert row["gold_reward"] == pytest.approx(2.0)
    assert row["gold_gain"] == pytest.approx(1.0)
    assert row["gold_gain_se"] == pytest.approx(1 / math.sqrt(3))
    row, _ = score_side(src, ["p"] * 3, ["a", "bb", "ccc"])  # no reference: no gain
    assert "gold_gain" not in row
