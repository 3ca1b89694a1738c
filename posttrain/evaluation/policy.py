"""Evaluating policies against a reference or an opponent: the machinery of ``posttrain eval``.

- loading the models to evaluate: HF directories, names, or a run's ``checkpoint-STEP``
  (``resolve_models``, ``point_label``, ``load_any``);
- sampling one response per prompt at temperature 1 (``sample``) and the KL of those samples
  from the reference (``kl_of_batches``);
- what scores the responses (``Sources``, ``load_sources``): gold reward, proxy reward model,
  the judge of the win rate; ``score_side`` and ``compare``;
- the alignment tax inputs and metrics (``capability_data``, ``load_choice_items``,
  ``capability_metrics``);
- ``evaluate_models``: all of the above for each model, against the reference / opponent.
"""

from __future__ import annotations

import glob
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posttrain.data import load_examples
from posttrain.errors import UserError
from posttrain.evaluation.capability import (
    ChoiceItem,
    cloze_items,
    heldout_nll,
    multiple_choice,
)
from posttrain.evaluation.diversity import diversity
from posttrain.evaluation.kl import kl_on_samples, mean_and_se
from posttrain.evaluation.win_rate import (
    length_controlled_win_rate,
    preferences_from_scores,
    win_rate,
)
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.rollout import SamplingParams, decode_responses
from posttrain.rollout.sampler import sample_rollouts
from posttrain.training.device import resolve


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


def frontier_entries(models: list[str]) -> list[tuple[str, str, int | None]]:
    entries = []
    for path in resolve_models(models):
        run_name, step = point_label(path)
        entries.append((run_name, str(path), step))
    return entries


def _checkpoint_weights(path: Path) -> Path | None:
    for name in ("model.safetensors", "policy.safetensors"):
        if (path / name).exists() and (path.parent / "config.yaml").exists():
            return path / name
    return None


def load_any(path: str | Path, dtype: str, device=None):
    """``(model, tokenizer)`` from a name, an HF dir, or a run's ``checkpoint-STEP`` (weights from
    the checkpoint, architecture and tokenizer from the run's starting model), on ``device``
    (None: the CPU)."""
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
        return model.to(device).eval(), tok
    check_model_name(path_s)
    tok = load_tokenizer(path_s)
    return load_model(path_s, dtype=dtype, tokenizer=tok, device=device).eval(), tok


def sample(model, tok, prompts: list, *, max_new_tokens: int, batch_size: int, seed: int):
    """One response per prompt at temperature 1 (``rollout.sampler.sample_rollouts``):
    ``(texts, (input_ids, attention_mask, response_mask) per batch)``."""
    rollouts = sample_rollouts(
        model,
        tok,
        prompts,
        SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    texts = [t for roll in rollouts for t in decode_responses(tok, roll)]
    return texts, [(r.input_ids, r.attention_mask, r.response_mask) for r in rollouts]


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


def load_sources(
    task: str | None,
    judge: str | None,
    judge_model: str | None,
    reward_model: str | None,
    *,
    seed: int,
    dtype: str,
    swap: bool = True,
    device=None,
) -> Sources:
    """The gold reward of ``task``, the proxy ``reward_model``, and the judge of the win rate:
    ``judge`` (with ``judge_model`` for an LLM judge), else the gold reward, else the proxy.
    ``swap``: pairwise judges (llm, generative, a pairwise ``module:function``) judge both orders.
    ``dtype``: what the judge model and the reward models compute in (the policies' precision, as
    the online recipes score theirs: a SmolLM2-sized reward model in bfloat16 is ~4x faster on a
    CPU than in float32)."""
    src = Sources()
    gold_task = task or (judge[5:] if judge and judge.startswith("task:") else None)
    if gold_task:
        from posttrain.tasks import get_task

        src.gold = get_task(gold_task).reward
    if reward_model:
        from posttrain.models.reward import load_reward_model

        src.proxy = load_reward_model(reward_model, dtype=dtype, device=device).score
    if judge in ("llm", "generative"):
        from posttrain.judges.factory import build_judge

        src.judge = build_judge(
            judge, judge_model, seed=seed, dtype=dtype, swap=swap, device=device
        )
        src.judge_name = f"{judge} ({judge_model})"
    elif judge and judge.startswith("task:"):
        from posttrain.tasks import get_task

        src.judge, src.judge_name = get_task(judge[5:]).reward, f"{judge} (gold)"
    elif judge:
        from posttrain.judges.pairwise import FunctionJudge, is_pairwise_function
        from posttrain.judges.sources import load_reward_source

        src.judge, src.judge_name = load_reward_source(judge, dtype=dtype, device=device), judge
        if not Path(judge).is_dir() and is_pairwise_function(src.judge.fn):
            src.judge = FunctionJudge(judge, src.judge.fn, swap=swap)
    elif src.gold is not None:
        src.judge, src.judge_name = src.gold, f"task:{task} (gold)"
    elif src.proxy is not None:
        src.judge, src.judge_name = src.proxy, f"{reward_model} (proxy RM)"
    return src


def judge_preferences(
    src: Sources, prompts, policy_texts, opp_texts, *, verdicts: list | None = None
) -> list[float]:
    """P(policy better) per prompt: a pairwise judge's probability, or 1 / 0.5 / 0 from scores.

    A pairwise judge sees the policy's response in position A, and (its ``swap``) also in
    position B, the two averaged (position-swap debiasing); ``verdicts``, when a list, receives
    the judge's :class:`~posttrain.judges.pairwise.Verdict` s."""
    if hasattr(src.judge, "verdicts"):  # pairwise judges: batched, probability of "a better"
        items = list(zip(prompts, policy_texts, opp_texts))
        found = src.judge.verdicts(items)
        if verdicts is not None:
            verdicts.extend(found)
        return [float(v.p) for v in found]
    if hasattr(src.judge, "compare"):
        return [
            float(src.judge.compare(p, a, b)) for p, a, b in zip(prompts, policy_texts, opp_texts)
        ]
    return preferences_from_scores(src.judge(prompts, policy_texts), src.judge(prompts, opp_texts))


def _mean_se(values) -> tuple[float | None, float | None]:
    if values is None:
        return None, None
    return mean_and_se([float(v) for v in values])


def capability_data(
    *, heldout_data: str | None, choice_data: str | None, task: str | None, n_heldout: int
) -> tuple[list[dict], list[ChoiceItem]]:
    """Held-out records and known-answer items, from files or generated from the task."""
    heldout: list[dict] = []
    items: list[ChoiceItem] = []
    if heldout_data:
        heldout = [
            {"prompt": ex.prompt, "completion": ex.response}
            for ex in load_examples(heldout_data, ["sft"], what="--heldout_data")
        ]
    if choice_data:
        items = load_choice_items(choice_data)
    if task and (not heldout or not items):
        from posttrain.tasks import get_task

        source = get_task(task)
        records = source.sft_records(n_heldout, seed=HELDOUT_SEED)
        heldout = heldout or records
        if not items:
            texts = source.corpus(n_heldout, seed=HELDOUT_SEED + 1)
            items = cloze_items(texts, n_heldout, seed=HELDOUT_SEED)
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


def score_side(
    src: Sources, prompts, texts, ref_gold: list[float] | None = None
) -> tuple[dict[str, Any], list[float] | None]:
    """Gold and proxy reward (mean and standard error) and diversity of ``texts``, and the gold
    reward of each (None without a gold reward). ``ref_gold``: the reference's gold rewards on the
    same prompts; adds ``gold_gain`` and ``gold_gain_se``, the mean of the per-prompt differences
    and its standard error (a paired comparison)."""
    golds = [float(v) for v in src.gold(prompts, texts)] if src.gold else None
    gold, gold_se = _mean_se(golds)
    proxy, proxy_se = _mean_se(src.proxy(prompts, texts) if src.proxy else None)
    row = {
        "gold_reward": gold,
        "gold_reward_se": gold_se,
        "proxy_reward": proxy,
        "proxy_reward_se": proxy_se,
        **diversity(texts),
    }
    if golds is not None and ref_gold is not None:
        gain, gain_se = mean_and_se([a - b for a, b in zip(golds, ref_gold, strict=True)])
        row.update(gold_gain=gain, gold_gain_se=gain_se)
    return row, golds


def compare(src: Sources, prompts, texts, opp_texts) -> dict[str, Any]:
    """Win rate (+ interval, counts) and length-controlled win rate of texts over opp_texts.

    With a pairwise judge also ``position_bias_rate`` (share of prompts whose verdict flips when
    the order is swapped; None without swap) and the single-order win rates
    ``win_rate_policy_first`` / ``win_rate_policy_second`` (policy in position A / B)."""
    verdicts: list = []
    prefs = judge_preferences(src, prompts, texts, opp_texts, verdicts=verdicts)
    wr = win_rate(prefs)
    pairwise = {}
    if verdicts:
        from posttrain.judges.pairwise import summarize

        swapped = [v.p_swapped for v in verdicts if v.p_swapped is not None]
        pairwise = {
            "swap": bool(swapped),
            "position_bias_rate": summarize(verdicts)["position_bias_rate"],
            "win_rate_policy_first": win_rate([v.p_forward for v in verdicts]).win_rate,
            "win_rate_policy_second": win_rate(swapped).win_rate if swapped else None,
        }
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
        **pairwise,
    }


def _prompt_set(cfg: Any) -> tuple[list, list[str] | None]:
    """The prompts, and the opponent's responses when --opponent is a file of them (``cfg``: the
    eval recipe's Config)."""
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


def evaluate_models(cfg: Any, entries: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    """Evaluate each ``(name, model path, step)`` against the reference / opponent.

    ``cfg`` is the eval recipe's Config (its prompt, judge, capability and sampling fields).
    Returns ``{"reference": metrics, "points": [metrics per entry], "samples": {...}}``.
    """
    t0 = time.time()
    device = resolve(getattr(cfg, "device", "cpu"))
    prompts, opp_texts = _prompt_set(cfg)
    src = load_sources(
        cfg.task,
        cfg.judge,
        cfg.judge_model,
        cfg.reward_model,
        seed=cfg.seed,
        dtype=cfg.dtype,
        swap=getattr(cfg, "swap", True),
        device=device,
    )
    if src.judge is None:
        raise UserError("--judge: nothing to judge the win rate with (give --task or --judge)")
    heldout, items = (
        capability_data(
            heldout_data=cfg.heldout_data,
            choice_data=cfg.choice_data,
            task=cfg.task,
            n_heldout=cfg.n_heldout,
        )
        if cfg.capability
        else ([], [])
    )
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)

    reference = ref_tok = None
    ref_row: dict[str, Any] = {}
    ref_texts: list[str] | None = None
    ref_gold: list[float] | None = None
    if cfg.reference:
        reference, ref_tok = load_any(cfg.reference, cfg.dtype, device)
        ref_texts, _ = sample(reference, ref_tok, prompts, **kw)
        ref_row = {"name": "reference", "model": cfg.reference}
        scores, ref_gold = score_side(src, prompts, ref_texts)
        ref_row.update(scores)
        ref_row.update({"kl_k1": 0.0, "kl_k3": 0.0, "kl_k1_se": 0.0, "kl_k3_se": 0.0})
        if cfg.capability:
            ref_row.update(capability_metrics(reference, ref_tok, heldout, items, cfg.batch_size))
    if opp_texts is None and cfg.opponent:
        opp_model, opp_tok = load_any(cfg.opponent, cfg.dtype, device)
        opp_texts, _ = sample(opp_model, opp_tok, prompts, **kw)
        del opp_model
    if opp_texts is None:
        opp_texts = ref_texts
    opp_row = ref_row
    if cfg.opponent:
        opp_row = {"name": "opponent", "model": cfg.opponent}
        opp_row.update(score_side(src, prompts, opp_texts)[0])
    log(f"eval: reference/opponent sampled on {len(prompts)} prompts ({time.time() - t0:.0f}s)")

    points: list[dict[str, Any]] = []
    texts_by_point: list[list[str]] = []
    for name, path, step in entries:
        t1 = time.time()
        policy, tok = load_any(path, cfg.dtype, device)
        texts, batches = sample(policy, tok, prompts, **kw)
        row: dict[str, Any] = {"name": name, "model": str(path), "step": step}
        row.update(score_side(src, prompts, texts, ref_gold)[0])
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
