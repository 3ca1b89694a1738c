"""Resolving a reward spec string into a reward source ``(prompts, completions) -> list[float]``.

- ``task:NAME``: a built-in task's gold reward (``posttrain.tasks``), e.g. ``task:counting``;
- ``module:function``: any importable Python function taking (prompts, completions), e.g.
  ``mypkg.rewards:brevity`` (the working directory is importable). A function that also has a
  ``tokenizer`` parameter is given the policy's tokenizer (``policy_tokenizer``), e.g. to count a
  chosen token in the response;
- a directory: a reward model saved by ``posttrain rm`` (or any HF sequence classifier), loaded by
  ``posttrain.models.reward.load_reward_model``; it reads the texts with its own tokenizer;
- ``judge:KIND``: the hook for judges (``posttrain.judges.factory.build_judge``, model from
  ``judge_model``): their pointwise ``score``.

Every source comes back wrapped in :class:`CheckedRewardSource` (a
``posttrain.judges.protocol.RewardSource`` that checks what it returns: one finite number per
completion, naming the spec in the error when it does not).

:func:`parse_spec` is the one reading of a reward or judge spec, shared with
``posttrain.judges.factory`` (judges), so a form means the same thing everywhere.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from posttrain.errors import UserError

JUDGE_NAMES = ("llm", "generative", "reward-model")  # judges that are a name, not a spec


@dataclass(frozen=True)
class Spec:
    """A parsed reward / judge spec: ``kind`` is ``task`` (``name`` the task), ``judge``
    (``judge:KIND``, ``name`` the KIND), one of :data:`JUDGE_NAMES` (a judge by its bare name),
    ``directory`` (a reward-model directory), ``function`` (``module:function``) or ``unknown``."""

    kind: str
    name: str
    text: str


def parse_spec(spec: str) -> Spec:
    """The one reading of a spec string, in this order: ``task:NAME``, ``judge:KIND``, a bare
    judge name (``llm``, ``generative``, ``reward-model``), an existing directory,
    ``module:function`` (no ``/`` in the module part); anything else is ``unknown``. (A directory
    named like a judge is given as ``./llm``.)"""
    head, sep, rest = spec.partition(":")
    if sep and head == "task":
        return Spec("task", rest, spec)
    if sep and head == "judge":
        return Spec("judge", rest, spec)
    if spec in JUDGE_NAMES:
        return Spec(spec, spec, spec)
    if spec and Path(spec).is_dir():
        return Spec("directory", spec, spec)
    if sep and head and rest and "/" not in head:
        return Spec("function", spec, spec)
    return Spec("unknown", spec, spec)


class CheckedRewardSource:
    """A named reward callable ``(prompts, completions) -> list[float]`` (a
    ``posttrain.judges.protocol.RewardSource``) that validates its output. ``judge``: the judge
    behind a ``judge:KIND`` source (its ``replies``, when it writes any, are its reasons)."""

    def __init__(self, spec: str, fn: Callable, judge=None):
        self.spec, self.fn, self.judge = spec, fn, judge

    def __call__(self, prompts, completions) -> list[float]:
        scores = self.fn(list(prompts), list(completions))
        try:
            scores = [float(s) for s in scores]
        except (TypeError, ValueError):
            raise UserError(f"--reward: {self.spec} did not return a list of numbers") from None
        if len(scores) != len(completions):
            raise UserError(
                f"--reward: {self.spec} returned {len(scores)} scores for {len(completions)} "
                "completions"
            )
        if not all(math.isfinite(s) for s in scores):
            raise UserError(f"--reward: {self.spec} returned a non-finite score")
        return scores

    def rationales(self, n: int) -> list[str] | None:
        """The judge's written reasons for the last ``n`` scores (a generative judge's rating
        replies), or None when the source writes none."""
        replies = getattr(self.judge, "replies", None)
        return [r.strip() for r in replies] if replies and len(replies) == n else None

    def __repr__(self) -> str:
        return f"CheckedRewardSource({self.spec!r})"


def load_reward_source(
    spec: str,
    *,
    policy_tokenizer=None,
    normalize: bool = False,
    judge_model: str | None = None,
    device=None,
    dtype: str = "float32",
) -> CheckedRewardSource:
    """The reward source named by ``spec``; UserError for one that cannot be resolved.

    ``normalize``: whiten a reward model's scores with its training-set mean/std. ``device``:
    where a reward model or judge model is loaded (None: the CPU); ``dtype``: what a reward model
    computes in (the online recipes pass the policy's: scoring SmolLM2-sized reward models in
    bfloat16 is ~4x faster on a CPU than in float32).
    """
    if not spec:
        raise UserError("--reward: give task:NAME, module:function or a reward-model directory")
    parsed = parse_spec(spec)
    if parsed.kind == "task":
        from posttrain.tasks import get_task

        return CheckedRewardSource(spec, get_task(parsed.name).reward)
    if parsed.kind == "directory":
        from posttrain.models.reward import load_reward_model

        model = load_reward_model(spec, dtype=dtype, device=device)
        return CheckedRewardSource(spec, model.as_reward_source(normalize=normalize))
    if parsed.kind == "judge":
        from posttrain.judges.factory import build_judge, check_judge

        check_judge(parsed.name, judge_model, field="reward", model_field="judge_model")
        judge = build_judge(parsed.name, judge_model, device=device)
        if not hasattr(judge, "score"):
            raise UserError(f"--reward: judge {spec!r} has no pointwise score")
        return CheckedRewardSource(spec, judge.score, judge=judge)
    if parsed.kind == "function":
        module, _, name = spec.partition(":")
        if os.getcwd() not in sys.path:  # a user's own module in the working directory
            sys.path.append(os.getcwd())
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"--reward: cannot import {spec!r} ({exc})") from None
        if not callable(fn):
            raise UserError(f"--reward: {spec!r} is not callable")
        if _takes_tokenizer(fn):
            if policy_tokenizer is None:
                raise UserError(f"--reward: {spec!r} needs the policy's tokenizer")
            fn = partial(fn, tokenizer=policy_tokenizer)
        return CheckedRewardSource(spec, fn)
    if parsed.kind in JUDGE_NAMES:
        raise UserError(f"--reward: {spec!r} is a judge; as a reward give judge:{spec}")
    raise UserError(
        f"--reward: {spec!r} is neither task:NAME, module:function, judge:KIND nor a directory"
    )


def _takes_tokenizer(fn) -> bool:
    try:
        return "tokenizer" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
