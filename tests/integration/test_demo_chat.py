"""``posttrain demo --model smollm2-135m-instruct --quick``: the chat experiment end to end on the
real SmolLM2 with tiny budgets (slow: SmolLM2 is loaded several times): the outputs exist and
load. Its pure parts are tested in ``tests/unit/test_demo_chat_parts.py``."""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.recipes.demo_chat import load_factual_qa
from posttrain.training import read_metrics


def test_unknown_model_fails_before_writing(tmp_path):
    out = tmp_path / "d"
    assert main(["demo", "--model", "no-such-model", "--output_dir", str(out)]) == 2
    assert not out.exists()


@pytest.mark.slow  # ~4 min on 2 idle cores
def test_chat_demo_quick_end_to_end(tmp_path):
    from posttrain.models import load_policy

    out = tmp_path / "demo"
    argv = ["demo", "--model", "smollm2-135m-instruct", "--quick", "true"]
    ppo_argv = ["--ppo_kl_target", "3"]
    rc = main([*argv, *ppo_argv, "--output_dir", str(out)])
    assert rc in (0, None)
    # the adaptive KL controller: target and a four-step horizon (4 x 4 prompts x 2 replies)
    ppo_config = (out / "ppo" / "config.yaml").read_text()
    assert "kl_target: 3.0" in ppo_config and "kl_horizon: 32" in ppo_config, ppo_config
    # the bounded score, the bonus for running to the token limit and the value head on detached
    # hidden states (the defaults here)
    assert "reward_clip: 1.0" in ppo_config and "missing_eos_penalty: -1.0" in ppo_config
    assert "value_trunk_grad: false" in ppo_config
    # PPO-ptx (on by default) on SmolLM2's own sampled replies (those that ended) to the shipped
    # chat requests, and GAE's lambda (1 by default)
    assert "ptx_coef: 1.0" in ppo_config and "lam: 1.0" in ppo_config, ppo_config
    ptx = [json.loads(line) for line in (out / "data" / "ptx.jsonl").read_text().splitlines()]
    assert 1 <= len(ptx) <= 4 * 4 and all(r["completion"].strip() for r in ptx)
    ppo_rows = [
        json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()
    ]
    # its term the KL from the reference: >= 0, 0 until the adapters move
    assert "ptx_loss: kl" in ppo_config, ppo_config
    assert ppo_rows and all(r["loss/ptx"] >= 0 for r in ppo_rows)
    # DPO's ptx term (on by default): the KL from the reference at the same replies
    dpo_config = (out / "dpo" / "config.yaml").read_text()
    assert "ptx_loss: kl" in dpo_config and str(out / "data" / "ptx.jsonl") in dpo_config
    dpo_rows = read_metrics(out / "dpo" / "metrics.jsonl")
    assert len(dpo_rows) > 1 and all(r["loss/ptx"] >= 0 for r in dpo_rows[1:]), dpo_rows
    for name in ("report.html", "report.md", "facts.json", "eval/eval.json"):
        assert (out / name).is_file(), name
    facts = json.loads((out / "facts.json").read_text())
    assert set(facts["capability"]) == {"base", "ppo", "dpo"}
    assert len(facts["capability"]["base"]["answers"]) == len(load_factual_qa())
    for stage in ("ppo", "dpo"):  # merged HF directories that load and generate
        model, tok = load_policy(str(out / stage / "final"))
        assert not any("lora" in n for n, _ in model.named_parameters())
        ids = tok("Hello", return_tensors="pt")["input_ids"]
        assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    # --resume keeps the finished stages and reruns from the first missing one; --rloo adds
    # the RLOO stage, and the evaluation and report then cover it
    import shutil

    kept = {p: (out / p).stat().st_mtime_ns for p in ("data/pairs.jsonl", "rm/final", "ppo/final")}
    shutil.rmtree(out / "dpo" / "final")
    argv = ["demo", "--model", "smollm2-135m-instruct", "--quick", "true", "--rloo", "true"]
    assert main([*argv, "--output_dir", str(out), "--resume"]) in (0, None)
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept
    assert (out / "dpo" / "final").is_dir() and (out / "report.html").is_file()
    again = json.loads((out / "facts.json").read_text())
    assert again["labels"] == facts["labels"]
    assert set(again["capability"]) == {"base", "ppo", "dpo", "rloo"}
    points = json.loads((out / "eval" / "eval.json").read_text())["points"]
    assert sorted(p["name"] for p in points) == ["dpo", "ppo", "rloo"]
    assert "RLOO: gold" in (out / "report.md").read_text()
    model, _ = load_policy(str(out / "rloo" / "final"))
    assert not any("lora" in n for n, _ in model.named_parameters())
