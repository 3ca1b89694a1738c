"""Regression pins: the first five logged steps of sft, dpo, kto, ppo, rloo and online-dpo on
tiny-llama in float64, compared with numbers recorded from the code (tests/assets/pins_*.json).

A refactor that claims "no behaviour change" must leave these at 1e-8 relative (PPO: 1e-6; its
value head computes in float32 whatever the trunk, and float32 GEMMs round differently on
different CPUs: 4e-7 seen between two x86-64 machines). The numbers are
not claims about learning (the learning tests show that); they pin the arithmetic. Regenerate
only for an intended change of the numbers, and say so in the commit:
``POSTTRAIN_REGENERATE_PINS=1 pytest tests/integration/test_regression_pins.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from posttrain.training import read_metrics
from tests.helpers_pref import preference_rows
from tests.helpers_rl import COMMON
from tests.helpers_sft import addition_rows

ASSETS = Path(__file__).parents[1] / "assets"
REGENERATE = os.environ.get("POSTTRAIN_REGENERATE_PINS") == "1"
RTOL = {"ppo": 1e-6}  # float32 value head (see the module docstring)
BASE = ["--dtype", "float64", "--max_steps", "5", "--logging_steps", "1", "--progress", "false"]

CASES = {
    "sft": (
        ["--model", "tiny-llama", "--batch_size", "4", "--learning_rate", "1e-3",
         "--gradient_accumulation_steps", "2"],
        ["train/loss", "train/grad_norm"],
    ),
    "dpo": (
        ["--model", "tiny-llama", "--batch_size", "4", "--learning_rate", "1e-3", "--beta", "0.1",
         "--reference", "model"],
        ["train/loss", "train/grad_norm", "rewards/chosen", "rewards/rejected",
         "rewards/accuracies", "logps/chosen"],
    ),
    "kto": (
        ["--model", "tiny-llama", "--batch_size", "4", "--learning_rate", "1e-3", "--beta", "0.1"],
        ["train/loss", "train/grad_norm", "rewards/chosen", "objective/kl"],
    ),
    "ppo": (
        [*COMMON, "--batch_size", "4", "--num_samples", "2", "--learning_rate", "3e-3",
         "--max_new_tokens", "6"],
        ["loss/policy", "loss/value", "objective/scores", "objective/kl", "policy/approx_kl",
         "train/grad_norm"],
    ),
    "rloo": (
        [*COMMON, "--batch_size", "4", "--num_samples", "2", "--learning_rate", "3e-3",
         "--max_new_tokens", "6"],
        ["loss/policy", "objective/scores", "objective/kl", "train/grad_norm"],
    ),
    "online-dpo": (
        ["--model", "tiny-llama", "--judge", "task:sentiment", "--batch_size", "4",
         "--learning_rate", "1e-3", "--max_new_tokens", "6", "--soft_labels", "true"],
        ["train/loss", "train/grad_norm", "rewards/chosen", "rewards/rejected",
         "objective/scores", "judge/p_chosen"],
    ),
}  # fmt: skip


def _data(recipe: str, jsonl) -> list[str]:
    if recipe == "sft":
        return ["--train_data", jsonl("sft.jsonl", addition_rows(16))]
    if recipe in ("dpo", "kto"):
        return ["--train_data", jsonl("pairs.jsonl", preference_rows(16))]
    if recipe == "online-dpo":
        prompts = [{"prompt": r["prompt"]} for r in preference_rows(16)]
        return ["--train_data", jsonl("prompts.jsonl", prompts)]
    return []


@pytest.mark.parametrize("recipe", list(CASES))
def test_first_five_steps_match_the_pinned_numbers(recipe, cli, jsonl, tmp_path):
    args, keys = CASES[recipe]
    out = tmp_path / recipe
    code, _, err = cli(recipe, *args, *_data(recipe, jsonl), *BASE, "--output_dir", out)
    assert code == 0, err
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] >= 1][:5]
    got = {k: [r.get(k) for r in rows] for k in keys}
    path = ASSETS / f"pins_{recipe.replace('-', '_')}.json"
    if REGENERATE:
        ASSETS.mkdir(exist_ok=True)
        path.write_text(json.dumps({"args": args, "values": got}, indent=1) + "\n")
    pinned = json.loads(path.read_text())["values"]
    assert set(pinned) == set(got)
    tol = RTOL.get(recipe, 1e-8)
    for k, want in pinned.items():
        assert len(got[k]) == len(want) == 5, k
        for step, (a, b) in enumerate(zip(got[k], want), 1):
            assert (a is None) == (b is None), (k, step, a, b)
            if a is not None:
                assert math.isclose(a, b, rel_tol=tol, abs_tol=1e-10), (k, step, a, b)
