"""Label completions with an AI (or gold) judge: ``{prompt, completions}`` lines in, preference
records out — the "AI feedback" step of RLAIF.

``posttrain judge --judge KIND --model M --input FILE --output FILE [--swap]``

- KIND: ``llm`` (pairwise multiple-choice judge under a constitution), ``generative`` (reasons,
  then a parsed verdict), ``reward-model`` (M is a reward-model directory; sigmoid(r_a - r_b)),
  ``task:NAME`` (a built-in task's gold reward; no model), ``module:function`` (your function
  ``fn(prompts, firsts, seconds) -> [P(first better)]``; no model).
- Two completions give one record. **More than two: all pairs** — every (i, j), i < j, is judged
  and written as its own record (n (n - 1) / 2 per prompt), so no comparison the judge made is
  thrown away; pick subsets downstream by ``chosen_index`` / ``rejected_index``.
- ``--select best`` instead writes one line per prompt with the judge's pick among the
  completions (generative-verifier best-of-n): ``--method tournament`` (knock-out, n - 1
  comparisons), ``round-robin`` (all pairs, most soft wins) or ``pointwise`` (``score``).
- Each record: ``prompt``, ``chosen``, ``rejected``, ``p_chosen`` (the judge's probability that
  chosen is better, >= 0.5), ``judge`` (kind:model), ``principle`` (id, for constitutional
  judges), ``chosen_index``, ``rejected_index``, ``tie`` (p exactly 0.5: chosen is then the
  earlier completion), ``unparsed`` (generative: orders whose reply named no winner), ``rationale`` (generative:
  its reply with the first-listed completion as (A); with ``--swap`` also ``rationale_swapped``)
  and, with ``--swap``, ``swap_agree``. ``--select best`` lines carry the judge's ``rationale``
  about the winner. ``--ties drop`` leaves ties out.
- A summary (comparisons, ties, unparsed, position-bias rate, swap agreement, first-position
  rate) goes to stderr and, with ``--summary FILE``, to a JSON file.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from posttrain.config import check
from posttrain.data import load_examples, write_jsonl
from posttrain.errors import UserError
from posttrain.judges.constitution import load_constitution
from posttrain.judges.factory import build_judge, check_judge
from posttrain.judges.pairwise import summarize
from posttrain.judges.verifier import select_best
from posttrain.training.device import resolve, validated

SUMMARY = "Label prompts with 2+ completions using an AI or gold judge; writes preference JSONL."


@dataclass(kw_only=True)
class Config:
    judge: str
    """Judge kind: `llm`, `generative`, `reward-model`, `task:NAME` (e.g. task:sentiment) or
    `module:function` (fn(prompts, firsts, seconds) -> P(first better) per pair)."""
    model: str | None = None
    """Judge model (llm / generative: a model name or HF dir; reward-model: its directory)."""
    input: str
    """JSONL/Parquet with `prompt` and `completions` (two or more) per line."""
    output: str
    """JSONL to write: preference records (or, with --select best, one pick per prompt)."""
    swap: bool = False
    """Judge every pair in both orders and average (position-swap debiasing); adds swap_agree."""
    constitution: str | None = None
    """Constitution file (YAML or JSONL) for llm / generative judges; default: the shipped one."""
    select: Literal["pairs", "best"] = "pairs"
    """`pairs`: a preference record per pair; `best`: the judge's pick among the completions."""
    method: Literal["tournament", "round-robin", "pointwise"] = "tournament"
    """With --select best: knock-out tournament, all-pairs round robin, or pointwise scores."""
    ties: Literal["keep", "drop"] = "keep"
    """Keep pairs the judge could not separate (p = 0.5, marked tie) or drop them."""
    chat: Literal["auto", "on", "off"] = "auto"
    """llm judge: wrap the judge prompt in the model's chat template (auto: when it has one)."""
    temperature: float = 0.0
    """generative: sampling temperature of the reasons (0 greedy); task: soft-label temperature
    (0: hard 1/0 labels)."""
    max_new_tokens: int = 96
    """generative: length limit of the judge's reasons + verdict."""
    batch_size: int = 8
    """Sequences per judge forward pass."""
    seed: int = 0
    """Seed of principle sampling, tournament brackets and sampled judge replies."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the judge model."""
    device: str = "auto"
    """Where the judge model runs: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."""
    summary: str | None = None
    """Also write the run's summary (counts, position-bias rate) as JSON to this file."""

    def validate(self) -> None:
        validated(self.device, self.dtype)  # an absent device: exit 2 before anything is read
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", self.max_new_tokens)
        check(self.temperature >= 0, "temperature", "must be >= 0", self.temperature)


def label_pairs(judge, examples, *, swap: bool, judge_name: str, keep_ties: bool):
    """All-pairs preference records for every example, and the verdicts behind them."""
    items, where = [], []
    for k, ex in enumerate(examples):
        n = len(ex.completions)
        for i in range(n):
            for j in range(i + 1, n):
                items.append((ex.prompt, ex.completions[i], ex.completions[j]))
                where.append((k, i, j))
    verdicts = judge.verdicts(items, swap=swap)
    rows = []
    for (k, i, j), v in zip(where, verdicts):
        if v.tie and not keep_ties:
            continue
        ex = examples[k]
        win, lose = (i, j) if v.p >= 0.5 else (j, i)
        row = {
            "prompt": ex.prompt,
            "chosen": ex.completions[win],
            "rejected": ex.completions[lose],
            "p_chosen": max(v.p, 1.0 - v.p),
            "judge": judge_name,
            "chosen_index": win,
            "rejected_index": lose,
            "tie": v.tie,
        }
        if v.principle is not None:
            row["principle"] = v.principle
        if getattr(judge, "kind", "") == "generative":
            row["unparsed"] = v.unparsed
        if v.rationale is not None:  # the judge's reasons, in the order it saw the pair
            row["rationale"] = v.rationale
            if v.rationale_swapped is not None:
                row["rationale_swapped"] = v.rationale_swapped
        if swap:
            row["swap_agree"] = v.swap_agree
        if ex.id is not None:
            row["id"] = ex.id
        rows.append(row)
    return rows, verdicts


def run(cfg: Config, flags: dict[str, bool]) -> None:
    # validate everything before loading a model or writing a byte
    check_judge(cfg.judge, cfg.model)
    if cfg.judge in ("llm", "generative"):
        load_constitution(cfg.constitution)
    if cfg.select == "best" and cfg.method == "pointwise" and cfg.judge == "llm":
        raise UserError("--method: the llm judge is pairwise only; use tournament or round-robin")
    examples = load_examples(cfg.input, ["completions", "ranked", "scored"], what="--input")
    judge = build_judge(
        cfg.judge,
        cfg.model,
        constitution=cfg.constitution,
        seed=cfg.seed,
        swap=cfg.swap,
        chat=cfg.chat,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        dtype=cfg.dtype,
        device=resolve(cfg.device),
    )
    name = cfg.judge if cfg.model is None else f"{cfg.judge}:{cfg.model}"
    t0 = time.time()
    if cfg.select == "best":
        rows = []
        for k, ex in enumerate(examples):
            sel = select_best(
                judge,
                ex.prompt,
                ex.completions,
                method=cfg.method,
                swap=cfg.swap,
                seed=cfg.seed + k,
            )
            rows.append(
                {
                    "prompt": ex.prompt,
                    "completions": ex.completions,
                    "best": ex.completions[sel.index],
                    "best_index": sel.index,
                    "scores": sel.scores,
                    "method": cfg.method,
                    "comparisons": sel.comparisons,
                    "unparsed": sel.unparsed,
                    **({"rationale": sel.rationale} if sel.rationale else {}),
                    "judge": name,
                    **({"id": ex.id} if ex.id is not None else {}),
                }
            )
        stats = {
            "prompts": len(rows),
            "comparisons": sum(r["comparisons"] for r in rows),
            "unparsed": sum(r["unparsed"] for r in rows),
        }
        if hasattr(judge, "unparsed_scores"):
            stats["unparsed_scores"] = judge.unparsed_scores
    else:
        rows, verdicts = label_pairs(
            judge, examples, swap=cfg.swap, judge_name=name, keep_ties=cfg.ties == "keep"
        )
        stats = {"prompts": len(examples), "records": len(rows), **summarize(verdicts)}
    stats["judge"] = name
    stats["seconds"] = round(time.time() - t0, 2)
    write_jsonl(cfg.output, rows)
    if cfg.summary:
        Path(cfg.summary).write_text(json.dumps(stats, indent=2) + "\n")
    shown = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()
    )
    print(f"wrote {len(rows)} lines to {cfg.output} ({shown})", file=sys.stderr)
