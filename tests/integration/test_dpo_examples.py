"""The example configs of the DPO family and its baselines load and run (2 steps, tiny-llama)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.training import read_metrics
from tests.helpers_pref import preference_rows

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize(
    "recipe, name",
    [("sft", "preferred_ft"), ("sft", "reward_conditioned_sft"), ("dpo", "dpo")],
)
def test_example_config_runs(cli, jsonl, tmp_path, recipe, name):
    data = jsonl("pairs.jsonl", preference_rows(16))
    out = tmp_path / name
    code, _, err = cli(
        recipe,
        "--config",
        EXAMPLES / f"{name}.yaml",
        "--model",
        "tiny-llama",
        "--train_data",
        data,
        "--output_dir",
        out,
        "--max_steps",
        "2",
        "--max_length",
        "64",
        "--progress",
        "false",
    )
    assert code == 0, err
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == 2
    assert (out / "final").is_dir()
