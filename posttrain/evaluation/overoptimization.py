"""Reward-model over-optimisation, measured as Gao, Schulman & Hilton (2022) did.

"Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760) measures how far a policy has
moved from its initial policy by the distance ``d = sqrt(KL(pi || pi_init))`` and fits the gold
reward, relative to the initial policy's, with (their eq. 1 and 2, p. 3)

- best-of-n:  ``R_bon(d) = d (alpha_bon - beta_bon d)``        (:func:`fit_bon`)
- RL:         ``R_RL(d)  = d (alpha_RL - beta_RL log d)``       (:func:`fit_rl`)

Both are linear in (a, b), so the fit is ordinary least squares without an intercept (both forms
are 0 at d = 0 by construction) on the features ``(d, -d^2)`` or ``(d, -d log d)``.

Best-of-n's KL from the sampling policy is exact (Stiennon et al. 2020, appendix G.3; Gao et al.
sec. 2.2): ``KL_bon(n) = log n - (n - 1) / n`` (:func:`bon_kl`). Best-of-n's expected rewards are
estimated from ``N >= n`` samples per prompt with Gao et al.'s unbiased estimator (appendix I):
the mean over every size-``n`` subset of the samples of the gold (and proxy) reward of the
subset's proxy-best sample (:func:`best_of_n_means`).

Every function here is pure (lists of floats in, floats out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def bon_kl(n: int) -> float:
    """``KL(best-of-n || base) = log n - (n - 1) / n`` nats, exact for a base policy without ties
    among its samples (Stiennon et al. 2020, app. G.3; Gao et al. 2022, sec. 2.2): 0 at n = 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(n_samples: int, n: int) -> list[float]:
    """Probability that the ``i``-th lowest-ranked of ``n_samples`` samples (i = 0 .. N-1) is the
    best of a uniformly drawn size-``n`` subset: ``C(i, n-1) / C(N, n)`` (Gao et al. 2022, app. I).
    The weights sum to 1 (hockey-stick identity)."""
    if not 1 <= n <= n_samples:
        raise ValueError(f"need 1 <= n <= n_samples, got n={n}, n_samples={n_samples}")
    total = math.comb(n_samples, n)
    return [math.comb(i, n - 1) / total for i in range(n_samples)]


def best_of_n_means(proxy: Sequence[float], gold: Sequence[float], n: int) -> tuple[float, float]:
    """Unbiased estimates of best-of-n's expected ``(proxy, gold)`` reward for ONE prompt, from
    ``N >= n`` samples of the base policy with their proxy and gold scores: samples are ranked by
    proxy score (ties broken by sample order) and weighted by :func:`best_of_n_weights`."""
    if len(proxy) != len(gold):
        raise ValueError("proxy and gold must have the same length")
    order = sorted(range(len(proxy)), key=lambda i: proxy[i])
    w = best_of_n_weights(len(proxy), n)
    return (
        sum(wi * proxy[i] for wi, i in zip(w, order)),
        sum(wi * gold[i] for wi, i in zip(w, order)),
    )


@dataclass(frozen=True)
class Fit:
    """``gold ~ d (a - b * g(d))`` with ``g(d) = d`` (best-of-n) or ``log d`` (RL)."""

    a: float
    b: float
    r2: float  # 1 - SS_res / SS_tot, SS_tot about the mean of the fitted gold values
    form: str  # "bon" or "rl"

    def __call__(self, d: float) -> float:
        if d <= 0:
            return 0.0
        g = d if self.form == "bon" else math.log(d)
        return d * (self.a - self.b * g)

    def peak(self) -> tuple[float, float] | None:
        """``(d*, gold at d*)`` where the fitted curve is highest, or None when it never turns
        down (b <= 0). bon: d* = a / (2b), gold* = a^2 / (4b); rl: d* = exp(a/b - 1) (the root
        of a - b log d - b), gold* = b d*."""
        if self.b <= 0:
            return None
        if self.form == "bon":
            d = self.a / (2 * self.b)
            return (d, self.a * self.a / (4 * self.b)) if d > 0 else None
        d = math.exp(self.a / self.b - 1)
        return d, self.b * d


def _lstsq2(x1: Sequence[float], x2: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least squares of y on (x1, x2) without an intercept, via the 2x2 normal equations."""
    s11 = sum(u * u for u in x1)
    s22 = sum(v * v for v in x2)
    s12 = sum(u * v for u, v in zip(x1, x2))
    s1y = sum(u * t for u, t in zip(x1, y))
    s2y = sum(v * t for v, t in zip(x2, y))
    det = s11 * s22 - s12 * s12
    if abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError("the fit needs at least two distinct d > 0 (the features are collinear)")
    return (s22 * s1y - s12 * s2y) / det, (s11 * s2y - s12 * s1y) / det


def _fit(d: Sequence[float], gold: Sequence[float], form: str) -> Fit:
    pts = [(x, y) for x, y in zip(d, gold) if x > 0]
    if len(pts) < 2:
        raise ValueError(f"a {form} fit needs at least two points with d > 0, got {len(pts)}")
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts]
    second = [-x * x for x in xs] if form == "bon" else [-x * math.log(x) for x in xs]
    a, b = _lstsq2(xs, second, ys)
    fit = Fit(a, b, 0.0, form)
    mean = sum(ys) / len(ys)
    ss_res = sum((y - fit(x)) ** 2 for x, y in pts)
    ss_tot = sum((y - mean) ** 2 for y in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return Fit(a, b, r2, form)


def fit_bon(d: Sequence[float], gold: Sequence[float]) -> Fit:
    """Least-squares fit (no intercept) of ``gold = d (a - b d)`` over the points with d > 0
    (Gao et al. 2022, eq. 1). ``d`` = sqrt(KL); ``gold`` relative to the initial policy's."""
    return _fit(d, gold, "bon")


def fit_rl(d: Sequence[float], gold: Sequence[float]) -> Fit:
    """Least-squares fit (no intercept) of ``gold = d (a - b log d)`` over the points with d > 0
    (Gao et al. 2022, eq. 2). ``d`` = sqrt(KL); ``gold`` relative to the initial policy's."""
    return _fit(d, gold, "rl")
