"""Generative-verifier best-of-n: pick one of n candidates with a judge (the "can an LLM pick the
right math solution among 32?" experiment of generative reward models).

Three ways, all deterministic in ``seed``:

- ``tournament``: a single-elimination knock-out. The bracket is shuffled (seeded) so no
  candidate is favoured by its index; each round's matches are judged as one batch; an odd
  candidate out gets a bye; a match with p == 0.5 is decided by a seeded coin. n - 1 comparisons.
- ``round-robin``: every pair is compared; the winner has the largest sum of P(win) (Copeland
  with soft wins; ties broken by index). n (n - 1) / 2 comparisons — best when n is small.
- ``pointwise``: ``judge.score`` rates each candidate on its own; highest wins (ties: lowest
  index). n judge calls; needs a judge with ``score`` (generative, reward model, task).

``judge`` is any object with ``verdicts(items, swap=...)`` (every judge in
``posttrain.judges``); ``swap`` asks each pairwise comparison in both orders.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from posttrain.data.formats import Prompt

Method = Literal["tournament", "round-robin", "pointwise"]
METHODS: tuple[str, ...] = ("tournament", "round-robin", "pointwise")


@dataclass
class Selection:
    index: int  # the chosen candidate
    comparisons: int  # judge comparisons (pairwise) or ratings (pointwise) made
    scores: list[float] = field(default_factory=list)  # per candidate: soft wins or ratings
    unparsed: int = 0  # pairwise judgments whose reply named no winner (counted as ties)


def select_best(
    judge,
    prompt: Prompt,
    candidates: Sequence[str],
    *,
    method: Method = "tournament",
    swap: bool = False,
    seed: int = 0,
) -> Selection:
    """The index of the best candidate according to ``judge`` (see module doc)."""
    n = len(candidates)
    if n == 0:
        raise ValueError("select_best needs at least one candidate")
    if n == 1:
        return Selection(0, 0, [0.0])
    rng = random.Random(seed)
    if method == "pointwise":
        if not hasattr(judge, "score"):
            raise ValueError(f"a {getattr(judge, 'kind', 'this')} judge has no pointwise score")
        scores = [float(s) for s in judge.score([prompt] * n, list(candidates))]
        return Selection(max(range(n), key=lambda i: (scores[i], -i)), n, scores)
    if method == "round-robin":
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        verdicts = judge.verdicts(
            [(prompt, candidates[i], candidates[j]) for i, j in pairs], swap=swap
        )
        wins = [0.0] * n
        for (i, j), v in zip(pairs, verdicts):
            wins[i] += v.p
            wins[j] += 1.0 - v.p
        best = max(range(n), key=lambda i: (wins[i], -i))
        return Selection(best, len(pairs), wins, sum(v.unparsed for v in verdicts))
    if method != "tournament":
        raise ValueError(f"unknown selection method {method!r}; use one of {METHODS}")
    alive = list(range(n))
    rng.shuffle(alive)
    wins = [0.0] * n
    comparisons = unparsed = 0
    while len(alive) > 1:
        matches = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        bye = [alive[-1]] if len(alive) % 2 else []
        verdicts = judge.verdicts(
            [(prompt, candidates[i], candidates[j]) for i, j in matches], swap=swap
        )
        comparisons += len(matches)
        unparsed += sum(v.unparsed for v in verdicts)
        nxt = []
        for (i, j), v in zip(matches, verdicts):
            wins[i] += v.p
            wins[j] += 1.0 - v.p
            a_wins = v.p > 0.5 or (v.p == 0.5 and rng.random() < 0.5)
            nxt.append(i if a_wins else j)
        alive = nxt + bye
    return Selection(alive[0], comparisons, wins, unparsed)
