"""``posttrain demo --quick``: the whole pipeline end to end, in about a minute.

The quick budgets are too small for alignment to show reliably; this test checks that every
stage runs and leaves what DESIGN.md promises. The full demo's numbers are in docs/demo.md.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_quick_end_to_end(cli, tmp_path):
    out = tmp_path / "demo"
    code, _, err = cli("demo", "--quick", "--output_dir", out)
    assert code == 0, err[-3000:]
    for name in (
        "report.html",
        "report.md",
        "eval/eval.json",
        "eval/frontier.png",
        "eval-reward-model/eval.json",
        "eval-implicit-reward/eval.json",
        "data/pairs_heldout.jsonl",
    ):
        assert (out / name).is_file(), name
    for stage in ("build", "pretrain", "sft", "sample", "label", "rm", "ppo", "dpo", "eval"):
        assert f" {stage} done in " in err, stage  # one progress line per stage, with its time
    html = (out / "report.html").read_text()
    assert "frontier.png" in html and "Sample continuations" in html
    res = json.loads((out / "eval" / "eval.json").read_text())
    runs = {p["name"] for p in res["points"]}
    assert {"ppo", "dpo"} <= runs
    for p in res["points"]:
        assert p["kl_k3"] >= 0 and -1 <= p["gold_reward"] <= 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stage in ("sft", "ppo", "dpo"):
        final = out / stage / "final"
        AutoModelForCausalLM.from_pretrained(final)
        AutoTokenizer.from_pretrained(final)

    # a second run into the same directory is refused unless --overwrite
    code, _, err = cli("demo", "--quick", "--output_dir", out)
    assert code == 2 and "--overwrite" in err
