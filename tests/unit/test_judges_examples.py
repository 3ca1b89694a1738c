"""The RLAIF example configs: every stage is a valid config of its recipe (those that exist)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from posttrain.cli import RECIPES
from posttrain.config import parse_args

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["examples/rlaif_dpo.yaml", "examples/rlaif_rm_ppo.yaml"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_stage_parses_as_its_recipe_config(example, tmp_path):
    stages = yaml.safe_load((ROOT / example).read_text())
    assert list(stages)[:2] == ["sample", "judge"]
    checked = 0
    for recipe, settings in stages.items():
        try:
            module = importlib.import_module(RECIPES[recipe])
        except ModuleNotFoundError:
            continue  # that recipe is not in this tree yet
        path = tmp_path / f"{recipe}.yaml"
        path.write_text(yaml.safe_dump(settings))
        config, _ = parse_args(module.Config, ["--config", str(path)])
        checked += 1
    assert checked >= 2


@pytest.mark.slow  # three posttrain processes (~10 s each on an idle machine)
def test_rlaif_runner_runs_the_stages_in_order(tmp_path):
    import json
    import os
    import subprocess
    import sys

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {w}:"}) + "\n" for w in "ab"))
    stages = {
        "sample": {"model": "tiny-llama", "prompts": str(prompts), "n": 2, "max_new_tokens": 6,
                   "output": str(tmp_path / "samples.jsonl")},
        "judge": {"judge": "task:counting", "input": str(tmp_path / "samples.jsonl"),
                  "output": str(tmp_path / "prefs.jsonl")},
        "dpo": {"model": "tiny-llama", "train_data": str(tmp_path / "prefs.jsonl"),
                "output_dir": str(tmp_path / "dpo"), "max_steps": 1, "batch_size": 2, "beta": 0.1,
                "ties": "soft", "progress": False},  # task:counting scores tiny-llama's babble alike
    }  # fmt: skip
    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump(stages, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "POSTTRAIN": str(bin_dir / "posttrain"), "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "examples/rlaif.sh"), str(config)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[2] for line in done.stderr.splitlines() if line.startswith("==")] == [
        "sample",
        "judge",
        "dpo",
    ]
    assert (tmp_path / "dpo" / "final" / "config.json").exists()
    bad = subprocess.run(
        [str(ROOT / "examples/rlaif.sh"), str(config), "ppo"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "no stage 'ppo'" in bad.stderr
