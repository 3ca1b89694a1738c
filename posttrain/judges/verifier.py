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

``Selection.rationale``: what a judge that writes its reasons (the generative judge) said about
the winner: its rating reply (pointwise), or its reply on each comparison the winner took part in
(``"A vs B: ..."``, letters indexing the candidates; with swap both orders' replies).
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
    rationale: list[str] = field(default_factory=list)  # the judge's reasons about the winner


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
        best = max(range(n), key=lambda i: (scores[i], -i))
        replies = getattr(judge, "replies", None) or []
        reasons = [replies[best].strip()] if len(replies) == n else []
        return Selection(best, n, scores, rationale=reasons)
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
        return Selection(
            best,
            len(pairs),
            wins,
            sum(v.unparsed for v in verdicts),
            _reasons(best, zip(pairs, verdicts)),
        )
    if method != "tournament":
        raise ValueError(f"unknown selection method {method!r}; use one of {METHODS}")
    alive = list(range(n))
    rng.shuffle(alive)
    wins = [0.0] * n
    comparisons = unparsed = 0
    played = []
    while len(alive) > 1:
        matches = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        bye = [alive[-1]] if len(alive) % 2 else []
        verdicts = judge.verdicts(
            [(prompt, candidates[i], candidates[j]) for i, j in matches], swap=swap
        )
        comparisons += len(matches)
        unparsed += sum(v.unparsed for v in verdicts)
        played += zip(matches, verdicts)
        nxt = []
        for (i, j), v in zip(matches, verdicts):
            wins[i] += v.p
            wins[j] += 1.0 - v.p
            a_wins = v.p > 0.5 or (v.p == 0.5 and rng.random() < 0.5)
            nxt.append(i if a_wins else j)
        alive = nxt + bye
    return Selection(alive[0], comparisons, wins, unparsed, _reasons(alive[0], played))


def _reasons(winner: int, played) -> list[str]:
    """The judge's replies on the comparisons ``winner`` took part in (empty for judges that
    write no reasons)."""
    out = []
    for (i, j), v in played:
        if winner in (i, j):
            for text in (v.rationale, v.rationale_swapped):
                if text:
                    out.append(f"{chr(65 + i)} vs {chr(65 + j)}: {text}")
    return out
