"""Evaluating a reward model on preference data, and Bradley–Terry scores from win counts.

:func:`evaluate_reward_model` returns flat keys:

- ``accuracy`` (ties count half) and ``pairs``; ``accuracy/SUBSET`` per ``subset`` of the records
  (RewardBench style), and ``section/NAME`` = the mean of its subsets' accuracies (the mapping is
  given by the caller, e.g. ``{"chat": ["alpacaeval-easy", "mt-bench-easy"], ...}``; RewardBench
  itself weights subsets by size inside some sections — give the subsets accordingly);
- ``ece``: expected calibration error of the RM's own probability that its preferred response is
  the better one, P = sigmoid(|r_c - r_r|) (Bradley–Terry), against whether it is right (the
  standard confidence-vs-accuracy form, Guo et al. 2017, 10 equal-width bins);
  ``mean_confidence`` beside it;
- length bias: ``length_bias/rm_prefers_longer`` (share of pairs with different lengths where the
  RM scores the longer response higher) vs ``length_bias/data_chosen_longer`` (share where the
  data's chosen one is longer), and ``length_bias/reward_length_corr``, the Pearson correlation
  of reward with response length over every response. Lengths are in characters (tokenizer-free,
  so RMs with different tokenizers compare).

:func:`fit_bradley_terry` fits BT scores straight from a table of win counts (no model involved).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from posttrain.data import load_examples, to_preference_pairs
from posttrain.data.formats import Example
from posttrain.data.pairs import bradley_terry_probability, fit_bradley_terry  # noqa: F401
from posttrain.errors import UserError
from posttrain.evaluation.capability import expected_calibration_error
from posttrain.losses import reward_accuracy

# The RewardBench sections (Lambert et al. 2024, table 1) by the `subset` names of its data files,
# ready for ``sections=``. RewardBench's own leaderboard weights subsets by size inside a section
# (and Reasoning as half PRM-math, half code); here a section is the plain mean of its subsets.
REWARDBENCH_SECTIONS = {
    "chat": [
        "alpacaeval-easy",
        "alpacaeval-length",
        "alpacaeval-hard",
        "mt-bench-easy",
        "mt-bench-med",
    ],
    "chat_hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (N,) tensors (0 when either is constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom else 0.0


def pair_metrics(
    rc: torch.Tensor,
    rr: torch.Tensor,
    len_c: torch.Tensor,
    len_r: torch.Tensor,
    subsets: Sequence[str | None] | None = None,
    sections: dict[str, list[str]] | None = None,
) -> dict[str, float]:
    """The metrics of the module doc from rewards of chosen and rejected (B,) and their lengths
    (B,) (no model: the part of :func:`evaluate_reward_model` that is arithmetic)."""
    win = reward_accuracy(rc, rr)  # (B,) ties half
    out: dict[str, float] = {"accuracy": float(win.mean()), "pairs": len(win)}
    by_subset: dict[str, list[float]] = defaultdict(list)
    for subset, w in zip(subsets or [], win.tolist()):
        if subset is not None:
            by_subset[str(subset)].append(w)
    for subset, won in sorted(by_subset.items()):
        out[f"accuracy/{subset}"] = sum(won) / len(won)
    for section, members in (sections or {}).items():
        found = [out[f"accuracy/{s}"] for s in members if f"accuracy/{s}" in out]
        if found:
            out[f"section/{section}"] = sum(found) / len(found)
    confidence = torch.sigmoid((rc - rr).double().abs())  # P(the RM's pick is the better one)
    out["ece"] = expected_calibration_error(confidence.tolist(), win.tolist())  # tie: half right
    out["mean_confidence"] = float(confidence.mean())
    len_c, len_r = len_c.double(), len_r.double()
    differ = len_c != len_r
    if differ.any():
        rm_longer = torch.where(len_c > len_r, rc > rr, rr > rc)[differ]
        out["length_bias/rm_prefers_longer"] = float(rm_longer.double().mean())
        out["length_bias/data_chosen_longer"] = float((len_c > len_r)[differ].double().mean())
    out["length_bias/reward_length_corr"] = pearson(torch.cat([rc, rr]), torch.cat([len_c, len_r]))
    return out


def evaluate_reward_model(
    rm,
    examples: str | Sequence[Example],
    *,
    sections: dict[str, list[str]] | None = None,
    batch_size: int = 16,
    aspect_weights: dict[str, float] | None = None,
    dtype: str = "float32",
    device=None,
) -> dict[str, float]:
    """Flat metrics (module doc) of reward model ``rm`` — a RewardModel, anything with
    ``score(prompts, completions)``, or a reward-model directory — on ``examples``: preference
    (or ranked / scored, expanded to pairs) Examples, or a data file to load them from. A
    directory is loaded in ``dtype`` on ``device`` (None: the CPU)."""
    from posttrain.models.reward import RewardModel, load_reward_model

    if not hasattr(rm, "score"):
        rm = load_reward_model(rm, dtype=dtype, device=device)
    if isinstance(examples, (str, bytes)) or hasattr(examples, "__fspath__"):
        examples = load_examples(str(examples), ["preference", "ranked", "scored"], what="--data")
    pairs = to_preference_pairs(examples, aspect_weights)
    if not pairs:
        raise UserError("--data: no preference pairs to evaluate")
    prompts = [ex.prompt for ex in pairs]
    texts = [ex.chosen for ex in pairs] + [ex.rejected for ex in pairs]
    kw = {"batch_size": batch_size} if isinstance(rm, RewardModel) else {}
    rewards = torch.tensor(rm.score(prompts + prompts, texts, **kw), dtype=torch.float64)  # (2B,)
    b = len(pairs)
    return pair_metrics(
        rewards[:b],
        rewards[b:],
        torch.tensor([len(ex.chosen) for ex in pairs]),
        torch.tensor([len(ex.rejected) for ex in pairs]),
        [ex.subset for ex in pairs],
        sections,
    )
