"""``posttrain demo --experiment overoptimization``: Goodhart's law on the sentiment task.

Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization", in miniature:
a policy optimised against a *proxy* reward model moves away from its initial policy; the proxy
reward keeps rising while the *gold* reward (here VADER, which the proxy was trained to imitate)
rises, peaks and falls. With ``d = sqrt(KL(policy || initial))`` they fit
``gold = d (a - b d)`` for best-of-n and ``gold = d (a - b log d)`` for RL.

Stages (each skipped with ``--resume`` once its output exists):

1. build, pretrain, sft  the default demo's stages (shorter: ``SFT_BUDGET``): the initial
                         (reference) policy ``sft/final``;
2. sample, label         two SFT samples per prompt for a few prompts, labelled by the demo's
                         simulated annotator with many labels flipped: a deliberately weak proxy;
3. rm                    a Bradley–Terry reward model on those few noisy pairs (the proxy);
4. bon                   ``bon_samples`` SFT samples per evaluation prompt, scored by gold and
                         proxy; best-of-n for n = 1, 2, 4, ... by Gao et al.'s unbiased
                         estimator, at the exact KL ``log n - (n - 1)/n``;
5. ppo                   PPO against the proxy with a small KL penalty, a checkpoint every
                         ``save_every`` steps;
6. rl-eval               every checkpoint on the same evaluation prompts: gold, proxy, KL (k3)
                         from the SFT policy;
7. report                least-squares fits, ``overoptimization.json`` (the contract below),
                         ``overoptimization.png``, ``report.html`` / ``report.md``.

``D/overoptimization.json`` = ``{"bon": [{"n", "kl", "gold", "proxy"}], "rl": [{"step", "kl",
"gold", "proxy"}], "fits": {"bon": {"a", "b", "r2"}, "rl": {"a", "b", "r2"}}}``: gold and proxy
are means over the same evaluation prompts minus the SFT policy's means (0 at KL 0); the fits are
ordinary least squares without intercept over the points with kl > 0
(``posttrain.evaluation.overoptimization``). Standard errors, the fitted peaks and the settings
are in ``D/details.json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from posttrain.data import write_jsonl
from posttrain.evaluation.kl import mean_and_se
from posttrain.evaluation.overoptimization import best_of_n_means, bon_kl, fit_bon, fit_rl
from posttrain.recipes import demo
from posttrain.training.run import prepare_output_dir


@dataclass(frozen=True)
class Budget:
    """Sizes of the experiment's own stages (the SFT policy comes from the demo's budget)."""

    pair_prompts: int  # prompts sampled twice for pairs (the last 10% held out, noise-free)
    label_noise: float  # share of the proxy's training labels flipped
    rm_pairs: int  # the proxy trains on the first this many labelled pairs only
    rm_steps: int
    rm_lr: float
    eval_prompts: int  # evaluation prompts, shared by best-of-n and the RL checkpoints
    bon_samples: int  # SFT samples per evaluation prompt (best-of-n up to this n)
    ppo_steps: int
    ppo_batch: int
    ppo_lr: float
    kl_coef: float
    save_every: int
    rl_samples: int  # samples per evaluation prompt for each RL checkpoint
    max_new_tokens: int


FULL = Budget(
    pair_prompts=240,
    label_noise=0.35,
    rm_pairs=20,
    rm_steps=60,
    rm_lr=3e-4,
    eval_prompts=64,
    bon_samples=256,
    ppo_steps=150,
    ppo_batch=64,
    ppo_lr=3e-5,
    kl_coef=0.005,
    save_every=10,
    rl_samples=4,
    max_new_tokens=24,
)
# the demo's stages with half its pretraining and two thirds of its SFT: the experiment needs an
# SFT policy that writes reviews, not the demo's best one (saves ~2 of the 20 minutes)
SFT_BUDGET = replace(demo.FULL, pretrain_steps=200, sft_steps=100)
QUICK = Budget(
    pair_prompts=96,
    label_noise=0.35,
    rm_pairs=16,
    rm_steps=5,
    rm_lr=1e-4,
    eval_prompts=8,
    bon_samples=8,
    ppo_steps=4,
    ppo_batch=8,
    ppo_lr=3e-4,
    kl_coef=0.005,
    save_every=2,
    rl_samples=1,
    max_new_tokens=12,
)


def run_experiment(cfg, flags: dict[str, bool]) -> dict:
    """Run the experiment into ``cfg.output_dir`` (``cfg``: the demo's Config)."""
    base = demo.QUICK if cfg.quick else SFT_BUDGET
    ob = QUICK if cfg.quick else FULL
    out = Path(cfg.output_dir)
    resume = flags.get("resume", False) and out.is_dir()
    if not resume:
        prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
    data = out / "data"
    data.mkdir(exist_ok=True)
    from posttrain.tasks import get_task

    task = get_task("sentiment")
    prog = demo.Progress(10)
    done_already = demo.Stages(out, prog, resume).done_already

    corpus = task.corpus(base.corpus, seed=cfg.seed)
    init = out / "init"
    if not done_already("build", init / "config.json"):
        prog.start("build", f"tokenizer and a {base.hidden}-wide 2-layer llama")
        init = demo.build_base(out, corpus, base, cfg.seed)
        prog.done()
    if not done_already("pretrain", out / "pretrain" / "final" / "config.json"):
        demo.stage_pretrain(cfg, base, out, init, corpus, data, prog)
    sft_dir = out / "sft" / "final"
    if not done_already("sft", sft_dir / "config.json"):
        demo.stage_sft(cfg, base, out, task, data, prog)

    # the proxy's data: few prompts, noisy labels (the demo's annotator and held-out split)
    pair_budget = replace(
        base, pair_prompts=ob.pair_prompts, ppo_prompts=max(base.ppo_prompts, 512)
    )
    noisy = replace(cfg, label_noise=ob.label_noise)  # the demo's pair stage reads its config
    labels_file = data / "labels.json"
    if done_already("sample", labels_file) and done_already("label", labels_file):
        pass
    else:
        demo.stage_pairs(noisy, pair_budget, out, task, sft_dir, data, prog, {})
    rm_dir = out / "rm" / "final"
    if not done_already("rm", rm_dir / "config.json"):
        stage_proxy_rm(cfg, ob, out, sft_dir, data, prog)

    eval_prompts = task.prompts(ob.eval_prompts, seed=cfg.seed + 4)
    bon_file = out / "bon" / "bon.json"
    if not done_already("bon", bon_file):
        stage_bon(cfg, ob, out, sft_dir, rm_dir, eval_prompts, task, prog)
    bon = json.loads(bon_file.read_text())
    if not done_already("ppo", out / "ppo" / "final" / "config.json"):
        stage_ppo(cfg, ob, out, sft_dir, rm_dir, data, prog)
    rl_file = out / "rl" / "rl.json"
    if not done_already("rl-eval", rl_file):
        stage_rl_eval(cfg, ob, out, sft_dir, rm_dir, eval_prompts, task, bon["reference"], prog)
    rl = json.loads(rl_file.read_text())

    prog.start("report", "fits, overoptimization.json, the plot and report.html")
    result, details = summarise(bon, rl)
    rm_acc = _rm_accuracy(out, rm_dir)
    details.update(
        budget=asdict(ob),
        sft_budget=asdict(base),
        rm_heldout_accuracy=rm_acc,
        labels=json.loads(labels_file.read_text()),
        stage_seconds={name: round(t, 1) for name, t in prog.times},
    )
    _write_json(out / "overoptimization.json", result)
    _write_json(out / "details.json", details)
    write_overoptimization_report(out, result, details, quick=cfg.quick)
    prog.done(str(out / "report.html"))
    for line in details["headline"]:
        print(f"[demo {prog.clock()}] {line}", file=sys.stderr)
    total = time.time() - prog.t0
    print(f"[demo {prog.clock()}] finished in {total / 60:.1f} min", file=sys.stderr)
    return result


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def stage_proxy_rm(cfg, ob: Budget, out: Path, sft_dir: Path, data: Path, prog) -> None:
    from posttrain.recipes import rm

    rows = (data / "pairs.jsonl").read_text().splitlines()[: ob.rm_pairs]
    (data / "proxy_pairs.jsonl").write_text("".join(r + "\n" for r in rows))
    prog.start(
        "rm",
        f"proxy reward model: {ob.rm_steps} steps on {len(rows)} pairs with "
        f"{ob.label_noise:.0%} label noise",
    )
    demo._run_recipe(
        rm,
        model=str(sft_dir),
        train_data=str(data / "proxy_pairs.jsonl"),
        eval_data=str(data / "pairs_heldout.jsonl"),
        output_dir=str(out / "rm"),
        max_steps=ob.rm_steps,
        batch_size=16 if not cfg.quick else 8,
        learning_rate=ob.rm_lr,
        logging_steps=max(1, ob.rm_steps // 5),
        max_length=96,
        seed=cfg.seed,
    )
    prog.done()


def _rm_accuracy(out: Path, rm_dir: Path) -> float | None:
    """The proxy's accuracy on the held-out pairs labelled without noise."""
    from posttrain.evaluation.reward_model import evaluate_reward_model

    res = evaluate_reward_model(str(rm_dir), str(out / "data" / "pairs_heldout.jsonl"))
    return res.get("accuracy")


def stage_bon(cfg, ob, out, sft_dir, rm_dir, prompts, task, prog) -> None:
    """``bon_samples`` SFT samples per prompt, gold and proxy scores; best-of-n by the unbiased
    estimator for n = 1, 2, 4, ..., bon_samples."""
    from posttrain.models import load_policy
    from posttrain.models.reward import load_reward_model
    from posttrain.recipes.sample import sample_texts

    k = ob.bon_samples
    prog.start("bon", f"{k} SFT samples for each of {len(prompts)} prompts; best-of-n, n <= {k}")
    model, tok = load_policy(str(sft_dir))
    texts = sample_texts(
        model,
        tok,
        prompts,
        n=k,
        max_new_tokens=ob.max_new_tokens,
        temperature=1.0,
        batch_size=256,
        generator=torch.Generator().manual_seed(cfg.seed + 5),
    )
    del model
    flat_p = [p for p in prompts for _ in range(k)]
    flat_t = [t for ts in texts for t in ts]
    gold = task.reward(flat_p, flat_t)
    proxy = load_reward_model(rm_dir).score(flat_p, flat_t, batch_size=64)
    ref_gold = mean_and_se(gold)
    ref_proxy = mean_and_se(proxy)
    ns = [2**i for i in range(int(math.log2(k)) + 1)]
    rows = []
    for n in ns:
        per_prompt = [
            best_of_n_means(proxy[i * k : (i + 1) * k], gold[i * k : (i + 1) * k], n)
            for i in range(len(prompts))
        ]
        g, g_se = mean_and_se([x[1] for x in per_prompt])
        p, p_se = mean_and_se([x[0] for x in per_prompt])
        rows.append(
            {"n": n, "kl": bon_kl(n), "gold": g, "gold_se": g_se, "proxy": p, "proxy_se": p_se}
        )
    (out / "bon").mkdir(exist_ok=True)
    write_jsonl(
        out / "bon" / "samples.jsonl",
        [{"prompt": p, "completions": ts} for p, ts in zip(prompts, texts)],
    )
    _write_json(out / "bon" / "scores.json", {"gold": gold, "proxy": proxy, "per_prompt": k})
    ref = {"gold": ref_gold[0], "proxy": ref_proxy[0], "n_samples": len(gold)}
    _write_json(out / "bon" / "bon.json", {"reference": ref, "points": rows})
    best = rows[-1]
    prog.done(
        f"gold {rows[0]['gold']:.3f} -> {best['gold']:.3f}, proxy {rows[0]['proxy']:.3f} -> "
        f"{best['proxy']:.3f} at n={best['n']}"
    )


def stage_ppo(cfg, ob, out, sft_dir, rm_dir, data, prog) -> None:
    from posttrain.recipes import ppo

    prog.start("ppo", f"{ob.ppo_steps} PPO steps against the proxy (KL coef {ob.kl_coef})")
    demo._run_recipe(
        ppo,
        model=str(sft_dir),
        train_data=str(data / "prompts.jsonl"),
        reward=str(rm_dir),
        output_dir=str(out / "ppo"),
        max_steps=ob.ppo_steps,
        batch_size=ob.ppo_batch,
        learning_rate=ob.ppo_lr,
        kl_coef=ob.kl_coef,
        max_new_tokens=ob.max_new_tokens,
        save_steps=ob.save_every,
        save_total_limit=1000,
        logging_steps=max(1, ob.ppo_steps // 10),
        max_length=96,
        seed=cfg.seed,
    )
    prog.done()


def stage_rl_eval(cfg, ob, out, sft_dir, rm_dir, prompts, task, ref, prog) -> None:
    """Every PPO checkpoint on the evaluation prompts: gold and proxy means (minus the SFT
    policy's), KL(policy || SFT) per sequence (k3) on the policy's own samples."""
    from posttrain.evaluation.policy import kl_of_batches, load_any, sample
    from posttrain.models.reward import load_reward_model
    from posttrain.training.checkpoint import list_checkpoints

    ckpts = list_checkpoints(out / "ppo")
    prog.start("rl-eval", f"{len(ckpts) + 1} PPO points on {len(prompts)} prompts")
    reference, _ = load_any(str(sft_dir), "float32")
    proxy_rm = load_reward_model(rm_dir)
    flat_p = [p for p in prompts for _ in range(ob.rl_samples)]
    rows = [
        {
            "step": 0,
            "kl": 0.0,
            "kl_se": 0.0,
            "gold": 0.0,
            "gold_se": 0.0,
            "proxy": 0.0,
            "proxy_se": 0.0,
        }
    ]
    final_step = ob.ppo_steps
    paths = [(int(p.name.split("-")[1]), p) for p in ckpts]
    if final_step not in {s for s, _ in paths}:
        paths.append((final_step, out / "ppo" / "final"))
    for step, path in sorted(paths):
        policy, tok = load_any(str(path), "float32")
        texts, batches = sample(
            policy,
            tok,
            flat_p,
            max_new_tokens=ob.max_new_tokens,
            batch_size=128,
            seed=cfg.seed + 6,
        )
        kl = kl_of_batches(policy, reference, batches, 128)
        gold = mean_and_se(_per_prompt(task.reward(flat_p, texts), ob.rl_samples))
        proxy = mean_and_se(
            _per_prompt(proxy_rm.score(flat_p, texts, batch_size=64), ob.rl_samples)
        )
        rows.append(
            {
                "step": step,
                "kl": kl["kl_k3"],
                "kl_se": kl["kl_k3_se"],
                "gold": gold[0] - ref["gold"],
                "gold_se": gold[1],
                "proxy": proxy[0] - ref["proxy"],
                "proxy_se": proxy[1],
            }
        )
        del policy
    (out / "rl").mkdir(exist_ok=True)
    _write_json(out / "rl" / "rl.json", {"points": rows})
    best = max(rows, key=lambda r: r["gold"])
    prog.done(f"best gold {best['gold']:+.3f} at step {best['step']} (KL {best['kl']:.2f})")


def _per_prompt(values: list[float], k: int) -> list[float]:
    """Means of consecutive groups of ``k`` (the samples of one prompt): the spread of these is
    the per-prompt spread the standard error is taken over."""
    return [sum(values[i : i + k]) / k for i in range(0, len(values), k)]


CONTRACT_BON = ("n", "kl", "gold", "proxy")
CONTRACT_RL = ("step", "kl", "gold", "proxy")


def summarise(bon: dict, rl: dict) -> tuple[dict, dict]:
    """``(overoptimization.json, details)``: the contract's points (best-of-n relative to the
    SFT policy's means), the fits, and (details) standard errors and fitted / observed peaks."""
    ref = bon["reference"]
    bon_pts = [
        dict(p, gold=p["gold"] - ref["gold"], proxy=p["proxy"] - ref["proxy"])
        for p in bon["points"]
    ]
    rl_pts = rl["points"]
    fits = {}
    peaks = {}
    for name, pts, fit in (("bon", bon_pts, fit_bon), ("rl", rl_pts, fit_rl)):
        try:
            f = fit([math.sqrt(max(p["kl"], 0.0)) for p in pts], [p["gold"] for p in pts])
        except ValueError:  # fewer than two points with KL > 0: nothing to fit
            f = None
        fits[name] = {"a": None, "b": None, "r2": None} if f is None else asdict(f)
        fits[name].pop("form", None)
        observed = max(pts, key=lambda p: p["gold"])
        beyond = [p for p in pts if p["kl"] > observed["kl"]]  # further from the reference
        pk = None if f is None else f.peak()
        peaks[name] = {
            "fitted_d": None if pk is None else pk[0],
            "fitted_kl": None if pk is None else pk[0] ** 2,
            "fitted_gold": None if pk is None else pk[1],
            "observed": observed,
            "beyond": None
            if not beyond
            else {
                "points": len(beyond),
                "max_kl": max(p["kl"] for p in beyond),
                "max_gold": max(p["gold"] for p in beyond),
                "gold_at_max_kl": max(beyond, key=lambda p: p["kl"])["gold"],
            },
        }
    result = {
        "bon": [{k: p[k] for k in CONTRACT_BON} for p in bon_pts],
        "rl": [{k: p[k] for k in CONTRACT_RL} for p in rl_pts],
        "fits": fits,
    }
    details = {
        "reference": ref,
        "bon": bon_pts,
        "rl": rl_pts,
        "peaks": peaks,
        "headline": _headline(result, peaks),
    }
    return result, details


def _headline(result: dict, peaks: dict) -> list[str]:
    lines = []
    for name, label in (("bon", "best-of-n"), ("rl", "PPO")):
        f = result["fits"][name]
        pk = peaks[name]
        obs = pk["observed"]
        where = f"n={obs['n']}" if name == "bon" else f"step {obs['step']}"
        form = "d(a - b d)" if name == "bon" else "d(a - b log d)"
        if f["a"] is None:
            text = f"{label}: fewer than two points with KL > 0, no fit; "
        else:
            text = (
                f"{label}: gold ~ {form} with a = {f['a']:.4f}, b = {f['b']:.4f}, "
                f"R^2 = {f['r2']:.3f}; "
            )
        if f["a"] is None:
            pass
        elif pk["fitted_d"] is not None:
            text += (
                f"the fitted gold peaks at d = {pk['fitted_d']:.2f} (KL {pk['fitted_kl']:.2f}) "
                f"with {pk['fitted_gold']:+.3f}; "
            )
        else:
            text += "the fitted curve never turns down (b <= 0); "
        text += f"the highest measured gold is {obs['gold']:+.3f} at {where} (KL {obs['kl']:.2f})"
        bey = pk["beyond"]
        if bey is None:
            text += ", the largest KL measured: no peak within the range measured."
        else:
            text += (
                f"; at the {bey['points']} points further out (KL up to {bey['max_kl']:.2f}) "
                f"gold is at most {bey['max_gold']:+.3f}, {bey['gold_at_max_kl']:+.3f} at the "
                "largest KL."
            )
        lines.append(text)
    return lines


def write_overoptimization_report(out: Path, result: dict, details: dict, *, quick: bool) -> None:
    from posttrain.evaluation.frontier import plot_overoptimization_experiment
    from posttrain.evaluation.report import Report, Table, write_report

    plot_overoptimization_experiment(
        details["bon"], details["rl"], result["fits"], out / "overoptimization.png"
    )
    b = details["budget"]
    acc = details["rm_heldout_accuracy"]
    lab = details["labels"]
    intro = [
        "Reward-model over-optimisation (Gao, Schulman & Hilton 2022) in miniature on the "
        "sentiment task. The proxy reward model is deliberately weak: trained on "
        f"{min(b['rm_pairs'], lab['pairs'])} pairs of SFT samples whose labels were flipped with "
        f"probability {b['label_noise']:.0%}, {b['rm_steps']} steps"
        + (
            f"; it ranks {acc:.0%} of {lab['heldout_pairs']} held-out noise-free pairs correctly."
            if acc is not None
            else "."
        ),
        "Best-of-n picks the proxy's favourite of n SFT samples (KL = log n - (n-1)/n, exact); "
        f"PPO maximises the proxy with a KL penalty of only {b['kl_coef']}. Gold (VADER) and proxy "
        "are means over the same evaluation prompts minus the SFT policy's, so both start at 0; "
        "d = sqrt(KL). Fits (least squares, no intercept): best-of-n gold = d(a - b d), "
        "RL gold = d(a - b log d).",
        *details["headline"],
    ]
    if quick:
        intro.append("--quick run: budgets too small for anything to show; the code path only.")
    fit_rows = []
    for name, label in (("bon", "best-of-n: d(a - b d)"), ("rl", "PPO: d(a - b log d)")):
        f, pk = result["fits"][name], details["peaks"][name]
        fit_rows.append(
            [label, f["a"], f["b"], f["r2"], pk["fitted_d"], pk["fitted_kl"], pk["fitted_gold"]]
        )
    tables = [
        Table(
            "Fits of gold reward on d = sqrt(KL)",
            ["form", "a", "b", "R^2", "peak d", "peak KL", "peak gold"],
            fit_rows,
            note="R^2 = 1 - SS_res / SS_tot (SS_tot about the mean gold of the fitted points).",
        ),
        Table(
            "Best-of-n (gold and proxy relative to the SFT policy; ± standard error over prompts)",
            ["n", "KL", "d", "gold", "proxy"],
            [
                [
                    p["n"],
                    p["kl"],
                    math.sqrt(p["kl"]),
                    f"{p['gold']:+.3f} ± {p['gold_se']:.3f}",
                    f"{p['proxy']:+.3f} ± {p['proxy_se']:.3f}",
                ]
                for p in details["bon"]
            ],
        ),
        Table(
            "PPO checkpoints (same evaluation prompts; KL k3 ± standard error)",
            ["step", "KL", "d", "gold", "proxy"],
            [
                [
                    p["step"],
                    f"{p['kl']:.2f} ± {p['kl_se']:.2f}",
                    math.sqrt(max(p["kl"], 0)),
                    f"{p['gold']:+.3f} ± {p['gold_se']:.3f}",
                    f"{p['proxy']:+.3f} ± {p['proxy_se']:.3f}",
                ]
                for p in details["rl"]
            ],
        ),
        Table(
            "Stages",
            ["stage", "seconds"],
            [[k, v] for k, v in details["stage_seconds"].items()],
            note=f"Budget: {json.dumps(b)}",
        ),
    ]
    report = Report(
        title="posttrain demo: reward-model over-optimisation",
        paragraphs=intro,
        tables=tables,
        images=[
            (
                "Gold (solid, left axis) and proxy (dashed, right axis) relative to the SFT policy "
                "vs sqrt(KL); fitted gold curves dotted",
                "overoptimization.png",
            )
        ],
    )
    write_report(report, out)
