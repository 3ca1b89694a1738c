"""Alignment tax and calibration: what the policy can still do on data the preferences never covered.

- **Held-out log-likelihood**: mean negative log-likelihood per response token (nats) of held-out
  (prompt, completion) records, before (reference) vs after (policy). A rise is a tax: the policy
  has moved its probability mass away from text it used to model (Ouyang et al. 2022 measure the
  tax on public NLP benchmarks and add a pretraining term, PPO-ptx, to pay less of it).
- **Known-answer multiple choice**: each item is a prompt, two or more choices and the index of the
  right one. Each choice is scored by the summed log-probability of its tokens after the prompt
  (as lm-evaluation-harness's ``acc``); the model's answer is the best-scored choice and its
  **confidence** the softmax of the choice scores at that answer. Reported: accuracy, mean
  confidence and the **expected calibration error** (Guo et al. 2017, eq. 3; equal-width bins)
  ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``. RLHF is known to degrade calibration
  (GPT-4 technical report, fig. 8; Bai et al. 2022).
- ``cloze_items`` makes a known-answer task from any held-out text: cut the text after a word,
  and ask for the true next word against a distractor that also follows the previous word
  somewhere in the texts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from posttrain.data import collate, encode_example, encode_prompt, encode_response
from posttrain.data.chat import join_truncated
from posttrain.models import forward_logprobs


@dataclass
class ChoiceItem:
    prompt: str
    choices: list[str]  # continuations, appended to the prompt as they are (mind the spaces)
    answer: int  # index of the right choice


@dataclass
class ChoiceResult:
    accuracy: float
    confidence: float  # mean confidence in the chosen answer
    ece: float
    n: int


@torch.no_grad()
def heldout_nll(
    model, tokenizer, records: Sequence[dict], *, batch_size: int = 32, max_length: int = 512
) -> float:
    """Mean NLL per response token (nats) of ``records`` (``prompt``, ``completion``), EOS included."""
    was = model.training
    model.eval()
    encoded = [encode_example(tokenizer, r["prompt"], r["completion"], max_length) for r in records]
    total, count = 0.0, 0.0
    for i in range(0, len(encoded), batch_size):
        batch = collate(encoded[i : i + batch_size], tokenizer.pad_token_id)
        out = forward_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        total -= float(out.logps.sum())
        count += float(out.mask.sum())
    model.train(was)
    return total / max(count, 1.0)


@torch.no_grad()
def choice_logprobs(
    model, tokenizer, items: Sequence[ChoiceItem], *, batch_size: int = 32, max_length: int = 512
) -> list[list[float]]:
    """Summed log-prob of each choice's tokens after its prompt; one list per item."""
    was = model.training
    model.eval()
    flat = [
        join_truncated(
            encode_prompt(tokenizer, it.prompt),
            encode_response(tokenizer, c, add_eos=False),
            max_length,
        )
        for it in items
        for c in it.choices
    ]
    scores: list[float] = []
    for i in range(0, len(flat), batch_size):
        batch = collate(flat[i : i + batch_size], tokenizer.pad_token_id)
        out = forward_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        scores += out.sum().tolist()
    model.train(was)
    result, k = [], 0
    for it in items:
        result.append(scores[k : k + len(it.choices)])
        k += len(it.choices)
    return result


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], *, n_bins: int = 10
) -> float:
    """ECE with ``n_bins`` equal-width confidence bins on [0, 1] (a confidence of 1 goes in the last)."""
    n = len(confidence)
    if n == 0:
        return float("nan")
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for c, ok in zip(confidence, correct):
        bins[min(int(c * n_bins), n_bins - 1)].append((c, ok))
    ece = 0.0
    for b in bins:
        if b:
            conf = sum(c for c, _ in b) / len(b)
            acc = sum(ok for _, ok in b) / len(b)
            ece += len(b) / n * abs(acc - conf)
    return ece


def multiple_choice(
    model, tokenizer, items: Sequence[ChoiceItem], *, batch_size: int = 32, n_bins: int = 10
) -> ChoiceResult:
    """Accuracy, mean confidence and ECE of ``model`` on known-answer items."""
    scores = choice_logprobs(model, tokenizer, items, batch_size=batch_size)
    conf, correct = [], []
    for item, s in zip(items, scores):
        probs = torch.softmax(torch.tensor(s, dtype=torch.float64), dim=0)  # (C,)
        pick = int(probs.argmax())
        conf.append(float(probs[pick]))
        correct.append(pick == item.answer)
    n = len(items)
    return ChoiceResult(
        accuracy=sum(correct) / max(n, 1),
        confidence=sum(conf) / max(n, 1),
        ece=expected_calibration_error(conf, correct, n_bins=n_bins),
        n=n,
    )


def cloze_items(
    texts: Sequence[str], n: int, seed: int, *, min_context: int = 3
) -> list[ChoiceItem]:
    """``n`` two-way cloze items from ``texts``: the true next word vs a plausible wrong one.

    Each item cuts a text after at least ``min_context`` words. The distractor is a word that
    follows the same previous word somewhere in ``texts`` (so both choices fit locally and only
    the longer context tells them apart: "... dull plot, and the cast was [awful | brilliant]"),
    or any other word of ``texts`` when no such word exists. Choices are ``" " + word``, in
    random order.
    """
    rng = random.Random(seed)
    split = [t.split() for t in texts]
    vocab = sorted({w for words in split for w in words})
    following: dict[str, set[str]] = {}
    for words in split:
        for a, b in zip(words, words[1:]):
            following.setdefault(a, set()).add(b)
    usable = [w for w in split if len(w) > min_context]
    if not usable or len(vocab) < 2:
        raise ValueError("cloze_items needs texts longer than min_context words")
    items = []
    for _ in range(n):
        words = rng.choice(usable)
        cut = rng.randrange(min_context, len(words))
        truth = words[cut]
        options = sorted(following.get(words[cut - 1], set()) - {truth}) or vocab
        wrong = truth
        while wrong == truth:
            wrong = rng.choice(options)
        choices = [" " + truth, " " + wrong]
        answer = 0
        if rng.random() < 0.5:
            choices.reverse()
            answer = 1
        items.append(ChoiceItem(" ".join(words[:cut]), choices, answer))
    return items
