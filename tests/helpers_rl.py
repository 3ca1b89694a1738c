"""Programmatic rewards and shared settings for the RL tests (rewards are used as
--reward tests.helpers_rl:FUNCTION)."""

from __future__ import annotations

from pathlib import Path

from posttrain.training import read_metrics

# tiny-llama on the counting task's prompts, rewarded for the letter 'e'
COMMON = [
    "--model",
    "tiny-llama",
    "--task",
    "counting",
    "--reward",
    "tests.helpers_rl:count_e",
    "--max_new_tokens",
    "12",
    "--logging_steps",
    "1",
    "--progress",
    "false",
]


def count_e(prompts, completions):
    """How many times the letter 'e' appears, per 10 characters of a 40-character budget: dense
    enough that a random tiny model sees the signal, and the optimum is a response full of 'e'."""
    return [completion[:40].count("e") / 4.0 for completion in completions]


def count_token(prompts, completions, tokenizer):
    """How many tokens of the response are the policy's token for ' the' (given the policy's
    tokenizer by ``load_reward_source``)."""
    target = tokenizer(" the", add_special_tokens=False)["input_ids"][-1]
    return [
        float(tokenizer(c, add_special_tokens=False)["input_ids"].count(target))
        for c in completions
    ]


def wrong_length(prompts, completions):
    return [0.0]


def reward_curve(out: Path) -> tuple[float, float, float]:
    """(mean score of the first 3 logged steps, of the last 3, largest KL per response)."""
    rows = read_metrics(out / "metrics.jsonl")
    scores = [r["objective/scores"] for r in rows]
    return sum(scores[:3]) / 3, sum(scores[-3:]) / 3, max(r["objective/kl"] for r in rows)
