"""``posttrain eval``: did alignment happen, and at what cost?

Modes:

- ``policy`` (default): sample one response per prompt from the policy (temperature 1) and from
  the opponent (the reference, another model, or a file of responses), then report
  - win rate against the opponent under a judge (ties as half) with a 95% Wilson interval, and the
    length-controlled win rate (``posttrain.evaluation.win_rate``); a pairwise judge (llm,
    generative, a pairwise ``module:function``) judges both orders by default and the win rate
    is the swap-debiased one, beside ``position_bias_rate`` (``--swap false``: one order);
  - KL(policy || reference) on the policy's own samples, k1 and k3 with standard errors;
  - gold reward (``--task``) and proxy reward (``--reward_model``) of both sides;
  - length, distinct-1/2, unigram entropy, and the policy's token entropy (mode collapse);
  - the alignment tax: held-out NLL and known-answer accuracy, and calibration (ECE), policy vs
    reference (``posttrain.evaluation.capability``);
  then writes ``eval.json`` (flat keys), ``samples.jsonl``, ``report.md`` and ``report.html``.
- ``frontier``: the same for several models (``--models``: directories or globs of run outputs,
  ``final/`` or ``checkpoint-STEP/``), each against the reference; plots the reward–KL frontier
  and the over-optimisation curve (``posttrain.evaluation.frontier``) into the report.
- ``reward-model``: accuracy of a reward model on preference data
  (``posttrain.evaluation.reward_model``).
- ``implicit-reward``: accuracy of a DPO policy's implicit reward on preference data
  (``posttrain.evaluation.implicit_reward``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posttrain.config import check
from posttrain.data import write_jsonl
from posttrain.errors import UserError
from posttrain.evaluation.policy import (
    _prompt_set,
    evaluate_models,
    load_choice_items,
    log,
)
from posttrain.evaluation.report import Report, Table, write_report
from posttrain.evaluation.tables import (
    _as_dict,
    _flat,
    _headline,
    build_report,
    frontier_images,
    point_key,
    policy_result,
)
from posttrain.models import check_model_name
from posttrain.training.device import resolve
from posttrain.training.run import prepare_output_dir

SUMMARY = (
    "Evaluate: win rate (+ length-controlled), KL, gold/proxy reward, diversity, alignment tax, "
    "calibration; reward-model / implicit-reward accuracy; reward–KL frontier; report.html."
)


@dataclass(kw_only=True)
class Config:
    output_dir: str
    """Where eval.json, samples.jsonl, the plots, report.md and report.html go."""
    mode: Literal["policy", "frontier", "reward-model", "implicit-reward"] = "policy"
    """policy: one policy vs an opponent; frontier: several models, plots; reward-model: RM
    accuracy on --data; implicit-reward: DPO implicit-reward accuracy on --data."""
    model: str | None = None
    """The policy to evaluate (policy and implicit-reward modes): an HF directory or a name."""
    models: list[str] = field(default_factory=list)
    """frontier mode: model directories or globs (run dirs' final/ or checkpoint-STEP/), comma
    separated; each becomes a point."""
    reference: str | None = None
    """Reference policy: KL(policy || reference) is measured against it, and it is the default
    opponent. Must share the policy's tokenizer."""
    opponent: str | None = None
    """What the policy's responses are compared with: a model, or a JSONL file with `prompt` and
    `completion` (or `completions`, the first is used); its prompts are then the prompt set.
    Default: the reference."""
    task: str | None = None
    """Built-in task (e.g. `sentiment`): gives the prompts and the gold reward."""
    prompts: str | None = None
    """Prompt-only data (JSONL/Parquet/datasets). Default: --n_prompts prompts of --task."""
    n_prompts: int = 256
    """How many prompts (from the file: the first n; from the task: n drawn with --prompt_seed)."""
    prompt_seed: int = 1
    """Seed of the task's prompt draw."""
    judge: str | None = None
    """Who decides the win rate: `task:NAME` (gold), a reward-model directory, `module:function`
    (a reward source fn(prompts, completions): pointwise scores, the higher wins, equal is a tie;
    or a pairwise judge fn(prompts, firsts, seconds) -> P(first better)), or `llm` / `generative`
    (a pairwise LLM judge run by --judge_model; its probability is the preference). Default: the
    task's gold reward, else --reward_model."""
    judge_model: str | None = None
    """The model of an `llm` or `generative` judge."""
    swap: bool = True
    """Pairwise judges (`llm`, `generative`, a `module:function` of (prompts, firsts, seconds)):
    judge every prompt with the policy's response in position A and in position B and average
    (position-swap debiasing); eval.json gets `position_bias_rate` and the single-order win rates.
    `--swap false`: one order, the policy always in position A (half the judge calls; a
    position-biased judge then decides the win rate)."""
    reward_model: str | None = None
    """Proxy reward model directory: its scores are reported as proxy_reward."""
    data: str | None = None
    """Preference data (reward-model and implicit-reward modes)."""
    beta: float = 0.1
    """implicit-reward mode: the DPO beta of the policy."""
    heldout_data: str | None = None
    """Alignment tax: held-out SFT data (prompt, completion) the preferences never covered.
    Default with --task: task texts drawn with a seed the demo never trains on."""
    choice_data: str | None = None
    """Known-answer multiple choice for accuracy and calibration: JSONL with `prompt`, `choices`
    (list of continuations) and `answer` (index). Default with --task: two-way cloze items
    (true next word vs a random word) from held-out task texts."""
    n_heldout: int = 256
    """Held-out records / cloze items generated from the task when no file is given."""
    capability: bool = True
    """Measure the alignment tax and calibration (held-out NLL, known-answer accuracy, ECE)."""
    max_new_tokens: int = 64
    """Longest sampled response."""
    batch_size: int = 64
    """Sequences per generation / forward batch."""
    n_shown: int = 8
    """Sample completions shown side by side in the report."""
    seed: int = 0
    """Sampling seed (every model samples with the same seed)."""
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    """Precision of the models: the policies, the reference, the proxy reward model and a
    judge model."""
    device: str = "auto"
    """Where the models run: auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."""
    title: str = "posttrain eval"
    """Title of the report."""

    def validate(self) -> None:
        from posttrain.training.device import validated

        validated(self.device, self.dtype)  # an absent device: exit 2, nothing written
        check(self.n_prompts >= 2, "n_prompts", "must be >= 2", self.n_prompts)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1", self.max_new_tokens)
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        check(self.n_heldout >= 1, "n_heldout", "must be >= 1", self.n_heldout)
        check(self.beta > 0, "beta", "must be > 0", self.beta)
        if self.mode == "policy":
            check(self.model is not None, "model", "is required in policy mode", self.model)
            check(
                self.reference is not None or self.opponent is not None,
                "reference",
                "is required (or --opponent) in policy mode",
                self.reference,
            )
        if self.mode == "frontier":
            check(bool(self.models), "models", "is required in frontier mode", self.models)
            check(self.reference is not None, "reference", "is required in frontier mode", None)
        if self.mode in ("reward-model", "implicit-reward"):
            check(self.data is not None, "data", f"is required in {self.mode} mode", self.data)
        if self.mode == "reward-model":
            check(self.reward_model is not None, "reward_model", "is required", None)
        if self.mode == "implicit-reward":
            check(self.model is not None, "model", "is required", self.model)
            check(self.reference is not None, "reference", "is required", self.reference)
        if self.mode in ("policy", "frontier"):
            check(
                self.task is not None
                or self.prompts is not None
                or (self.opponent is not None and Path(self.opponent).is_file()),
                "prompts",
                "give --prompts or --task",
                self.prompts,
            )


def run_policy(cfg: Config, out: Path) -> dict:
    res = evaluate_models(cfg, [("policy", cfg.model, None)])
    p = res["points"][0]
    flat = policy_result(res, model=cfg.model, reference=cfg.reference, opponent=cfg.opponent)
    rows = [
        {"prompt": pr, "policy": a, "opponent": b}
        for pr, a, b in zip(res["prompts"], res["texts"][0], res["opponent_texts"])
    ]
    write_jsonl(out / "samples.jsonl", rows)
    report = build_report(
        res,
        title=cfg.title,
        paragraphs=[_headline(p, cfg.model, cfg.reference)],
        images=[],
        capability=cfg.capability,
        n_shown=cfg.n_shown,
        opponent=cfg.opponent,
    )
    write_report(report, out)
    return flat


def run_frontier(cfg: Config, out: Path, entries=None) -> dict:
    from posttrain.evaluation.frontier import model_entries

    methods = None
    if entries is None:
        entries, methods = model_entries(cfg.models)
    res = evaluate_models(cfg, entries)
    ref = res["reference"]
    images = frontier_images(res, out, methods)
    report = build_report(
        res,
        title=cfg.title,
        paragraphs=[f"{len(entries)} models evaluated against the reference {cfg.reference}."],
        images=images,
        capability=cfg.capability,
        n_shown=cfg.n_shown,
        opponent=cfg.opponent,
    )
    write_report(report, out)
    write_jsonl(
        out / "samples.jsonl",
        [
            {
                "prompt": pr,
                "reference": res["opponent_texts"][i],
                **{point_key(p): t[i] for p, t in zip(res["points"], res["texts"])},
            }
            for i, pr in enumerate(res["prompts"])
        ],
    )
    return {
        "mode": "frontier",
        "reference": cfg.reference,
        "judge": res["judge"],
        "n_prompts": len(res["prompts"]),
        "reference_metrics": _flat(ref),
        "points": [_flat(p) for p in res["points"]],
    }


def run_reward_model(cfg: Config) -> dict:
    from posttrain.evaluation.reward_model import evaluate_reward_model

    res = evaluate_reward_model(
        cfg.reward_model, cfg.data, batch_size=cfg.batch_size, device=resolve(cfg.device)
    )
    return {
        "mode": "reward-model",
        "reward_model": cfg.reward_model,
        "data": cfg.data,
        **_as_dict(res),
    }


def run_implicit(cfg: Config) -> dict:
    from posttrain.evaluation.implicit_reward import implicit_reward_accuracy

    res = implicit_reward_accuracy(
        cfg.model,
        cfg.reference,
        cfg.data,
        beta=cfg.beta,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        device=resolve(cfg.device),
    )
    return {
        "mode": "implicit-reward",
        "model": cfg.model,
        "reference": cfg.reference,
        "data": cfg.data,
        "beta": cfg.beta,
        **_as_dict(res),
    }


def _check_inputs(cfg: Config) -> None:
    """Everything that can fail on bad input, before output_dir is touched."""
    for name in ("model", "reference"):
        value = getattr(cfg, name)
        if value is not None and not Path(value).is_dir():
            check_model_name(value)
    if cfg.opponent and not Path(cfg.opponent).is_file():
        check_model_name(cfg.opponent)
    for name in ("prompts", "data", "heldout_data", "choice_data"):
        value = getattr(cfg, name)
        if value is not None and not Path(value).exists():
            raise UserError(f"--{name}: {value}: no such file or directory")
    if cfg.reward_model is not None and not Path(cfg.reward_model).is_dir():
        raise UserError(f"--reward_model: {cfg.reward_model}: not a directory")
    if cfg.task:
        from posttrain.tasks import get_task

        get_task(cfg.task)
    if cfg.judge and cfg.mode in ("policy", "frontier"):
        check_judge_spec(cfg)
    if cfg.mode == "frontier":
        from posttrain.evaluation.frontier import model_entries

        model_entries(cfg.models)  # model dirs, globs, run dirs or sweep dirs
    if cfg.mode in ("policy", "frontier"):
        _prompt_set(cfg)  # validates prompt / opponent files
        if cfg.choice_data:
            load_choice_items(cfg.choice_data)


def check_judge_spec(cfg: Config) -> None:
    spec = cfg.judge
    if spec in ("llm", "generative") or spec.startswith("task:"):
        from posttrain.judges.factory import check_judge

        check_judge(spec, cfg.judge_model, model_field="judge_model")
    elif not (Path(spec).is_dir() or ":" in spec):
        raise UserError(
            f"--judge: {spec!r} is not task:NAME, llm, generative, module:function or a "
            "reward-model directory"
        )


def run(cfg: Config, flags: dict[str, bool]) -> dict:
    _check_inputs(cfg)
    out = Path(cfg.output_dir)
    prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
    t0 = time.time()
    if cfg.mode == "policy":
        result = run_policy(cfg, out)
    elif cfg.mode == "frontier":
        result = run_frontier(cfg, out)
    elif cfg.mode == "reward-model":
        result = run_reward_model(cfg)
    else:
        result = run_implicit(cfg)
    result["seconds"] = round(time.time() - t0, 1)
    if cfg.mode in ("reward-model", "implicit-reward"):
        rows = [[k, v] for k, v in result.items() if isinstance(v, (int, float, str))]
        write_report(
            Report(cfg.title, tables=[Table(f"{cfg.mode} evaluation", ["", ""], rows)]), out
        )
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out / 'eval.json'} and {out / 'report.html'}")
    return result
