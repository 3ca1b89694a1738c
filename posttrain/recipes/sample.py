"""Sample N completions per prompt: prompt-only JSONL in, ``{prompt, completions}`` lines out.

The sampler is ``posttrain.rollout.sampler.sample_texts`` (re-exported here), the sampling
fields ``posttrain.config.SamplingConfig``."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from posttrain.config import SamplingConfig, check
from posttrain.data import load_examples, write_jsonl
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.rollout.sampler import sample_texts
from posttrain.training.device import resolve, validated

SUMMARY = "Sample completions for prompts (greedy with --temperature 0); writes JSONL."


@dataclass(kw_only=True)
class Config(SamplingConfig):
    model: str
    """Model: `tiny-llama`, `smollm2-135m-instruct`, or a local Hugging Face directory."""
    prompts: str
    """Prompt-only data (JSONL/Parquet/datasets) with a `prompt` per record."""
    output: str
    """JSONL file to write: one line per prompt with `prompt` and `completions`."""
    n: int = 1
    """Completions per prompt."""
    batch_size: int = 16
    """Sequences generated together."""
    seed: int = 0
    """Sampling seed."""
    dtype: str = "float32"
    """float32 | bfloat16."""
    device: str = "auto"
    """Where the model runs: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        validated(self.device, self.dtype)  # an absent device: exit 2, nothing written
        self.check_sampling()
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)


def run(cfg: Config, flags: dict[str, bool]) -> None:
    check_model_name(cfg.model)
    examples = load_examples(
        cfg.prompts, ["prompt", "sft", "completions", "preference"], what="--prompts"
    )
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=resolve(cfg.device))
    generator = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    completions = sample_texts(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        n=cfg.n,
        batch_size=cfg.batch_size,
        generator=generator,
        **cfg.sampling_args(),
    )
    seconds = time.time() - t0
    rows = []
    for ex, comps in zip(examples, completions):
        row = {"prompt": ex.prompt, "completions": comps}
        if ex.id is not None:
            row["id"] = ex.id
        rows.append(row)
    write_jsonl(cfg.output, rows)
    n_tokens = sum(
        len(tokenizer(c, add_special_tokens=False)["input_ids"]) for cs in completions for c in cs
    )
    print(
        f"wrote {len(rows)} prompts x {cfg.n} completions to {cfg.output} "
        f"({n_tokens} tokens in {seconds:.1f}s, {n_tokens / max(seconds, 1e-9):.1f} tokens/s)",
        file=sys.stderr,
    )
