"""Expert iteration / rejection-sampling fine-tuning: rounds of sample n -> keep the best ->
SFT on the kept responses, each round starting from the previous round's model (a baseline of the
lecture notes; Llama 2's rejection sampling).

Round R writes ``round-R/best.jsonl`` (``posttrain.recipes.best_of_n``, all samples and scores)
and ``round-R/sft.jsonl`` (the kept responses), and trains with ``posttrain.recipes.sft`` into
``round-R/sft/`` (its own config, metrics and final/). ``final/`` is the last round's model;
``rounds.jsonl`` holds each round's mean best-of-n and mean sample score. ``--resume`` skips the
rounds whose ``round-R/sft/final`` exists and continues the SFT of an unfinished round from its
last checkpoint (``sft.save_steps``); more ``--rounds`` than before add rounds.

Under ``torchrun`` each process samples and scores its contiguous slice of the prompts with its
own seed (all n samples of a prompt on one process, so keeping the best is exact); rank 0 writes
the rows of all processes; the SFT of each round runs on every process as ``posttrain sft`` does
(its batch split over the processes, gradients summed). With ``sft: {distributed: fsdp}`` the
sampling model is sharded the same way (for a model too large for one device): its forwards
gather the weights, so every process must make as many; a process with a shorter slice of the
prompts tops it up with copies of the first prompt (their rows are dropped).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from posttrain.config import SamplingConfig, check
from posttrain.data import load_examples, read_records, write_jsonl
from posttrain.judges.sources import load_reward_source
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.recipes import sft
from posttrain.recipes.best_of_n import best_of_n, sft_config, write_kept
from posttrain.training import distributed, prepare_output_dir
from posttrain.training.device import resolve, validated

SUMMARY = "Expert iteration: rounds of best-of-n sampling and SFT on the kept responses."


@dataclass(kw_only=True)
class Config(SamplingConfig):
    model: str
    """Model to start from."""
    prompts: str
    """Prompt-only data."""
    reward: str
    """Reward: task:NAME, module:function, a reward-model directory or judge:KIND."""
    judge_model: str | None = None
    """Model of a judge:KIND reward."""
    output_dir: str
    """Where round-R/, rounds.jsonl and final/ go."""
    rounds: int = 2
    """Rounds of sample -> select -> SFT."""
    n: int = 4
    """Samples per prompt."""
    max_new_tokens: int = 32
    """Longest response in tokens (a response not ended by then is cut)."""
    batch_size: int = 16
    """Sequences generated together."""
    sft: dict[str, Any] = field(default_factory=dict)
    """SFT settings for each round (max_steps, batch_size, learning_rate, ...)."""
    seed: int = 0
    """Seed."""
    device: str = "auto"
    """Where the models run: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        validated(self.device)  # an absent device: exit 2, nothing written
        check(self.rounds >= 1, "rounds", "must be >= 1", self.rounds)
        self.check_sampling(greedy=False)


def run(cfg: Config, flags: dict[str, bool]) -> None:
    check_model_name(cfg.model)
    prompts = [ex.prompt for ex in load_examples(cfg.prompts, ["prompt"], what="--prompts")]
    device = resolve(cfg.device)
    reward_fn = load_reward_source(
        cfg.reward,
        policy_tokenizer=load_tokenizer(cfg.model),
        judge_model=cfg.judge_model,
        device=device,
    )
    out = Path(cfg.output_dir)
    # bad SFT settings fail now
    strategy = sft_config(
        cfg.model, out / "x.jsonl", out / "x", cfg.sft, cfg.seed, cfg.device
    ).distributed
    resume = flags.get("resume", False) and out.is_dir()
    distributed.init(use_cuda=device.type == "cuda")  # a no-op without a launcher
    if not resume:
        distributed.on_main(
            lambda: prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
        )
    model_name, summary = cfg.model, []
    for r in range(1, cfg.rounds + 1):
        round_dir = out / f"round-{r}"
        done = resume and (round_dir / "sft" / "final").is_dir()
        if done:  # --resume: this round's samples and model are there
            rows = [rec.data for rec in read_records(round_dir / "best.jsonl")]
        else:
            sample = partial(
                sample_best,
                model_name=model_name,
                reward_fn=reward_fn,
                cfg=cfg,
                r=r,
                strategy=strategy,
                top_up=(-(-len(prompts) // distributed.world_size()), prompts[0]),
            )
            rows = distributed.map_sharded(sample, prompts)  # each process its slice, gathered
            if distributed.is_main():
                write_jsonl(round_dir / "best.jsonl", rows)
                write_kept(rows, round_dir / "sft.jsonl")
            distributed.barrier()  # every process reads sft.jsonl
        best = sum(row["score"] for row in rows) / len(rows)
        mean = sum(s for row in rows for s in row["scores"]) / (len(rows) * cfg.n)
        summary.append({"round": r, "best_of_n": best, "mean": mean})
        if distributed.is_main():
            print(f"round {r}: mean best-of-{cfg.n} score {best:.3f}, mean sample score {mean:.3f}")
        if not done:
            round_cfg = sft_config(
                model_name,
                round_dir / "sft.jsonl",
                round_dir / "sft",
                cfg.sft,
                cfg.seed + r,
                cfg.device,
            )
            sft.run(round_cfg, {"resume": resume, "overwrite": True})
        model_name = str(round_dir / "sft" / "final")
    if distributed.is_main():
        write_jsonl(out / "rounds.jsonl", summary)
        shutil.copytree(model_name, out / "final", dirs_exist_ok=True)
        print(f"saved {out / 'final'}")
    distributed.barrier()


def sample_best(
    prompts: list,
    *,
    model_name: str,
    reward_fn,
    cfg: Config,
    r: int,
    strategy: str = "ddp",
    top_up: tuple[int, Any] = (0, None),
) -> list[dict]:
    """Round ``r``'s best-of-n rows of ``prompts`` (this process's slice) from ``model_name``.

    Under FSDP (``strategy``) the model is sharded and the slice is topped up to ``top_up`` =
    (length, filler prompt), the longest slice, so that every process makes the same forwards."""
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, tokenizer=tokenizer, device=resolve(cfg.device))
    own = len(prompts)
    if strategy == "fsdp" and distributed.is_initialized():
        model = distributed.wrap_frozen(model.requires_grad_(False), "fsdp")
        if distributed.is_main():
            n = distributed.world_size()
            print(f"round {r}: sampling with the model sharded over {n} processes (FSDP)")
        length, filler = top_up
        prompts = [*prompts, *[filler] * (length - own)]
    seed = cfg.seed + r * distributed.world_size() + distributed.rank()  # one per round, process
    return best_of_n(
        model,
        tokenizer,
        prompts,
        reward_fn,
        n=cfg.n,
        generator=torch.Generator().manual_seed(seed),
        batch_size=cfg.batch_size,
        **cfg.sampling_args(),
    )[:own]
