"""Generative judge: the model writes its reasons, then a verdict we parse (generative reward
models: Mahan et al. 2024, arXiv:2410.12832; Zhang et al. 2024, arXiv:2408.15240).

Pairwise: the same conversation / principle / options as the multiple-choice judge
(:mod:`posttrain.judges.llm`), followed by an instruction to reason briefly and end with a line
"Verdict: (A)" or "Verdict: (B)". The reply is generated (greedy by default) and parsed by
:func:`parse_verdict`; the verdict is hard (1.0 or 0.0). The reply itself is kept as the
verdict's ``rationale`` (``posttrain judge`` writes it beside ``p_chosen``). A reply that names no winner is a tie
(0.5) and is counted (``Verdict.unparsed``), never an error.

Pointwise (``score``, for best-of-n): the judge rates one response "Score: N" on 1-10, parsed by
:func:`parse_score`; an unreadable score becomes the middle of the scale (5.5), counted in
``self.unparsed_scores``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch

from posttrain.data.chat import encode_prompt, has_chat_template
from posttrain.data.formats import Prompt
from posttrain.judges.constitution import Constitution
from posttrain.judges.llm import conversation_text, judge_body
from posttrain.judges.pairwise import Item, Verdict, judge_with_principles
from posttrain.rollout import decode_responses, generate

PAIR_INSTRUCTION = (
    "First explain in one or two sentences which option is better and why. Then write your "
    "verdict on its own line, exactly as 'Verdict: (A)' or 'Verdict: (B)'."
)
SCORE_INSTRUCTION = (
    "Rate the assistant's response from 1 (very bad) to 10 (excellent) for being helpful, "
    "correct and harmless. First explain in one or two sentences, then write 'Score: N' on its "
    "own line."
)
SCORE_MIN, SCORE_MAX = 1.0, 10.0

# most specific first; within a pattern the LAST match wins (a conclusion follows its reasons)
_VERDICT_PATTERNS = [
    r"\bverdict\s*(?:is)?\s*[:\-]?\s*\**\s*[\(\[]?\s*(?:option|response)?\s*([AB])\b",
    r"\[\[\s*([AB])\s*\]\]",
    r"\b(?:final\s+)?(?:answer|choice)\s*(?:is)?\s*[:\-]?\s*[\(\[]?\s*(?:option|response)?\s*([AB])\b",
    r"\b(?:option|response|assistant)\s*[\(\[]?([AB])[\)\]]?\s+is\s+(?:the\s+)?(?:better|best|"
    r"preferred|more\s+\w+|less\s+\w+|correct)",
    r"\b(?:prefer|choose|pick|select)\s+(?:option\s+|response\s+)?[\(\[]?([AB])\b",
]
# "the first option is better" -> A (ordinals are matched separately: they name no letter)
_ORDINAL = (
    r"\b(first|second)\s+(?:option|response|answer|one)\s+is\s+(?:the\s+)?(?:better|best|"
    r"preferred|more\s+\w+|less\s+\w+|correct)"
)
_SCORE_PATTERNS = [
    r"\bscore\s*(?:is|of)?\s*[:=\-]?\s*\**\s*(\d+(?:\.\d+)?)",
    r"\b(\d+(?:\.\d+)?)\s*/\s*10\b",
    r"\b(\d+(?:\.\d+)?)\s+out\s+of\s+10\b",
]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None from a judge's free-text reply (case-insensitive, markdown tolerated).

    Tries, in order: 'Verdict: (A)'; '[[A]]'; 'answer/choice: B'; 'Option A is better'; 'I
    prefer B'; 'the first/second option is better'. The last match of the first pattern that
    matches wins. Failing those, a reply whose last line is a bare letter ('(B)', 'B.'). A letter
    merely mentioned ('(A) ...' echoed from the prompt) does not count. Otherwise None: a tie,
    to be counted.
    """
    for pattern in _VERDICT_PATTERNS:
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return found[-1].upper()
    found = re.findall(_ORDINAL, text, flags=re.IGNORECASE)
    if found:
        return "A" if found[-1].lower() == "first" else "B"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    bare = re.fullmatch(r"[\(\[]?([AB])[\)\]]?\.?", lines[-1]) if lines else None
    return bare.group(1) if bare else None


def parse_score(text: str) -> float | None:
    """A 1-10 rating from a reply ('Score: 7', '7/10', '7 out of 10'); None if absent or off-scale."""
    for pattern in _SCORE_PATTERNS:
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            value = float(found[-1])
            return value if SCORE_MIN <= value <= SCORE_MAX else None
    return None


class GenerativeJudge:
    """Reasons, then a verdict. ``compare(prompt, a, b) -> P(a better)``; ``score`` rates 1-10."""

    kind = "generative"

    def __init__(
        self,
        model,
        tokenizer,
        constitution: Constitution | None,
        *,
        seed: int = 0,
        swap: bool = False,
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        batch_size: int = 8,
    ):
        self.model, self.tokenizer, self.constitution = model, tokenizer, constitution
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.swap = swap
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.batch_size = batch_size
        self.replies: list[str] = []  # the last batch's raw replies (for traces and debugging)
        self.unparsed_scores = 0

    def _generate(self, texts: Sequence[str]) -> list[str]:
        tok = self.tokenizer
        if has_chat_template(tok):
            prompts = [encode_prompt(tok, t) for t in texts]
        else:
            prompts = [list(tok(t + "\n", add_special_tokens=True)["input_ids"]) for t in texts]
        replies: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            rollout = generate(
                self.model,
                prompts[i : i + self.batch_size],
                pad_id=tok.pad_token_id,
                eos_id=tok.eos_token_id,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                generator=self.generator,
            )
            replies += decode_responses(tok, rollout)
        return replies

    def first_better(self, asks) -> list[float | None]:
        texts = [f"{judge_body(pr, x, y, t)}\n{PAIR_INSTRUCTION}" for pr, x, y, t in asks]
        self.replies = self._generate(texts)
        letters = [parse_verdict(r) for r in self.replies]
        return [None if v is None else float(v == "A") for v in letters]

    def verdicts(self, items: Sequence[Item], *, swap: bool | None = None) -> list[Verdict]:
        """Verdicts with the judge's reasons: ``rationale`` is its reply with ``a`` shown as (A),
        ``rationale_swapped`` (with swap) its reply with ``a`` shown as (B)."""
        swap = self.swap if swap is None else swap
        out = judge_with_principles(
            self.first_better, items, self.constitution, self.rng, swap=swap
        )
        n = len(items)
        for i, v in enumerate(out):  # first_better saw the forward orders, then the swapped
            v.rationale = self.replies[i].strip()
            if swap:
                v.rationale_swapped = self.replies[n + i].strip()
        return out

    def compare(self, prompt: Prompt, a: str, b: str) -> float:
        return self.verdicts([(prompt, a, b)])[0].p

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        """Pointwise 1-10 ratings (B,); unreadable ones are 5.5 and counted."""
        texts = [
            f"Consider the following conversation between a human and an assistant:\n"
            f"{conversation_text(p)}\nAssistant: {c.strip()}\n{SCORE_INSTRUCTION}"
            for p, c in zip(prompts, completions)
        ]
        self.replies = self._generate(texts)
        scores = [parse_score(r) for r in self.replies]
        self.unparsed_scores += sum(s is None for s in scores)
        return [(SCORE_MIN + SCORE_MAX) / 2 if s is None else s for s in scores]
