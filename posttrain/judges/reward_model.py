"""Reward-model judge: a pointwise scorer turned into a pairwise judge by Bradley-Terry.

``compare(prompt, a, b) = sigmoid(r(prompt, a) - r(prompt, b))`` — the preference probability
the reward model was trained to fit (Bradley & Terry 1952; InstructGPT, Ouyang et al. 2022,
eq. 1). Any reward source ``(prompts, completions) -> list[float]`` works: a trained reward model
(``RewardModelJudge.from_path``, via ``posttrain.models.reward.load_reward_model``), a task's
gold reward, a Python function. Scoring sees one response at a time, so the verdict does not
depend on the order; with swap the second order is the same number (swap agreement 100%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from posttrain.data.formats import Prompt
from posttrain.judges.pairwise import Item, Verdict

ScoreFn = Callable[[Sequence[Prompt], Sequence[str]], list[float]]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class ScoreJudge:
    """Pairwise judge from a pointwise score: ``P(a better) = sigmoid((r_a - r_b) / temperature)``;
    ``temperature = 0`` gives hard labels (1, 0, or 0.5 on equal scores)."""

    kind = "score"

    def __init__(self, score_fn: ScoreFn, *, temperature: float = 1.0, name: str = ""):
        self.score_fn, self.temperature, self.name = score_fn, temperature, name

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        return [float(r) for r in self.score_fn(list(prompts), list(completions))]

    def prob(self, r_a: float, r_b: float) -> float:
        if self.temperature == 0:
            return 0.5 if r_a == r_b else float(r_a > r_b)
        return _sigmoid((r_a - r_b) / self.temperature)

    def verdicts(self, items: Sequence[Item], *, swap: bool = False) -> list[Verdict]:
        prompts = [pr for pr, _, _ in items]
        rewards = self.score(prompts + prompts, [a for _, a, _ in items] + [b for _, _, b in items])
        n = len(items)
        out = []
        for i in range(n):
            p = self.prob(rewards[i], rewards[n + i])
            out.append(Verdict(p=p, p_forward=p, p_swapped=p if swap else None))
        return out

    def compare(self, prompt: Prompt, a: str, b: str) -> float:
        return self.verdicts([(prompt, a, b)])[0].p


class RewardModelJudge(ScoreJudge):
    """A trained reward model as a judge: ``compare = sigmoid(r_a - r_b)``."""

    kind = "reward-model"

    @classmethod
    def from_path(cls, path: str, *, device=None) -> RewardModelJudge:
        from posttrain.models.reward import load_reward_model  # the reward-model engineer's loader

        rm = load_reward_model(path, device=device)
        return cls(rm.score, temperature=1.0, name=str(path))
