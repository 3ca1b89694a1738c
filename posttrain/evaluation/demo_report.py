"""The report of ``posttrain demo``: ``report.html`` / ``report.md`` at the top of its output.

``write_demo_report`` reads the demo's ``eval/eval.json`` and ``eval/samples.jsonl`` and writes the
stage times, the final policies against the SFT policy (``headline`` says whether alignment
happened, and at what KL), the alignment tax, every checkpoint, the plots and sample
continuations side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from posttrain.evaluation import tables as ev
from posttrain.evaluation.report import Report, Samples, Table, write_report


def _final_points(points: list[dict]) -> dict[str, dict]:
    """The last point (highest step) of each run."""
    out: dict[str, dict] = {}
    for p in points:
        if p["name"] not in out or (p.get("step") or 0) >= (out[p["name"]].get("step") or 0):
            out[p["name"]] = p
    return out


def headline(ref: dict, finals: dict[str, dict]) -> list[str]:
    """The sentences that say whether alignment happened, with the KL it cost."""
    lines = [
        f"Gold reward (VADER compound of the continuation, mean ± s.e. over the evaluation "
        f"prompts): SFT policy {ref['gold_reward']:.3f} ± {ref['gold_reward_se']:.3f} (KL 0)."
    ]
    for name, p in finals.items():
        lines.append(
            f"{name.upper()}: gold reward {p['gold_reward']:.3f} ± {p['gold_reward_se']:.3f} "
            f"({ev.gain_text(p, ref, 'SFT')}) at KL(policy ‖ SFT) = "
            f"{p['kl_k3']:.2f} ± {p['kl_k3_se']:.2f} nats per sequence (k3; k1 {p['kl_k1']:.2f}); "
            f"win rate against SFT under the gold judge {p['win_rate']:.3f} "
            f"[{p['win_rate_ci'][0]:.3f}, {p['win_rate_ci'][1]:.3f}], length-controlled "
            f"{p['lc_win_rate']:.3f}."
        )
    return lines


def write_demo_report(
    out: Path,
    facts: dict,
    *,
    label_noise: float,
    stage_times: list[tuple[str, float]],
    t0: float,
) -> None:
    """Write ``out/report.html`` and ``out/report.md``; sets ``facts["headline"]``. ``facts``: what
    the demo recorded (``budget``, ``quick``, and the stages' ``labels``, ``reward-model``,
    ``implicit-reward``); ``stage_times``: seconds per stage; ``t0``: when the demo started."""
    res = json.loads((out / "eval" / "eval.json").read_text())
    ref = res["reference_metrics"]
    points = res["points"]
    finals = _final_points(points)
    facts["headline"] = headline(ref, finals)
    stats = facts["labels"]
    intro = [
        "The controlled sentiment experiment of the DPO paper (Rafailov et al. 2023, sec. 6.1) in "
        "miniature: a tiny llama learns to continue movie-review openings; the gold reward is "
        "VADER's compound sentiment score of the continuation; PPO (against a learned reward "
        "model) and DPO (from the same preference pairs) should make continuations positive "
        "while staying close, in KL, to the SFT policy they start from.",
        *facts["headline"],
        f"Preference data: {stats['pairs']} pairs from two SFT samples per prompt, labelled by a "
        f"simulated annotator that prefers the higher gold reward and flips "
        f"{label_noise:.0%} of its labels ({stats['flipped']} flipped; "
        f"{stats['ties_dropped']} ties and {stats['empty_dropped']} pairs with an empty response "
        "dropped).",
    ]
    if facts["quick"]:
        intro.append("--quick run: budgets too small for alignment to show; the code path only.")
    rm_acc = facts["reward-model"].get("accuracy")
    dpo_acc = facts["implicit-reward"].get("accuracy")
    stage_rows = [[name, f"{t:.1f}"] for name, t in stage_times]
    stage_rows.append(["total (before the report)", f"{time.time() - t0:.1f}"])
    tables = [
        Table(
            "Pipeline stages",
            ["stage", "seconds"],
            stage_rows,
            note=f"Budgets: {json.dumps(facts['budget'])}",
        ),
    ]
    rows = [ev._row("SFT (reference)", ref, ev.POLICY_KEYS)] + [
        ev._row(name.upper(), p, ev.POLICY_KEYS) for name, p in finals.items()
    ]
    tables.append(
        Table(
            "Final policies against the SFT policy",
            ["system", *[h for _, h in ev.POLICY_KEYS]],
            rows,
            note=(
                f"{res['n_prompts']} evaluation prompts, one sample each at temperature 1. Win "
                "rate: gold judge (higher VADER score wins, equal is a tie counted half), 95% "
                "Wilson interval; LC = length-controlled. KL per sequence in nats on the policy's "
                "own samples (k3 and k1 estimators, ± standard error). Proxy = the reward model "
                f"PPO optimised. On {stats['heldout_pairs']} held-out pairs labelled without "
                f"noise, the reward model's accuracy is {_fmt(rm_acc)} and DPO's implicit "
                f"reward accuracy is {_fmt(dpo_acc)}."
            ),
        )
    )
    cap_rows = [ev._row("SFT (reference)", ref, ev.CAPABILITY_KEYS)] + [
        ev._row(name.upper(), p, ev.CAPABILITY_KEYS) for name, p in finals.items()
    ]
    tables.append(
        Table(
            "Alignment tax and calibration",
            ["system", *[h for _, h in ev.CAPABILITY_KEYS]],
            cap_rows,
            note=(
                "Held-out NLL: nats per token on review texts never used in training (tax = "
                "policy − SFT; > 0 means the policy models ordinary text worse). Cloze: the true "
                "next word against another word that follows the same previous word elsewhere, "
                "scored by log-probability; ECE over 10 bins of the policy's confidence."
            ),
        )
    )
    all_rows = [
        ev._row(
            f"{p['name']} @{p['step']}",
            p,
            [
                ("gold_reward", "gold"),
                ("proxy_reward", "proxy (RM)"),
                ("kl_k3", "KL k3"),
                ("win_rate", "win rate"),
                ("length_mean", "length"),
                ("entropy", "token entropy"),
            ],
        )
        for p in sorted(points, key=lambda p: (p["name"], p.get("step") or 0))
    ]
    tables.append(
        Table(
            "Every checkpoint (the points of the plots)",
            ["checkpoint", "gold", "proxy (RM)", "KL k3", "win rate", "length", "token entropy"],
            all_rows,
        )
    )
    images = [
        (
            "Reward–KL frontier: gold reward gain over the SFT policy (the origin) vs KL from it. "
            "Large markers: final models; light: checkpoints; ± one standard error; each "
            "method's line is its non-dominated front (up and to the left is better; see "
            "docs/eval.md)",
            "eval/frontier.png",
        )
    ]
    if (out / "eval" / "overoptimization.png").exists():
        images.append(
            (
                "Over-optimisation: proxy (reward model) and gold reward vs sqrt(KL)",
                "eval/overoptimization.png",
            )
        )
    # samples side by side: SFT vs each final policy, with gold scores
    shown = side_by_side(out, finals)
    samples = Samples(
        "Sample continuations (same prompt, side by side)",
        ["SFT", *[n.upper() for n in finals]],
        shown,
        score_name="gold",
    )
    report = Report(
        title="posttrain demo: controlled sentiment generation",
        paragraphs=intro,
        tables=tables,
        images=images,
        samples=[samples],
    )
    write_report(report, out)


def side_by_side(out: Path, finals: dict[str, dict], n: int = 8) -> list[tuple[str, list]]:
    """The first ``n`` evaluation prompts of ``out/eval/samples.jsonl``: the reference's and each
    final policy's continuation, each with its gold (VADER) score."""
    from posttrain.tasks import get_task

    rows = [json.loads(x) for x in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    keys = [ev.point_key(p) for p in finals.values()]
    task = get_task("sentiment")
    shown = []
    for row in rows[:n]:
        texts = [row["reference"], *[row[k] for k in keys]]
        golds = task.reward([row["prompt"]] * len(texts), texts)
        shown.append((row["prompt"], list(zip(texts, golds))))
    return shown


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"
