"""Win rate of a policy against an opponent, with a 95% interval, and the length-controlled win rate.

Each comparison is a preference ``y_i`` in [0, 1]: 1 when the judge prefers the policy's response,
0 when it prefers the opponent's, 0.5 for a tie (a judge that gives a probability may give any
value in between). The **win rate** is their mean, so a tie counts as half a win.

**Interval** — the Wilson score interval (Wilson 1927) for a binomial proportion, with
``n * win_rate`` successes out of ``n``. For hard wins/losses it is the usual Wilson interval; with
ties or soft preferences each ``y_i`` has variance at most ``p (1 - p)`` (a [0, 1] variable with
mean ``p``), so the interval is conservative (a little wider than needed), never too narrow.
``bootstrap_interval`` gives the percentile bootstrap instead, for any statistic.

**Length-controlled win rate** — a judge that likes long answers rewards a policy for being long.
Following AlpacaEval 2.0's length-controlled win rate (Dubois et al. 2024, "Length-Controlled
AlpacaEval"), fit a logistic regression of the preference on the standardised length difference

    P(policy preferred) = sigmoid(a + b * z_i),    z_i = (len_policy_i - len_opponent_i) / s

(``s`` the standard deviation of the length differences, about 0 rather than their mean, so that
``z = 0`` still means "equal lengths") and report ``sigmoid(a)``: the win rate the judge would give
at zero length difference. Deviations from AlpacaEval: no per-instruction difficulty term and no
``tanh`` squashing of ``z`` (we compare two systems on one prompt set, not many against a fixed
baseline); a small L2 penalty on ``b`` keeps the fit finite when length separates the
preferences perfectly (a judge that *always* picks the longer answer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval


@dataclass
class WinRate:
    win_rate: float
    ci: tuple[float, float]  # 95% interval
    n: int
    wins: int  # y > 0.5
    ties: int  # y == 0.5
    losses: int  # y < 0.5


def preferences_from_scores(
    policy_scores: Sequence[float], opponent_scores: Sequence[float], *, tie_tol: float = 0.0
) -> list[float]:
    """Pointwise scores (a reward model, a gold reward) -> preferences: 1 / 0.5 / 0.

    A difference of at most ``tie_tol`` is a tie.
    """
    if len(policy_scores) != len(opponent_scores):
        raise ValueError(f"{len(policy_scores)} policy scores but {len(opponent_scores)} opponent")
    out = []
    for a, b in zip(policy_scores, opponent_scores):
        d = float(a) - float(b)
        out.append(0.5 if abs(d) <= tie_tol else (1.0 if d > 0 else 0.0))
    return out


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (successes may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_rate(preferences: Sequence[float]) -> WinRate:
    """Mean preference (ties as half) with its Wilson 95% interval; preferences (N,) in [0, 1]."""
    y = np.asarray(preferences, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no comparisons")
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
        raise ValueError("preferences must be in [0, 1]")
    n = int(y.size)
    rate = float(y.mean())
    return WinRate(
        win_rate=rate,
        ci=wilson_interval(rate * n, n),
        n=n,
        wins=int((y > 0.5).sum()),
        ties=int((y == 0.5).sum()),
        losses=int((y < 0.5).sum()),
    )


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``values`` (N, ...)."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    stats = np.array([statistic(data[rng.integers(0, n, n)]) for _ in range(n_resamples)])
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


# ---------------------------------------------------------------------------------------------
# Length-controlled win rate


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iters: int = 100
) -> tuple[float, float]:
    """Logistic regression ``P(y=1) = sigmoid(a + b x)`` by Newton's method; soft ``y`` allowed.

    Minimises ``sum_i BCE(y_i, sigmoid(a + b x_i)) + l2 / 2 * b^2`` (the intercept is not
    penalised). x, y: (N,). Returns ``(a, b)``.
    """
    X = np.stack([np.ones_like(x), x], axis=1)  # (N, 2)
    w = np.zeros(2)
    penalty = np.diag([0.0, l2])
    for _ in range(iters):
        p = _sigmoid(X @ w)
        grad = X.T @ (p - y) + penalty @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[0]), float(w[1])


@dataclass
class LengthControlled:
    lc_win_rate: float
    ci: tuple[float, float]  # percentile bootstrap 95% interval
    intercept: float  # a
    length_coef: float  # b, per standard deviation of the length difference
    length_scale: float  # s, in the units of the lengths given


def length_controlled_win_rate(
    preferences: Sequence[float],
    policy_lengths: Sequence[float],
    opponent_lengths: Sequence[float],
    *,
    l2: float = 1.0,
    n_resamples: int = 200,
    seed: int = 0,
) -> LengthControlled:
    """Win rate at zero length difference (see the module docstring); all inputs (N,).

    The interval refits the regression on bootstrap resamples of the comparisons.
    """
    y = np.asarray(preferences, dtype=np.float64)
    diff = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(opponent_lengths, np.float64)
    if not (y.shape == diff.shape and y.ndim == 1 and y.size > 0):
        raise ValueError("preferences and lengths must be (N,) with the same N > 0")
    scale = float(np.sqrt(np.mean(diff**2)))
    if scale == 0.0:  # all the same length: nothing to control for
        scale = 1.0
    z = diff / scale

    def lc(rows: np.ndarray) -> float:
        a, _ = fit_logistic(z[rows], y[rows], l2=l2)
        return float(_sigmoid(a))

    a, b = fit_logistic(z, y, l2=l2)
    rng = np.random.default_rng(seed)
    n = y.size
    boots = np.array([lc(rng.integers(0, n, n)) for _ in range(n_resamples)])
    return LengthControlled(
        lc_win_rate=float(_sigmoid(a)),
        ci=(float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))),
        intercept=a,
        length_coef=b,
        length_scale=scale,
    )
