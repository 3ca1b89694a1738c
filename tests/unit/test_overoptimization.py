"""Over-optimisation math (Gao et al. 2022): best-of-n KL and estimator, the two fits, peaks.

Every expected value is worked by hand in the test's comments.
"""

from __future__ import annotations

import itertools
import math

import pytest

from posttrain.evaluation.overoptimization import (
    Fit,
    best_of_n_means,
    best_of_n_weights,
    bon_kl,
    fit_bon,
    fit_rl,
)


def test_bon_kl_by_hand():
    assert bon_kl(1) == 0.0  # log 1 - 0/1
    assert bon_kl(2) == pytest.approx(0.6931471805599453 - 0.5, abs=1e-12)
    assert bon_kl(4) == pytest.approx(1.3862943611198906 - 0.75, abs=1e-12)
    assert bon_kl(256) == pytest.approx(5.545177444479562 - 255 / 256, abs=1e-12)
    with pytest.raises(ValueError):
        bon_kl(0)


def test_bon_kl_matches_the_exact_kl_of_best_of_n_on_a_uniform_base():
    """On a base of N equally likely outcomes with distinct scores, best-of-n picks the
    i-th lowest (i = 1..N) with p_i = (i/N)^n - ((i-1)/N)^n; KL(p || uniform) tends to
    log n - (n-1)/n as N grows (the formula's continuous limit)."""
    n, big = 4, 20000
    kl = 0.0
    for i in range(1, big + 1):
        p = (i / big) ** n - ((i - 1) / big) ** n
        kl += p * math.log(p * big)
    assert kl == pytest.approx(bon_kl(n), abs=1e-3)


def test_best_of_n_weights_by_hand():
    # N = 4, n = 2: C(i, 1) / C(4, 2) = i / 6 for i = 0..3
    assert best_of_n_weights(4, 2) == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6], abs=1e-12)
    assert best_of_n_weights(5, 1) == pytest.approx([0.2] * 5, abs=1e-12)  # n = 1: the mean
    assert best_of_n_weights(3, 3) == pytest.approx([0, 0, 1], abs=1e-12)  # n = N: the best
    assert sum(best_of_n_weights(256, 17)) == pytest.approx(1.0, abs=1e-12)


def test_best_of_n_means_by_hand_and_by_enumerating_subsets():
    proxy = [0.3, 0.1, 0.4, 0.2]
    gold = [1.0, 2.0, 3.0, 4.0]
    # ranked by proxy: #1 (0.1, g 2), #3 (0.2, g 4), #0 (0.3, g 1), #2 (0.4, g 3); weights
    # 0, 1/6, 2/6, 3/6 -> proxy (0.2 + 0.6 + 1.2) / 6 = 1/3; gold (4 + 2 + 9) / 6 = 2.5
    p, g = best_of_n_means(proxy, gold, 2)
    assert p == pytest.approx(1 / 3, abs=1e-12)
    assert g == pytest.approx(2.5, abs=1e-12)
    # the six pairs: {0,1}->g1 {0,2}->g3 {0,3}->g1 {1,2}->g3 {1,3}->g4 {2,3}->g3: 15 / 6
    subsets = list(itertools.combinations(range(4), 2))
    brute = sum(gold[max(s, key=lambda i: proxy[i])] for s in subsets) / len(subsets)
    assert g == pytest.approx(brute, abs=1e-12)
    assert best_of_n_means(proxy, gold, 1) == pytest.approx((0.25, 2.5), abs=1e-12)
    assert best_of_n_means(proxy, gold, 4) == pytest.approx((0.4, 3.0), abs=1e-12)


def test_fit_bon_recovers_a_and_b_from_a_curve_made_by_hand():
    # gold = d (2 - 0.5 d): d = 0.5 -> 0.875, 1 -> 1.5, 2 -> 2.0, 3 -> 1.5
    d = [0.0, 0.5, 1.0, 2.0, 3.0]
    gold = [0.0, 0.875, 1.5, 2.0, 1.5]
    f = fit_bon(d, gold)
    assert (f.a, f.b, f.r2) == pytest.approx((2.0, 0.5, 1.0), abs=1e-9)
    # peak at d* = a / 2b = 2, gold* = a^2 / 4b = 2
    assert f.peak() == pytest.approx((2.0, 2.0), abs=1e-9)


def test_fit_rl_recovers_a_and_b_from_a_curve_made_by_hand():
    # gold = d (1 - 0.5 log d); peak where 1 - 0.5 log d - 0.5 = 0: d* = e, gold* = 0.5 e
    d = [0.5, 1.0, 2.0, 4.0, 8.0]
    gold = [x * (1 - 0.5 * math.log(x)) for x in d]
    assert gold[1] == 1.0 and gold[2] == pytest.approx(2 * (1 - 0.5 * 0.6931471805599453))
    f = fit_rl(d, gold)
    assert (f.a, f.b, f.r2) == pytest.approx((1.0, 0.5, 1.0), abs=1e-9)
    assert f.peak() == pytest.approx((math.e, 0.5 * math.e), abs=1e-9)


def test_fit_bon_least_squares_and_r2_by_hand():
    # rows (d, -d^2; y): (1, -1; 1), (1, -1; 3), (2, -4; 0)
    # normal equations: s11 = 6, s22 = 18, s12 = -10, s1y = 4, s2y = -4, det = 8
    # a = (18*4 - (-10)(-4)) / 8 = 4;  b = (6*(-4) - (-10)*4) / 8 = 2
    # fitted: d=1 -> 1*(4-2) = 2, d=2 -> 2*(4-4) = 0; SS_res = 1 + 1 + 0 = 2
    # mean y = 4/3, SS_tot = 1/9 + 25/9 + 16/9 = 14/3; R^2 = 1 - 2 / (14/3) = 4/7
    f = fit_bon([1.0, 1.0, 2.0], [1.0, 3.0, 0.0])
    assert (f.a, f.b, f.r2) == pytest.approx((4.0, 2.0, 4 / 7), abs=1e-12)


def test_fits_ignore_d_zero_and_refuse_too_few_points():
    f = fit_bon([0.0, 1.0, 2.0], [5.0, 1.5, 2.0])  # the d = 0 point (5.0) is not fitted
    assert (f.a, f.b) == pytest.approx((2.0, 0.5), abs=1e-9)
    with pytest.raises(ValueError):
        fit_rl([0.0, 1.0], [0.0, 1.0])


def test_peak_is_none_when_the_curve_never_turns_down():
    assert Fit(1.0, -0.1, 1.0, "bon").peak() is None
    assert Fit(1.0, 0.0, 1.0, "rl").peak() is None
    assert Fit(2.0, 0.5, 1.0, "bon")(2.0) == pytest.approx(2.0, abs=1e-12)
