"""Best-of-n: sample n responses per prompt, keep the one the reward source scores highest.

A baseline of the lecture notes (AlpacaFarm's best-of-n): no training, the policy is the sampler
plus a reward at inference time. Writes one line per prompt with the kept ``completion``, its
``score``, and all ``completions`` with their ``scores`` (and, scored by a generative judge
``--reward judge:generative --judge_model M``, its reply on each: ``rationales``,
``rationale``). With ``sft_output_dir`` it then fine-tunes the model on the kept responses (one round of expert iteration; see
``posttrain/recipes/expert_iteration.py`` for several), through ``posttrain.recipes.sft``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.config import SamplingConfig, build_section, check
from posttrain.data import load_examples, write_jsonl
from posttrain.judges.sources import load_reward_source
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.recipes import sft
from posttrain.rollout.sampler import sample_texts
from posttrain.training import prepare_output_dir
from posttrain.training.device import resolve, validated

SUMMARY = "Best-of-n: sample n, keep the highest-reward response per prompt (writes JSONL)."


@dataclass(kw_only=True)
class Config(SamplingConfig):
    model: str
    """Model to sample from."""
    prompts: str
    """Prompt-only data."""
    reward: str
    """Reward: task:NAME, module:function, a reward-model directory or judge:KIND."""
    judge_model: str | None = None
    """Model of a judge:KIND reward (a generative judge's reasons go in ``rationales``)."""
    output: str
    """JSONL to write: prompt, completion (the best), score, completions, scores."""
    n: int = 4
    """Samples per prompt."""
    batch_size: int = 16
    """Sequences generated together."""
    seed: int = 0
    """Sampling seed."""
    dtype: str = "float32"
    """float32 | bfloat16."""
    device: str = "auto"
    """Where the models run: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."""
    sft_output_dir: str | None = None
    """Also fine-tune the model on the kept responses into this directory (None: don't); the
    SFT data (prompt, completion) is written beside the output, as OUTPUT.sft.jsonl."""
    sft: dict[str, Any] = field(default_factory=dict)
    """Settings of that SFT run (max_steps, batch_size, learning_rate, ...)."""

    def validate(self) -> None:
        validated(self.device, self.dtype)  # an absent device: exit 2, nothing written
        self.check_sampling()
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)


def best_of_n(
    model, tokenizer, prompts, reward_fn, *, n: int, generator: torch.Generator, **sampling
) -> list[dict]:
    """For each prompt: its n samples, their scores, and the best one (the first on ties); with
    a judge that writes its reasons (``reward_fn.rationales``: a generative judge's rating
    replies), also each sample's ``rationales`` and the best one's ``rationale``."""
    samples = sample_texts(model, tokenizer, prompts, n=n, generator=generator, **sampling)
    flat_prompts = [p for p in prompts for _ in range(n)]
    scores = reward_fn(flat_prompts, [c for cs in samples for c in cs])
    rationales = getattr(reward_fn, "rationales", lambda _: None)(len(scores))
    rows = []
    for k, (prompt, completions) in enumerate(zip(prompts, samples)):
        own = [float(s) for s in scores[k * n : (k + 1) * n]]
        best = max(range(n), key=own.__getitem__)
        row = {
            "prompt": prompt,
            "completion": completions[best],
            "score": own[best],
            "completions": completions,
            "scores": own,
        }
        if rationales is not None:
            row["rationales"] = rationales[k * n : (k + 1) * n]
            row["rationale"] = row["rationales"][best]
        rows.append(row)
    return rows


def sft_config(
    model: str, data: Path, output_dir: Path, settings: dict, seed: int, device: str = "auto"
) -> sft.Config:
    """The SFT config that trains ``model`` on ``data``: short defaults under ``settings``
    (``--sft``), typed and validated like ``posttrain sft``'s own settings (bad input: a
    ``UserError`` naming ``--sft.FIELD``)."""
    return build_section(
        sft.Config,
        {"max_steps": 20, "batch_size": 8, "progress": False, **settings},
        "sft",
        model=model,
        train_data=str(data),
        output_dir=str(output_dir),
        seed=seed,
        device=device,
    )


def write_kept(rows: list[dict], path: Path) -> None:
    """SFT data (prompt, completion) from best-of-n rows."""
    write_jsonl(path, [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def run(cfg: Config, flags: dict[str, bool]) -> None:
    check_model_name(cfg.model)
    prompts = [ex.prompt for ex in load_examples(cfg.prompts, ["prompt"], what="--prompts")]
    tokenizer = load_tokenizer(cfg.model)
    device = resolve(cfg.device)
    reward_fn = load_reward_source(
        cfg.reward,
        policy_tokenizer=tokenizer,
        judge_model=cfg.judge_model,
        device=device,
        dtype=cfg.dtype,
    )
    sft_cfg = None
    if cfg.sft_output_dir:  # checked (and the directory made) before any sampling
        data = Path(cfg.output).with_suffix(".sft.jsonl")
        sft_cfg = sft_config(
            cfg.model, data, Path(cfg.sft_output_dir), cfg.sft, cfg.seed, cfg.device
        )
        prepare_output_dir(
            cfg.sft_output_dir, resume=False, overwrite=flags.get("overwrite", False)
        )
    model = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=device)
    rows = best_of_n(
        model,
        tokenizer,
        prompts,
        reward_fn,
        n=cfg.n,
        generator=torch.Generator().manual_seed(cfg.seed),
        batch_size=cfg.batch_size,
        **cfg.sampling_args(),
    )
    write_jsonl(cfg.output, rows)
    mean_best = sum(r["score"] for r in rows) / len(rows)
    mean_all = sum(s for r in rows for s in r["scores"]) / (len(rows) * cfg.n)
    print(
        f"wrote {cfg.output}: mean score of the best {mean_best:.3f} vs of all samples {mean_all:.3f}",
        file=sys.stderr,
    )
    if sft_cfg is not None:
        write_kept(rows, Path(sft_cfg.train_data))
        sft.run(sft_cfg, {})
