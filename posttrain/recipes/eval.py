"""``posttrain eval``: did alignment happen, and at what cost?

Modes:

- ``policy`` (default): sample one response per prompt from the policy (temperature 1) and from
  the opponent (the reference, another model, or a file of responses), then report
  - win rate against the opponent under a judge (ties as half) with a 95% Wilson interval, and the
    length-controlled win rate (``posttrain.evaluation.win_rate``);
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

import glob
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from posttrain.config import check
from posttrain.data import encode_prompt, load_examples, write_jsonl
from posttrain.errors import UserError
from posttrain.evaluation.capability import (
    ChoiceItem,
    cloze_items,
    heldout_nll,
    multiple_choice,
)
from posttrain.evaluation.diversity import diversity
from posttrain.evaluation.frontier import plot_frontier, plot_overoptimization
from posttrain.evaluation.kl import kl_on_samples, mean_and_se
from posttrain.evaluation.report import Report, Samples, Table, write_report
from posttrain.evaluation.win_rate import (
    length_controlled_win_rate,
    preferences_from_scores,
    win_rate,
)
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.rollout import decode_responses, generate
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
    (a reward source; pointwise scores, the higher wins, equal is a tie), or `llm` / `generative`
    (a pairwise LLM judge run by --judge_model; its probability is the preference). Default: the
    task's gold reward, else --reward_model."""
    judge_model: str | None = None
    """The model of an `llm` or `generative` judge."""
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
    """Precision of the models."""
    title: str = "posttrain eval"
    """Title of the report."""

    def validate(self) -> None:
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


# ---------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_models(patterns: list[str]) -> list[Path]:
    """Expand globs; every match must be a model directory (HF dir or a run's checkpoint)."""
    found: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if any(ch in pat for ch in "*?[") else [pat]
        if not matches:
            raise UserError(f"--models: {pat} matches nothing")
        for m in matches:
            p = Path(m)
            if not p.is_dir():
                raise UserError(f"--models: {m} is not a directory")
            if not (p / "config.json").exists() and _checkpoint_weights(p) is None:
                raise UserError(f"--models: {m} is neither an HF model dir nor a checkpoint")
            if p not in found:
                found.append(p)
    return found


_STEP = re.compile(r"checkpoint-(\d+)$")


def point_label(path: Path) -> tuple[str, int | None]:
    """``(run name, step)`` of a model dir: ``runs/ppo/checkpoint-40`` -> ("ppo", 40);
    ``runs/ppo/final`` -> ("ppo", max_steps from its config.yaml, if there)."""
    m = _STEP.search(path.name)
    if m:
        return path.parent.name, int(m.group(1))
    if path.name == "final":
        step = None
        cfg = path.parent / "config.yaml"
        if cfg.exists():
            import yaml

            step = (yaml.safe_load(cfg.read_text()) or {}).get("max_steps")
        return path.parent.name, step
    return path.name, None


def _checkpoint_weights(path: Path) -> Path | None:
    for name in ("model.safetensors", "policy.safetensors"):
        if (path / name).exists() and (path.parent / "config.yaml").exists():
            return path / name
    return None


def load_any(path: str | Path, dtype: str):
    """``(model, tokenizer)`` from a name, an HF dir, or a run's ``checkpoint-STEP`` (weights from
    the checkpoint, architecture and tokenizer from the run's starting model)."""
    path_s = str(path)
    p = Path(path_s)
    if p.is_dir() and not (p / "config.json").exists():
        weights = _checkpoint_weights(p)
        if weights is None:
            raise UserError(f"{p}: not a model directory or checkpoint")
        import yaml
        from safetensors.torch import load_model as load_weights

        base = (yaml.safe_load((p.parent / "config.yaml").read_text()) or {}).get("model")
        if not base:
            raise UserError(f"{p.parent / 'config.yaml'}: no `model` to rebuild the checkpoint on")
        tok = load_tokenizer(base)
        model = load_model(base, dtype=dtype, tokenizer=tok)
        try:
            load_weights(model, str(weights), strict=True)
        except RuntimeError as exc:
            raise UserError(
                f"{weights}: weights do not fit {base} (LoRA checkpoints: evaluate final/)"
            ) from exc
        return model.eval(), tok
    check_model_name(path_s)
    tok = load_tokenizer(path_s)
    return load_model(path_s, dtype=dtype, tokenizer=tok).eval(), tok


def sample(model, tok, prompts: list, *, max_new_tokens: int, batch_size: int, seed: int):
    """One response per prompt at temperature 1: ``(texts, (input_ids, attention_mask,
    response_mask) per batch)``."""
    gen = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    batches = []
    enc = [encode_prompt(tok, p) for p in prompts]
    for i in range(0, len(enc), batch_size):
        roll = generate(
            model,
            enc[i : i + batch_size],
            pad_id=tok.pad_token_id,
            eos_id=tok.eos_token_id,
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            generator=gen,
        )
        texts += decode_responses(tok, roll)
        batches.append((roll.input_ids, roll.attention_mask, roll.response_mask))
    return texts, batches


def kl_of_batches(policy, reference, batches, batch_size: int) -> dict[str, float]:
    k1s, k3s, ent, n_tok = [], [], 0.0, 0.0
    for ids, attn, resp in batches:
        res = kl_on_samples(policy, reference, ids, attn, resp, batch_size=batch_size)
        k1s += res.per_sequence_k1
        k3s += res.per_sequence_k3
        toks = float(resp.sum())
        ent += res.entropy * toks
        n_tok += toks
    k1, k1_se = mean_and_se(k1s)
    k3, k3_se = mean_and_se(k3s)
    return {
        "kl_k1": k1,
        "kl_k1_se": k1_se,
        "kl_k3": k3,
        "kl_k3_se": k3_se,
        "entropy": ent / max(n_tok, 1.0),
    }


@dataclass
class Sources:
    """Everything that scores responses, loaded once."""

    gold: Any = None  # (prompts, completions) -> list[float]
    proxy: Any = None
    judge: Any = None  # reward source or pairwise judge (has .compare)
    judge_name: str = ""


def load_sources(cfg: Config) -> Sources:
    src = Sources()
    gold_task = cfg.task or (cfg.judge[5:] if cfg.judge and cfg.judge.startswith("task:") else None)
    if gold_task:
        from posttrain.tasks import get_task

        src.gold = get_task(gold_task).reward
    if cfg.reward_model:
        from posttrain.models.reward import load_reward_model

        src.proxy = load_reward_model(cfg.reward_model).score
    if cfg.judge in ("llm", "generative"):
        from posttrain.judges.factory import build_judge

        src.judge = build_judge(cfg.judge, cfg.judge_model, seed=cfg.seed, dtype=cfg.dtype)
        src.judge_name = f"{cfg.judge} ({cfg.judge_model})"
    elif cfg.judge and cfg.judge.startswith("task:"):
        from posttrain.tasks import get_task

        src.judge, src.judge_name = get_task(cfg.judge[5:]).reward, f"{cfg.judge} (gold)"
    elif cfg.judge:
        from posttrain.judges.sources import load_reward_source

        src.judge, src.judge_name = load_reward_source(cfg.judge), cfg.judge
    elif src.gold is not None:
        src.judge, src.judge_name = src.gold, f"task:{cfg.task} (gold)"
    elif src.proxy is not None:
        src.judge, src.judge_name = src.proxy, f"{cfg.reward_model} (proxy RM)"
    return src


def judge_preferences(src: Sources, prompts, policy_texts, opp_texts) -> list[float]:
    """P(policy better) per prompt: a pairwise judge's probability, or 1 / 0.5 / 0 from scores."""
    if hasattr(src.judge, "verdicts"):  # pairwise judges: batched, probability of "a better"
        items = list(zip(prompts, policy_texts, opp_texts))
        return [float(v.p) for v in src.judge.verdicts(items)]
    if hasattr(src.judge, "compare"):
        return [
            float(src.judge.compare(p, a, b)) for p, a, b in zip(prompts, policy_texts, opp_texts)
        ]
    return preferences_from_scores(src.judge(prompts, policy_texts), src.judge(prompts, opp_texts))


def _mean_se(values) -> tuple[float | None, float | None]:
    if values is None:
        return None, None
    return mean_and_se([float(v) for v in values])


def capability_data(cfg: Config) -> tuple[list[dict], list[ChoiceItem]]:
    """Held-out records and known-answer items, from files or generated from the task."""
    heldout: list[dict] = []
    items: list[ChoiceItem] = []
    if cfg.heldout_data:
        heldout = [
            {"prompt": ex.prompt, "completion": ex.response}
            for ex in load_examples(cfg.heldout_data, ["sft"], what="--heldout_data")
        ]
    if cfg.choice_data:
        items = load_choice_items(cfg.choice_data)
    if cfg.task and (not heldout or not items):
        from posttrain.tasks import get_task

        task = get_task(cfg.task)
        records = task.sft_records(cfg.n_heldout, seed=HELDOUT_SEED)
        heldout = heldout or records
        if not items:
            texts = task.corpus(cfg.n_heldout, seed=HELDOUT_SEED + 1)
            items = cloze_items(texts, cfg.n_heldout, seed=HELDOUT_SEED)
    return heldout, items


HELDOUT_SEED = 987_654  # task text the demo never trains on (it uses small seeds)


def load_choice_items(path: str) -> list[ChoiceItem]:
    from posttrain.data import read_records

    items = []
    for rec in read_records(path):
        d = rec.data
        ok = (
            isinstance(d.get("prompt"), str)
            and isinstance(d.get("choices"), list)
            and len(d["choices"]) >= 2
            and all(isinstance(c, str) for c in d["choices"])
            and isinstance(d.get("answer"), int)
            and 0 <= d["answer"] < len(d["choices"])
        )
        if not ok:
            raise UserError(
                f"{rec.where}: a choice item needs `prompt` (string), `choices` (2+ strings) "
                "and `answer` (index into choices)"
            )
        items.append(ChoiceItem(d["prompt"], d["choices"], d["answer"]))
    return items


def capability_metrics(model, tok, heldout, items, batch_size) -> dict[str, float]:
    out: dict[str, float] = {}
    if heldout:
        out["heldout_nll"] = heldout_nll(model, tok, heldout, batch_size=batch_size)
    if items:
        res = multiple_choice(model, tok, items, batch_size=batch_size)
        out.update(
            {"choice_accuracy": res.accuracy, "choice_confidence": res.confidence, "ece": res.ece}
        )
    return out


def score_side(src: Sources, prompts, texts) -> dict[str, Any]:
    gold, gold_se = _mean_se(src.gold(prompts, texts) if src.gold else None)
    proxy, proxy_se = _mean_se(src.proxy(prompts, texts) if src.proxy else None)
    d = diversity(texts)
    return {
        "gold_reward": gold,
        "gold_reward_se": gold_se,
        "proxy_reward": proxy,
        "proxy_reward_se": proxy_se,
        **d,
    }


def compare(src: Sources, prompts, texts, opp_texts) -> dict[str, Any]:
    """Win rate (+ interval, counts) and length-controlled win rate of texts over opp_texts."""
    prefs = judge_preferences(src, prompts, texts, opp_texts)
    wr = win_rate(prefs)
    lc = length_controlled_win_rate(
        prefs, [len(t.split()) for t in texts], [len(t.split()) for t in opp_texts]
    )
    return {
        "win_rate": wr.win_rate,
        "win_rate_ci": list(wr.ci),
        "wins": wr.wins,
        "ties": wr.ties,
        "losses": wr.losses,
        "lc_win_rate": lc.lc_win_rate,
        "lc_win_rate_ci": list(lc.ci),
        "lc_length_coef": lc.length_coef,
    }


# ---------------------------------------------------------------------------------- modes


def _prompt_set(cfg: Config) -> tuple[list, list[str] | None]:
    """The prompts, and the opponent's responses when --opponent is a file of them."""
    if cfg.opponent and Path(cfg.opponent).is_file():
        exs = load_examples(cfg.opponent, ["sft", "completions"], what="--opponent")
        exs = exs[: cfg.n_prompts]
        return [e.prompt for e in exs], [e.response or e.completions[0] for e in exs]
    if cfg.prompts:
        exs = load_examples(
            cfg.prompts, ["prompt", "sft", "preference", "completions"], what="--prompts"
        )
        return [e.prompt for e in exs[: cfg.n_prompts]], None
    from posttrain.tasks import get_task

    return get_task(cfg.task).prompts(cfg.n_prompts, seed=cfg.prompt_seed), None


def evaluate_models(cfg: Config, entries: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    """Evaluate each ``(name, model path, step)`` against the reference / opponent.

    Returns ``{"reference": metrics, "points": [metrics per entry], "samples": {...}}``.
    """
    t0 = time.time()
    prompts, opp_texts = _prompt_set(cfg)
    src = load_sources(cfg)
    if src.judge is None:
        raise UserError("--judge: nothing to judge the win rate with (give --task or --judge)")
    heldout, items = capability_data(cfg) if cfg.capability else ([], [])
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)

    reference = ref_tok = None
    ref_row: dict[str, Any] = {}
    ref_texts: list[str] | None = None
    if cfg.reference:
        reference, ref_tok = load_any(cfg.reference, cfg.dtype)
        ref_texts, _ = sample(reference, ref_tok, prompts, **kw)
        ref_row = {"name": "reference", "model": cfg.reference}
        ref_row.update(score_side(src, prompts, ref_texts))
        ref_row.update({"kl_k1": 0.0, "kl_k3": 0.0, "kl_k1_se": 0.0, "kl_k3_se": 0.0})
        if cfg.capability:
            ref_row.update(capability_metrics(reference, ref_tok, heldout, items, cfg.batch_size))
    if opp_texts is None and cfg.opponent:
        opp_model, opp_tok = load_any(cfg.opponent, cfg.dtype)
        opp_texts, _ = sample(opp_model, opp_tok, prompts, **kw)
        del opp_model
    if opp_texts is None:
        opp_texts = ref_texts
    opp_row = ref_row
    if cfg.opponent:
        opp_row = {"name": "opponent", "model": cfg.opponent}
        opp_row.update(score_side(src, prompts, opp_texts))
    log(f"eval: reference/opponent sampled on {len(prompts)} prompts ({time.time() - t0:.0f}s)")

    points: list[dict[str, Any]] = []
    texts_by_point: list[list[str]] = []
    for name, path, step in entries:
        t1 = time.time()
        policy, tok = load_any(path, cfg.dtype)
        texts, batches = sample(policy, tok, prompts, **kw)
        row: dict[str, Any] = {"name": name, "model": str(path), "step": step}
        row.update(score_side(src, prompts, texts))
        row.update(compare(src, prompts, texts, opp_texts))
        if reference is not None:
            if len(tok) != len(ref_tok) or tok.get_vocab() != ref_tok.get_vocab():
                raise UserError(
                    f"--reference: {cfg.reference} has a different tokenizer than {path}"
                )
            row.update(kl_of_batches(policy, reference, batches, cfg.batch_size))
        if cfg.capability:
            row.update(capability_metrics(policy, tok, heldout, items, cfg.batch_size))
            if "heldout_nll" in row and "heldout_nll" in ref_row:
                row["alignment_tax_nll"] = row["heldout_nll"] - ref_row["heldout_nll"]
            if "choice_accuracy" in row and "choice_accuracy" in ref_row:
                row["alignment_tax_accuracy"] = ref_row["choice_accuracy"] - row["choice_accuracy"]
        texts_by_point.append(texts)
        points.append(row)
        log(
            f"eval: {name}{'' if step is None else f' step {step}'}: "
            + (f"gold {row['gold_reward']:.3f}  " if row["gold_reward"] is not None else "")
            + (f"KL {row['kl_k3']:.2f}  " if "kl_k3" in row else "")
            + f"win rate {row['win_rate']:.3f} ({time.time() - t1:.0f}s)"
        )
    return {
        "prompts": prompts,
        "sources": src,
        "judge": src.judge_name,
        "reference": ref_row,
        "opponent": opp_row,
        "opponent_texts": opp_texts,
        "points": points,
        "texts": texts_by_point,
    }


POLICY_KEYS = [
    ("gold_reward", "gold reward"),
    ("proxy_reward", "proxy (RM)"),
    ("kl_k3", "KL k3"),
    ("kl_k1", "KL k1"),
    ("win_rate", "win rate"),
    ("win_rate_ci", "95% CI"),
    ("lc_win_rate", "LC win rate"),
    ("length_mean", "length (words)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("entropy", "token entropy"),
]
CAPABILITY_KEYS = [
    ("heldout_nll", "held-out NLL"),
    ("alignment_tax_nll", "tax (NLL)"),
    ("choice_accuracy", "cloze accuracy"),
    ("choice_confidence", "confidence"),
    ("ece", "ECE"),
]


def _row(name: str, m: dict, keys) -> list:
    out = [name]
    for k, _ in keys:
        v = m.get(k)
        if k in ("kl_k1", "kl_k3") and v is not None and m.get(k + "_se"):
            v = f"{v:.2f} ± {m[k + '_se']:.2f}"
        elif k == "gold_reward" and v is not None and m.get("gold_reward_se"):
            v = f"{v:.3f} ± {m['gold_reward_se']:.3f}"
        out.append(v)
    return out


def build_report(cfg: Config, res: dict, *, title: str, paragraphs: list[str], images) -> Report:
    ref, points = res["reference"], res["points"]
    rows = ([_row("reference", ref, POLICY_KEYS)] if ref else []) + [
        _row(p["name"] + ("" if p.get("step") is None else f" @{p['step']}"), p, POLICY_KEYS)
        for p in points
    ]
    tables = [
        Table(
            "Policies against the reference",
            ["system", *[h for _, h in POLICY_KEYS]],
            rows,
            note=(
                f"{len(res['prompts'])} prompts, one sample each at temperature 1. Win rate: judge "
                f"{res['judge']}, against the opponent's response to the same prompt, ties count "
                "half, 95% Wilson interval. LC: win rate at zero length difference (logistic "
                "regression on the standardised word-count difference). KL(policy ‖ reference) "
                "per sequence in nats on the policy's own samples, mean ± standard error. Token "
                "entropy: the policy's mean next-token entropy on its samples (nats)."
            ),
        )
    ]
    if cfg.capability and any("heldout_nll" in p or "choice_accuracy" in p for p in points):
        cap_rows = ([_row("reference", ref, CAPABILITY_KEYS)] if ref else []) + [
            _row(
                p["name"] + ("" if p.get("step") is None else f" @{p['step']}"), p, CAPABILITY_KEYS
            )
            for p in points
        ]
        tables.append(
            Table(
                "Alignment tax and calibration",
                ["system", *[h for _, h in CAPABILITY_KEYS]],
                cap_rows,
                note=(
                    "Held-out NLL: nats per token on held-out text the preferences never covered "
                    "(tax = policy − reference; > 0 is capability lost). Known-answer task: "
                    "two-way cloze (the true next word vs another word that follows the same "
                    "previous word elsewhere) scored by log-probability; "
                    "confidence = softmax of the two scores; ECE over 10 equal-width bins."
                ),
            )
        )
    last: dict[str, int] = {}  # the latest point of each run is the one shown in the samples
    for i, p in enumerate(points):
        j = last.get(p["name"])
        if j is None or _step_key(p) >= _step_key(points[j]):
            last[p["name"]] = i
    n = min(cfg.n_shown, len(res["prompts"]))
    score = res["sources"].gold
    columns = ["reference" if not cfg.opponent else "opponent", *last]
    texts = [res["opponent_texts"], *[res["texts"][i] for i in last.values()]]
    rows_s = []
    for i in range(n):
        cells = []
        for t in texts:
            s = score([res["prompts"][i]], [t[i]])[0] if score else None
            cells.append((t[i], s))
        prompt = res["prompts"][i]
        rows_s.append((prompt if isinstance(prompt, str) else json.dumps(prompt), cells))
    samples = Samples(
        "Sample completions (same prompt, side by side)",
        columns,
        rows_s,
        score_name="gold" if score else "score",
    )
    return Report(
        title=title, paragraphs=paragraphs, tables=tables, images=images, samples=[samples]
    )


def _step_key(p: dict) -> float:
    return float("inf") if p.get("step") is None else float(p["step"])


def point_key(p: dict) -> str:
    """``name`` or ``name@step``: how a point is named in samples.jsonl."""
    return p["name"] if p.get("step") is None else f"{p['name']}@{p['step']}"


def _flat(row: dict) -> dict:
    return dict(row)


OPPONENT_KEYS = (
    "gold_reward",
    "gold_reward_se",
    "proxy_reward",
    "length_mean",
    "distinct_1",
    "distinct_2",
    "unigram_entropy",
    "heldout_nll",
    "choice_accuracy",
    "ece",
)


def run_policy(cfg: Config, out: Path) -> dict:
    res = evaluate_models(cfg, [("policy", cfg.model, None)])
    p = res["points"][0]
    flat = {
        "mode": "policy",
        "model": cfg.model,
        "reference": cfg.reference,
        "opponent": cfg.opponent or cfg.reference,
        "judge": res["judge"],
        "n_prompts": len(res["prompts"]),
        **_flat(p),
    }
    prefix = "opponent_" if cfg.opponent else "reference_"
    for k, v in res["opponent"].items():
        if k in OPPONENT_KEYS and v is not None:
            flat[prefix + k] = v
    if cfg.opponent and res["reference"]:
        for k, v in res["reference"].items():
            if k in OPPONENT_KEYS and v is not None:
                flat["reference_" + k] = v
    rows = [
        {"prompt": pr, "policy": a, "opponent": b}
        for pr, a, b in zip(res["prompts"], res["texts"][0], res["opponent_texts"])
    ]
    write_jsonl(out / "samples.jsonl", rows)
    report = build_report(cfg, res, title=cfg.title, paragraphs=[_headline(p, cfg)], images=[])
    write_report(report, out)
    return flat


def _headline(p: dict, cfg: Config) -> str:
    bits = [f"policy {cfg.model}"]
    if p.get("gold_reward") is not None:
        bits.append(f"gold reward {p['gold_reward']:.3f}")
    if p.get("kl_k3") is not None:
        bits.append(f"at KL {p['kl_k3']:.2f} ± {p['kl_k3_se']:.2f} nats from {cfg.reference}")
    bits.append(
        f"win rate {p['win_rate']:.3f} [{p['win_rate_ci'][0]:.3f}, {p['win_rate_ci'][1]:.3f}], "
        f"length-controlled {p['lc_win_rate']:.3f}"
    )
    return "; ".join(bits) + "."


def frontier_entries(cfg: Config) -> list[tuple[str, str, int | None]]:
    entries = []
    for path in resolve_models(cfg.models):
        run_name, step = point_label(path)
        entries.append((run_name, str(path), step))
    return entries


def run_frontier(cfg: Config, out: Path, entries=None) -> dict:
    entries = entries or frontier_entries(cfg)
    res = evaluate_models(cfg, entries)
    ref = res["reference"]
    pts = [
        {
            "run": p["name"],
            "step": p["step"],
            "kl": p["kl_k3"],
            "kl_se": p["kl_k3_se"],
            "gold_reward": p["gold_reward"] if p["gold_reward"] is not None else p["win_rate"],
            "gold_reward_se": p["gold_reward_se"],
            "proxy_reward": p["proxy_reward"],
        }
        for p in res["points"]
    ]
    start = {
        "run": "reference",
        "step": 0,
        "kl": 0.0,
        "kl_se": 0.0,
        "gold_reward": ref.get("gold_reward"),
        "gold_reward_se": ref.get("gold_reward_se"),
        "proxy_reward": ref.get("proxy_reward"),
    }
    images = []
    if start["gold_reward"] is not None:
        # every run starts at the reference: prepend it to each run's curve
        curve = [dict(start, run=r) for r in dict.fromkeys(p["run"] for p in pts)] + pts
        plot_frontier([start, *curve], out / "frontier.png")
        images.append(("Reward–KL frontier: gold reward vs KL from the reference", "frontier.png"))
        if plot_overoptimization(curve, out / "overoptimization.png") is not None:
            images.append(
                (
                    "Over-optimisation: proxy RM score and gold reward vs sqrt(KL)",
                    "overoptimization.png",
                )
            )
    report = build_report(
        cfg,
        res,
        title=cfg.title,
        paragraphs=[f"{len(entries)} models evaluated against the reference {cfg.reference}."],
        images=images,
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

    res = evaluate_reward_model(cfg.reward_model, cfg.data, batch_size=cfg.batch_size)
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
    )
    return {
        "mode": "implicit-reward",
        "model": cfg.model,
        "reference": cfg.reference,
        "data": cfg.data,
        "beta": cfg.beta,
        **_as_dict(res),
    }


def _as_dict(res) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(res):
        res = dataclasses.asdict(res)
    if not isinstance(res, dict):
        res = {"accuracy": float(res)}
    return {
        k: v for k, v in res.items() if isinstance(v, (int, float, str, list, bool)) or v is None
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
        resolve_models(cfg.models)
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
