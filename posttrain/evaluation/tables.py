"""The report of ``posttrain eval`` and how its results are keyed.

``POLICY_KEYS`` / ``CAPABILITY_KEYS``: the metric columns of the report's tables; ``OPPONENT_KEYS``:
the opponent's metrics copied into ``eval.json`` (``policy_result``); ``build_report``: the
``Report`` of an evaluation (``posttrain.evaluation.policy.evaluate_models``); ``frontier_images``:
the reward–KL frontier and over-optimisation plots; ``point_key``: how a point is named in
``samples.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.evaluation.frontier import plot_frontier, plot_overoptimization
from posttrain.evaluation.report import Report, Samples, Table

POLICY_KEYS = [
    ("gold_reward", "gold reward"),
    ("gold_gain", "gold gain"),
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
        elif k == "gold_gain" and v is not None:
            v = f"{v:+.3f} ± {m['gold_gain_se']:.3f}"
        out.append(v)
    return out


def build_report(
    res: dict,
    *,
    title: str,
    paragraphs: list[str],
    images,
    capability: bool,
    n_shown: int,
    opponent: str | None,
) -> Report:
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
    if capability and any("heldout_nll" in p or "choice_accuracy" in p for p in points):
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
    n = min(n_shown, len(res["prompts"]))
    score = res["sources"].gold
    columns = ["reference" if not opponent else "opponent", *last]
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


def gain_text(p: dict, ref: dict, over: str) -> str:
    """``+0.183 ± 0.056 over base``: a point's gold gain over the reference and its paired
    standard error (``gold_gain``), or only the difference of the two means for an evaluation
    written before ``gold_gain`` existed."""
    if p.get("gold_gain") is not None:
        return f"{p['gold_gain']:+.3f} ± {p['gold_gain_se']:.3f} over {over}"
    return f"{p['gold_reward'] - ref['gold_reward']:+.3f} over {over}"


def _headline(p: dict, model: str, reference: str | None) -> str:
    bits = [f"policy {model}"]
    if p.get("gold_reward") is not None:
        bits.append(f"gold reward {p['gold_reward']:.3f}")
        if p.get("gold_gain") is not None:
            bits[-1] += f" ({gain_text(p, {}, 'the reference')})"
    if p.get("kl_k3") is not None:
        bits.append(f"at KL {p['kl_k3']:.2f} ± {p['kl_k3_se']:.2f} nats from {reference}")
    bits.append(
        f"win rate {p['win_rate']:.3f} [{p['win_rate_ci'][0]:.3f}, {p['win_rate_ci'][1]:.3f}], "
        f"length-controlled {p['lc_win_rate']:.3f}"
    )
    return "; ".join(bits) + "."


def policy_result(res: dict, *, model: str, reference: str | None, opponent: str | None) -> dict:
    """``eval.json`` of policy mode: the policy's metrics, and the opponent's (with an opponent,
    the reference's too) under ``opponent_`` / ``reference_``."""
    p = res["points"][0]
    flat = {
        "mode": "policy",
        "model": model,
        "reference": reference,
        "opponent": opponent or reference,
        "judge": res["judge"],
        "n_prompts": len(res["prompts"]),
        **_flat(p),
    }
    prefix = "opponent_" if opponent else "reference_"
    for k, v in res["opponent"].items():
        if k in OPPONENT_KEYS and v is not None:
            flat[prefix + k] = v
    if opponent and res["reference"]:
        for k, v in res["reference"].items():
            if k in OPPONENT_KEYS and v is not None:
                flat["reference_" + k] = v
    return flat


def frontier_images(
    res: dict, out: Path, methods: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """Plot the reward–KL frontier and the over-optimisation curve of an evaluation of several
    models (gold reward, else win rate) into ``out``; the report's ``(caption, file name)``.
    ``methods``: run name -> method (the series whose non-dominated front is drawn)."""
    ref = res["reference"]
    with_final = {p["name"] for p in res["points"] if Path(p["model"]).name == "final"}
    pts = [
        {
            "run": p["name"],
            "method": (methods or {}).get(p["name"], p["name"]),
            **({"final": Path(p["model"]).name == "final"} if p["name"] in with_final else {}),
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
        plot_frontier([start, *pts], out / "frontier.png")
        images.append(
            (
                "Reward–KL frontier: gold reward gain over the reference vs KL from it; each "
                "run's final point large, its checkpoints light, each method's non-dominated "
                "front as a line, ± one standard error",
                "frontier.png",
            )
        )
        if plot_overoptimization(curve, out / "overoptimization.png") is not None:
            images.append(
                (
                    "Over-optimisation: proxy RM score and gold reward vs sqrt(KL)",
                    "overoptimization.png",
                )
            )
    return images


def _as_dict(res) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(res):
        res = dataclasses.asdict(res)
    if not isinstance(res, dict):
        res = {"accuracy": float(res)}
    return {
        k: v for k, v in res.items() if isinstance(v, (int, float, str, list, bool)) or v is None
    }
