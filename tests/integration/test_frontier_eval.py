"""``posttrain eval --mode frontier`` over a sweep directory and a run directory: every run's
final model and checkpoints become points (named by method and grid values), the frontier plot
is written, and the KL of a policy moved further from the reference is larger."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_model

from posttrain.models import load_policy, save_pretrained


def _run(path, scale: float, steps=(2,)):
    """A run directory as a recipe leaves it: config.yaml, checkpoint-STEP/ and final/, holding
    tiny-llama with its output layer scaled (scale 1: the reference itself)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model: tiny-llama\nmax_steps: {max(steps) * 2}\n")
    model, tok = load_policy("tiny-llama")
    for s in steps:
        with torch.no_grad():
            model.lm_head.weight.mul_(scale ** (s / max(steps) / 2))
        (path / f"checkpoint-{s}").mkdir()
        save_model(model, str(path / f"checkpoint-{s}" / "model.safetensors"))
    with torch.no_grad():
        model.lm_head.weight.mul_(scale**0.5)
    save_pretrained(model, tok, path / "final")


def test_frontier_over_a_sweep_and_a_run(cli, tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep / "kl_coef-0.1", 3.0)
    _run(sweep / "kl_coef-1", 1.5)
    (sweep / "sweep.json").write_text(
        json.dumps(
            {
                "recipe": "ppo",
                "points": [
                    {"name": n, "dir": n, "params": {}} for n in ("kl_coef-0.1", "kl_coef-1")
                ],
            }
        )
    )
    _run(tmp_path / "dpo", 2.0)
    out = tmp_path / "ev"
    code, _, err = cli(
        "eval", "--mode", "frontier", "--models", f"{sweep},{tmp_path / 'dpo'}",
        "--reference", "tiny-llama", "--task", "sentiment", "--n_prompts", "16",
        "--max_new_tokens", "6", "--capability", "false", "--output_dir", out,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "eval.json").read_text())
    got = [(p["name"], p["step"]) for p in res["points"]]
    assert got == [
        ("ppo kl_coef-0.1", 2),
        ("ppo kl_coef-0.1", 4),
        ("ppo kl_coef-1", 2),
        ("ppo kl_coef-1", 4),
        ("dpo", 2),
        ("dpo", 4),
    ]
    kl = {(p["name"], p["model"].endswith("final")): p["kl_k3"] for p in res["points"]}
    # the output layer scaled by 3 is further from the reference than scaled by 1.5
    assert kl[("ppo kl_coef-0.1", True)] > kl[("ppo kl_coef-1", True)] > 0
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "non-dominated" in (out / "report.html").read_text()
