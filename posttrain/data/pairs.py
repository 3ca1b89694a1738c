"""Turning rankings and multi-aspect scores into preference pairs."""

from __future__ import annotations

import math
import re
from collections import defaultdict

_LETTERS = re.compile(r"^[A-Z]$")


def parse_ranking(ranking: str) -> list[list[str]]:
    """Parse ``"D > C > A = B"`` into tiers, best first: ``[["D"], ["C"], ["A", "B"]]``.

    Raises ``ValueError`` with a readable message on a malformed ranking or a repeated letter.
    """
    if not isinstance(ranking, str) or not ranking.strip():
        raise ValueError("ranking must be a non-empty string like 'D > C > A = B'")
    tiers: list[list[str]] = []
    seen: set[str] = set()
    for part in ranking.split(">"):
        tier = [name.strip() for name in part.split("=")]
        for name in tier:
            if not _LETTERS.match(name):
                raise ValueError(f"ranking {ranking!r}: {name!r} is not a capital letter")
            if name in seen:
                raise ValueError(f"ranking {ranking!r}: {name!r} appears twice")
            seen.add(name)
        tiers.append(tier)
    return tiers


def ranking_to_pairs(ranking: str) -> list[tuple[str, str]]:
    """Every (better, worse) pair a ranking implies; a tie (``=``) yields no pair.

    ``"D > C > A = B"`` -> D>C, D>A, D>B, C>A, C>B. With tiers of sizes n_1..n_m the count is
    sum_{i<j} n_i * n_j (a full order of K items gives K(K-1)/2).
    """
    tiers = parse_ranking(ranking)
    return [
        (better, worse)
        for i, upper in enumerate(tiers)
        for lower in tiers[i + 1 :]
        for better in upper
        for worse in lower
    ]


def letter_index(letter: str) -> int:
    """``"A"`` -> 0, ``"B"`` -> 1, ..."""
    return ord(letter) - ord("A")


def scored_to_pairs(
    scores: list[dict[str, float]], weights: dict[str, float], *, min_gap: float = 0.0
) -> list[tuple[int, int, float]]:
    """Pairs (better index, worse index, weighted score gap) from per-completion aspect scores.

    The overall score of completion i is sum_aspect weights[aspect] * scores[i][aspect]; every pair
    whose overall scores differ by more than ``min_gap`` yields one pair (equal scores are a tie and
    yield none). Raises ``KeyError`` naming an aspect that a completion lacks.
    """
    totals = []
    for i, aspects in enumerate(scores):
        total = 0.0
        for aspect, weight in weights.items():
            if aspect not in aspects:
                raise KeyError(f"completion {i} has no score for aspect {aspect!r}")
            total += weight * float(aspects[aspect])
        totals.append(total)
    pairs = []
    for i in range(len(totals)):
        for j in range(i + 1, len(totals)):
            gap = totals[i] - totals[j]
            if abs(gap) > min_gap:
                pairs.append((i, j, gap) if gap > 0 else (j, i, -gap))
    return pairs


def fit_bradley_terry(
    wins: dict[tuple[str, str], float], *, iters: int = 10_000, tol: float = 1e-12
) -> dict[str, float]:
    """Bradley–Terry scores s_i (log-strengths, mean 0) from a win-count table.

    ``wins[(a, b)]`` = times a beat b (counts may be fractional, e.g. a tie as half a win each).
    Maximum likelihood of P(a beats b) = sigmoid(s_a - s_b) = p_a / (p_a + p_b) by the
    minorise-maximise update of Hunter (2004, Ann. Statist. 32(1)): p_i <- W_i / sum_j n_ij / (p_i + p_j),
    W_i the wins of i, n_ij the games between i and j; renormalised each round (geometric mean 1).
    Two players, 7 wins of 10 -> s_A - s_B = log(7/3), i.e. P = 0.7.

    The maximum exists only if, splitting the players into any two groups, each group beats the
    other at least once (Hunter's assumption 1); a table that breaks this (someone never wins or
    never loses, or a group that never meets the rest) raises ValueError.
    """
    players = sorted({p for pair in wins for p in pair})
    games: dict[tuple[str, str], float] = defaultdict(float)
    won: dict[str, float] = defaultdict(float)
    beats: dict[str, set[str]] = defaultdict(set)
    for (a, b), w in wins.items():
        if a == b or w < 0:
            raise ValueError(f"bad entry {(a, b)}: {w} (players must differ, counts be >= 0)")
        games[(a, b)] += w
        games[(b, a)] += w
        won[a] += w
        if w > 0:
            beats[a].add(b)
    for p in players:  # strongly connected "beats" graph: everyone reaches everyone
        reach, todo = {p}, [p]
        while todo:
            for q in beats[todo.pop()] - reach:
                reach.add(q)
                todo.append(q)
        if len(reach) < len(players):
            raise ValueError(
                f"no finite Bradley-Terry scores: {p} never (even indirectly) beats "
                f"{sorted(set(players) - reach)}"
            )
    strength = dict.fromkeys(players, 1.0)
    for _ in range(iters):
        new = {
            i: won[i]
            / sum(games[(i, j)] / (strength[i] + strength[j]) for j in players if games[(i, j)])
            for i in players
        }
        norm = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        new = {p: v / norm for p, v in new.items()}
        done = max(abs(new[p] - strength[p]) for p in players) < tol
        strength = new
        if done:
            break
    return {p: math.log(v) for p, v in strength.items()}


def bradley_terry_probability(scores: dict[str, float], a: str, b: str) -> float:
    """P(a beats b) = sigmoid(s_a - s_b) under fitted scores."""
    return 1.0 / (1.0 + math.exp(scores[b] - scores[a]))


def wins_to_probabilities(wins: list[list[float]]) -> list[tuple[int, int, float]]:
    """``(i, j, P(i beats j))`` for every pair i < j from a win-count matrix.

    ``wins[i][j]`` = how often completion i beat completion j (the diagonal is ignored). The
    Bradley–Terry scores of :func:`fit_bradley_terry` give every pair's probability
    ``sigmoid(s_i - s_j)``, also for pairs that never met. Two completions with 7 and 3 wins ->
    ``[(0, 1, 0.7)]``. Raises ValueError when the table has no finite fit (someone never wins or
    never loses, even indirectly).
    """
    n = len(wins)
    table = {
        (str(i), str(j)): float(wins[i][j])
        for i in range(n)
        for j in range(n)
        if i != j and wins[i][j]
    }
    scores = fit_bradley_terry(table)
    if len(scores) < n:
        missing = [chr(ord("A") + i) for i in range(n) if str(i) not in scores]
        raise ValueError(f"completion {', '.join(missing)} never played (no wins, no losses)")
    return [
        (i, j, bradley_terry_probability(scores, str(i), str(j)))
        for i in range(n)
        for j in range(i + 1, n)
    ]
