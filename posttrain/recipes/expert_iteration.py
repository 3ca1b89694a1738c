"""Expert iteration / rejection-sampling fine-tuning: rounds of sample n -> keep the best ->
SFT on the kept responses, each round starting from the previous round's model (a baseline of the
lecture notes; Llama 2's rejection sampling).

Round R writes ``round-R/best.jsonl`` (``posttrain.recipes.best_of_n``, all samples and scores)
and ``round-R/sft.jsonl`` (the kept responses), and trains with ``posttrain.recipes.sft`` into
``round-R/sft/`` (its own config, metrics and final/). ``final/`` is the last round's model;
``rounds.jsonl`` holds each round's mean best-of-n and mean sample score.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.config import check
from posttrain.data import load_examples, write_jsonl
from posttrain.judges.sources import load_reward_source
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.recipes import sft
from posttrain.recipes.best_of_n import best_of_n, sft_config, write_kept
from posttrain.training import prepare_output_dir

SUMMARY = "Expert iteration: rounds of best-of-n sampling and SFT on the kept responses."


@dataclass(kw_only=True)
class Config:
    model: str
    """Model to start from."""
    prompts: str
    """Prompt-only data."""
    reward: str
    """Reward: task:NAME, module:function, a reward-model directory or judge:KIND."""
    output_dir: str
    """Where round-R/, rounds.jsonl and final/ go."""
    rounds: int = 2
    """Rounds of sample -> select -> SFT."""
    n: int = 4
    """Samples per prompt."""
    max_new_tokens: int = 32
    """Longest response."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    batch_size: int = 16
    """Sequences generated together."""
    sft: dict[str, Any] = field(default_factory=dict)
    """SFT settings for each round (max_steps, batch_size, learning_rate, ...)."""
    seed: int = 0
    """Seed."""

    def validate(self) -> None:
        check(self.rounds >= 1, "rounds", "must be >= 1", self.rounds)
        check(self.n >= 1, "n", "must be >= 1", self.n)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", self.max_new_tokens)
        check(self.temperature > 0, "temperature", "must be > 0", self.temperature)


def run(cfg: Config, flags: dict[str, bool]) -> None:
    check_model_name(cfg.model)
    prompts = [ex.prompt for ex in load_examples(cfg.prompts, ["prompt"], what="--prompts")]
    reward_fn = load_reward_source(cfg.reward, policy_tokenizer=load_tokenizer(cfg.model))
    out = Path(cfg.output_dir)
    sft_config(cfg.model, out / "x.jsonl", out / "x", cfg.sft, cfg.seed)  # bad settings fail now
    prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
    model_name, summary = cfg.model, []
    for r in range(1, cfg.rounds + 1):
        tokenizer = load_tokenizer(model_name)
        model = load_model(model_name, tokenizer=tokenizer)
        rows = best_of_n(
            model,
            tokenizer,
            prompts,
            reward_fn,
            n=cfg.n,
            generator=torch.Generator().manual_seed(cfg.seed + r),
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            batch_size=cfg.batch_size,
        )
        round_dir = out / f"round-{r}"
        write_jsonl(round_dir / "best.jsonl", rows)
        write_kept(rows, round_dir / "sft.jsonl")
        best = sum(row["score"] for row in rows) / len(rows)
        mean = sum(s for row in rows for s in row["scores"]) / (len(rows) * cfg.n)
        summary.append({"round": r, "best_of_n": best, "mean": mean})
        print(f"round {r}: mean best-of-{cfg.n} score {best:.3f}, mean sample score {mean:.3f}")
        round_cfg = sft_config(
            model_name, round_dir / "sft.jsonl", round_dir / "sft", cfg.sft, cfg.seed + r
        )
        sft.run(round_cfg, {"overwrite": True})
        model_name = str(round_dir / "sft" / "final")
    write_jsonl(out / "rounds.jsonl", summary)
    shutil.copytree(model_name, out / "final")
    print(f"saved {out / 'final'}")
