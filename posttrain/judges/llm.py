"""Pairwise LLM judge in the Constitutional AI multiple-choice format (Bai et al. 2022, sec. 4.1).

The judge model reads::

    Consider the following conversation between a human and an assistant:
    Human: <prompt>
    <principle: a `choose` text sampled from the constitution>
    Options:
    (A) <response a>
    (B) <response b>
    The answer is:

and the soft label is read from its next tokens: with ``l_X = log p(" (X)" | text)`` the sequence
log-probability of the continuation " (A)" or " (B)",

    P(A better) = exp(l_A) / (exp(l_A) + exp(l_B)),

so P(A) + P(B) = 1 by construction (renormalised over the two options; the mass the model puts
anywhere else is ignored — CAI likewise normalises over the choices).

**Tokenization.** We score each option as a whole continuation rather than reading one token, so
the label does not depend on how a tokenizer cuts "(A)": SmolLM2 gives " (A)" -> ["Ġ(", "A", ")"],
whose first token is shared by both options and cancels, leaving p("A" | "... (") p(")" | "... (A")
against the same for B; a tokenizer with a single " A" token or a "(A" token is handled the same
way. Context and continuation are tokenized separately (``ids(text) + ids(" (A)")``); for
byte-level BPE the boundary ":" | " (" never merges, so this equals tokenizing the joined string.

**Chat models.** With a tokenizer that has a chat template (``chat="auto"``), everything up to
"(B) ..." is the user turn and the assistant turn is pre-filled with "The answer is:" — the model
answers in its own voice, and the scored continuation still follows "The answer is:" directly.
``chat="off"`` feeds the plain text (what the CAI paper did with a pretrained model).

A principle is sampled per comparison from the constitution with the judge's own seeded RNG and
used for both orders when swapping (:mod:`posttrain.judges.pairwise`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import torch

from posttrain.data.chat import Encoded, encode_prompt, has_chat_template
from posttrain.data.collate import collate
from posttrain.data.formats import Prompt
from posttrain.judges.constitution import Constitution
from posttrain.judges.pairwise import Item, Verdict, judge_with_principles
from posttrain.models.logprobs import forward_logprobs

INTRO = "Consider the following conversation between a human and an assistant:"
ANSWER = "The answer is:"
OPTIONS = (" (A)", " (B)")
DEFAULT_QUESTION = "Which of these assistant responses is better?"


def conversation_text(prompt: Prompt) -> str:
    """A prompt as 'Human: ...' / 'Assistant: ...' lines (a system message becomes 'System:')."""
    if isinstance(prompt, str):
        return f"Human: {prompt.strip()}"
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names[m['role']]}: {m['content'].strip()}" for m in prompt)


def judge_body(prompt: Prompt, first: str, second: str, principle: str | None) -> str:
    """The judge prompt up to (not including) 'The answer is:'."""
    return (
        f"{INTRO}\n{conversation_text(prompt)}\n{principle or DEFAULT_QUESTION}\n"
        f"Options:\n(A) {first.strip()}\n(B) {second.strip()}"
    )


def format_judge_prompt(prompt: Prompt, first: str, second: str, principle: str | None) -> str:
    """The whole multiple-choice judge prompt as plain text, ending in 'The answer is:'."""
    return f"{judge_body(prompt, first, second, principle)}\n{ANSWER}"


def context_ids(tokenizer, body: str, *, chat: bool) -> list[int]:
    """Token ids of the judge prompt, ending right after 'The answer is:'."""
    if chat:
        return encode_prompt(tokenizer, body) + _ids(tokenizer, ANSWER)
    return list(tokenizer(f"{body}\n{ANSWER}", add_special_tokens=True)["input_ids"])


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def option_probs(
    model,
    tokenizer,
    contexts: Sequence[Sequence[int]],
    options: Sequence[str],
    *,
    batch_size: int = 8,
) -> torch.Tensor:
    """(N, K) probabilities of K option continuations after each of N contexts, renormalised
    over the options: softmax_k(sum of log p(option_k tokens | context))."""
    opt_ids = [_ids(tokenizer, o) for o in options]
    seqs = [
        Encoded(list(ctx) + ids, len(ctx), truncated=False) for ctx in contexts for ids in opt_ids
    ]
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    scores = []
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))  # less padding
    for s in range(0, len(seqs), batch_size):
        idx = order[s : s + batch_size]
        batch = {
            k: v.to(device)
            for k, v in collate([seqs[i] for i in idx], tokenizer.pad_token_id).items()
        }
        out = forward_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        scores += list(zip(idx, out.sum().double().cpu().tolist()))
    model.train(was)
    logps = torch.empty(len(seqs), dtype=torch.float64)
    for i, value in scores:
        logps[i] = value
    return torch.softmax(logps.view(len(contexts), len(options)), dim=-1)  # (N, K)


class LLMJudge:
    """The multiple-choice constitutional judge. ``compare(prompt, a, b) -> P(a better)``."""

    kind = "llm"

    def __init__(
        self,
        model,
        tokenizer,
        constitution: Constitution | None,
        *,
        seed: int = 0,
        swap: bool = False,
        chat: Literal["auto", "on", "off"] = "auto",
        batch_size: int = 8,
    ):
        self.model, self.tokenizer, self.constitution = model, tokenizer, constitution
        self.rng = random.Random(seed)
        self.swap = swap
        self.chat = has_chat_template(tokenizer) if chat == "auto" else chat == "on"
        self.batch_size = batch_size

    def first_better(self, asks) -> list[float]:
        """P(position A better) for each ``(prompt, first, second, principle)``."""
        contexts = [
            context_ids(self.tokenizer, judge_body(pr, x, y, t), chat=self.chat)
            for pr, x, y, t in asks
        ]
        probs = option_probs(
            self.model, self.tokenizer, contexts, OPTIONS, batch_size=self.batch_size
        )
        return probs[:, 0].tolist()

    def verdicts(self, items: Sequence[Item], *, swap: bool | None = None) -> list[Verdict]:
        """Batched comparisons; one principle sampled per item, shared by both orders."""
        return judge_with_principles(
            self.first_better,
            items,
            self.constitution,
            self.rng,
            swap=self.swap if swap is None else swap,
        )

    def compare(self, prompt: Prompt, a: str, b: str) -> float:
        return self.verdicts([(prompt, a, b)])[0].p
