"""Pairwise judging shared by every judge: verdicts, position-swap debiasing, summary counts.

A position-sensitive judge (an LLM reading "(A) ... (B) ...") is a function
``first_better(items) -> list[float | None]`` giving, for each ``(prompt, first, second,
principle)``, the probability that the response shown in position A is better (None: the
judge's output could not be read, counted and treated as a tie, 0.5).

:func:`judge_pairs` turns it into :class:`Verdict` s about ``(prompt, a, b)``:

- without swap: ``p = P_A(a, b)``, a shown first;
- with swap (position-swap debiasing): also ask with the order reversed and average the two
  estimates of P(a better): ``p = (P_A(a, b) + (1 - P_A(b, a))) / 2``. A judge that always
  answers (A) gives ``1`` and ``1 - 1 = 0``, so ``p = 0.5``: its position preference cancels, and
  the pair is counted as position-inconsistent.

``swap_agree`` is True when both orders name the same winner (``sign(P_A(a,b) - 0.5) ==
sign((1 - P_A(b,a)) - 0.5)``); the **position-bias rate** of a run is the share of swapped
comparisons where they do not. ``first_rate`` is the share of single-order judgments that chose
position A (0.5 for a judge with no position preference on balanced data).

:class:`FunctionJudge` makes a judge of any Python function ``fn(prompts, firsts, seconds) ->
list[P(first better)]`` named ``module:function`` (e.g. a stub that always answers A, to see
what swapping does to a position-biased judge).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from posttrain.data.formats import Prompt
from posttrain.errors import UserError
from posttrain.judges.constitution import Constitution

Item = tuple[Prompt, str, str]  # (prompt, a, b)
FirstBetter = Callable[[list[tuple[Prompt, str, str, str | None]]], list[float | None]]


@dataclass
class Verdict:
    """The judge's view of one comparison of ``a`` with ``b``."""

    p: float  # P(a better than b), both orders combined when swapped
    p_forward: float  # P(a better) with a shown in position A
    p_swapped: float | None = None  # P(a better) with a shown in position B (None: not swapped)
    principle: str | None = None  # id of the principle sampled for this comparison
    unparsed: int = 0  # orders whose output could not be read (each counted as a tie)
    rationale: str | None = None  # a generative judge's reasons, a shown in position A
    rationale_swapped: str | None = None  # ... and with a shown in position B (when swapped)

    @property
    def swap_agree(self) -> bool | None:
        if self.p_swapped is None:
            return None
        return _side(self.p_forward) == _side(self.p_swapped)

    @property
    def tie(self) -> bool:
        return self.p == 0.5


def _side(p: float) -> int:
    return (p > 0.5) - (p < 0.5)


def judge_pairs(
    first_better: FirstBetter,
    items: Sequence[Item],
    *,
    swap: bool,
    principles: Sequence[str | None] | None = None,
    principle_ids: Sequence[str | None] | None = None,
) -> list[Verdict]:
    """Verdicts for ``(prompt, a, b)`` items from a position-sensitive judge (see module doc).

    ``principles`` (one text per item, or None) is passed to the judge unchanged for both orders;
    ``principle_ids`` is recorded in the verdicts.
    """
    n = len(items)
    texts = list(principles) if principles is not None else [None] * n
    ids = list(principle_ids) if principle_ids is not None else [None] * n
    asks = [(pr, a, b, t) for (pr, a, b), t in zip(items, texts)]
    if swap:
        asks += [(pr, b, a, t) for (pr, a, b), t in zip(items, texts)]
    raw = first_better(asks)
    out = []
    for i in range(n):
        fwd = raw[i]
        unparsed = fwd is None
        p_fwd = 0.5 if fwd is None else float(fwd)
        if not swap:
            out.append(Verdict(p=p_fwd, p_forward=p_fwd, principle=ids[i], unparsed=int(unparsed)))
            continue
        rev = raw[n + i]
        unparsed_rev = rev is None
        p_rev = 0.5 if rev is None else 1.0 - float(rev)  # P(a better) from the swapped order
        out.append(
            Verdict(
                p=(p_fwd + p_rev) / 2,
                p_forward=p_fwd,
                p_swapped=p_rev,
                principle=ids[i],
                unparsed=int(unparsed) + int(unparsed_rev),
            )
        )
    return out


def sample_principles(
    constitution: Constitution | None, n: int, rng: random.Random
) -> tuple[list[str | None], list[str | None]]:
    """``n`` principles drawn with ``rng`` (one per comparison): (texts, ids)."""
    if constitution is None:
        return [None] * n, [None] * n
    drawn = [constitution.sample(rng) for _ in range(n)]
    return [p.choose for p in drawn], [p.id for p in drawn]


def judge_with_principles(
    first_better: FirstBetter,
    items: Sequence[Item],
    constitution: Constitution | None,
    rng: random.Random,
    *,
    swap: bool,
) -> list[Verdict]:
    """:func:`judge_pairs` with one principle drawn per item (shared by both orders): the
    ``verdicts`` of every constitution-guided judge."""
    texts, ids = sample_principles(constitution, len(items), rng)
    return judge_pairs(first_better, items, swap=swap, principles=texts, principle_ids=ids)


def summarize(verdicts: Sequence[Verdict]) -> dict[str, float | int | None]:
    """Counts and rates of a batch of verdicts (what ``posttrain judge`` prints and records).

    - ``comparisons``; ``ties`` (p exactly 0.5); ``unparsed`` (orders whose output did not parse)
    - ``position_bias_rate``: share of swapped comparisons whose two orders disagree (None when
      nothing was swapped); ``swap_agreement`` = 1 - that
    - ``first_rate``: share of decided single-order judgments that chose position A
    """
    n = len(verdicts)
    swapped = [v for v in verdicts if v.p_swapped is not None]
    first = [v.p_forward for v in verdicts if v.p_forward != 0.5]
    # in the swapped order position A held b, so "chose A" there is p_swapped < 0.5
    first += [1.0 - v.p_swapped for v in swapped if v.p_swapped != 0.5]
    disagree = sum(1 for v in swapped if not v.swap_agree)
    return {
        "comparisons": n,
        "ties": sum(v.tie for v in verdicts),
        "unparsed": sum(v.unparsed for v in verdicts),
        "position_bias_rate": disagree / len(swapped) if swapped else None,
        "swap_agreement": 1 - disagree / len(swapped) if swapped else None,
        "first_rate": sum(p > 0.5 for p in first) / len(first) if first else None,
    }


def is_pairwise_function(fn) -> bool:
    """True for a function of three positional arguments (prompts, firsts, seconds): a pairwise
    judge; a reward source takes two (prompts, completions)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return len(positional) == 3


class FunctionJudge:
    """A pairwise judge from ``fn(prompts, firsts, seconds) -> list[float | None]``, each the
    probability that the response shown first (position A) is better (None: no verdict, a tie).
    ``verdicts`` and ``compare`` as every judge; ``swap`` asks both orders (see module doc)."""

    kind = "function"

    def __init__(self, spec: str, fn, *, swap: bool = False):
        self.spec, self.fn, self.swap = spec, fn, swap

    def first_better(self, asks) -> list[float | None]:
        prompts, firsts, seconds = ([a[k] for a in asks] for k in range(3))
        out = list(self.fn(prompts, firsts, seconds))
        if len(out) != len(asks):
            raise UserError(
                f"--judge: {self.spec} returned {len(out)} values for {len(asks)} pairs"
            )
        for v in out:
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise UserError(
                    f"--judge: {self.spec} returned {v!r}; expected P in [0, 1] or None"
                )
        return [None if v is None else float(v) for v in out]

    def verdicts(self, items: Sequence[Item], *, swap: bool | None = None) -> list[Verdict]:
        return judge_pairs(self.first_better, items, swap=self.swap if swap is None else swap)

    def compare(self, prompt: Prompt, a: str, b: str) -> float:
        return self.verdicts([(prompt, a, b)])[0].p


def load_function_judge(spec: str, *, swap: bool = False, field: str = "judge") -> FunctionJudge:
    """The :class:`FunctionJudge` named ``module:function``; UserError when it cannot be imported
    or does not take (prompts, firsts, seconds)."""
    from posttrain.judges.sources import load_reward_source

    try:
        fn = load_reward_source(spec).fn
    except UserError as exc:
        raise UserError(str(exc).replace("--reward:", f"--{field}:", 1)) from None
    if not is_pairwise_function(fn):
        raise UserError(
            f"--{field}: {spec} must take (prompts, firsts, seconds) and return P(first better)"
        )
    return FunctionJudge(spec, fn, swap=swap)
