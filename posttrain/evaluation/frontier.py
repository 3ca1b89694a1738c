"""The reward–KL frontier and the over-optimisation plot, as PNG files.

A **point** is one evaluated policy (a run's final model or one of its checkpoints): a dict with

    run: str            # the series it belongs to ("ppo", "dpo beta=0.1", "sft", ...)
    method: str         # (frontier) the method whose front it counts in (default: run)
    final: bool         # (frontier) a run's final point (default: its highest step)
    step: int | None    # training step, to order a run's points
    kl: float           # KL(policy || reference) per sequence, nats (kl_se: its standard error)
    gold_reward: float  # gold (true) reward, mean over prompts (gold_reward_se optional)
    proxy_reward: float | None   # the reward model's score of the same samples

- **Frontier** (Rafailov et al. 2023, DPO, fig. 2 left): gold reward against KL from the
  reference, one colour per method; every run's final point is a point (its checkpoints
  lighter), each method's non-dominated front (:func:`non_dominated`) is the line, and the
  reference is the origin. A better method's front sits up and to the left. A run's checkpoints
  are not joined in training order: an adaptive KL controller can pull KL back, and a line in
  step order would double back on itself.
- **Over-optimisation** (Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model
  Overoptimization", fig. 1): proxy and gold reward against ``sqrt(KL)`` (their distance
  ``d = sqrt(KL)``). While the policy optimises the proxy, the proxy keeps rising; the gold
  reward rises, then flattens or falls. The two are on different scales (a reward model's logits,
  the task's gold score), so the proxy is drawn on its own right-hand axis.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

_MARKERS = "os^Dv<>pPX*h"


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _series(points: Sequence[dict]) -> dict[str, list[dict]]:
    """Points grouped by run, each run ordered by step (then KL)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for p in points:
        runs[p["run"]].append(p)
    for pts in runs.values():
        pts.sort(key=lambda p: (p.get("step") is None, p.get("step") or 0, p["kl"]))
    return dict(runs)


def _colors(runs) -> dict[str, str]:
    """A stable colour per run: the reference in black, the others along matplotlib's cycle."""
    from matplotlib import rcParams

    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    others = [r for r in runs if r != "reference"]
    colors = {r: cycle[i % len(cycle)] for i, r in enumerate(others)}
    colors["reference"] = "black"
    return colors


def non_dominated(points: Sequence[dict], *, x: str = "kl", y: str = "gold_reward") -> list[dict]:
    """The points no other point beats on both axes (the Pareto front for "less ``x``, more
    ``y``"), ordered by ``x``: a point is dominated when another has ``x`` no larger and ``y`` no
    smaller, one of them strictly. Of exact duplicates the first is kept. Along the result ``x``
    rises and ``y`` strictly rises."""
    front: list[dict] = []
    best_y = -math.inf
    # by x ascending, then y descending: a point is on the front iff its y beats every y so far
    for p in sorted(points, key=lambda q: (q[x], -q[y])):
        if p[y] > best_y:
            front.append(p)
            best_y = p[y]
    return front


def model_entries(patterns: Sequence[str]) -> tuple[list[tuple[str, str, int | None]], dict]:
    """``(entries, methods)`` for ``eval --mode frontier``: each pattern is a model directory or
    a glob of them (as before), a run directory (its ``final/`` and every ``checkpoint-STEP/``),
    or a sweep directory of ``posttrain sweep`` (every point's run). ``entries``: ``(run name,
    model path, step)``; ``methods``: run name -> method (a sweep's recipe, else the run name),
    the series whose non-dominated front is drawn."""
    import json

    from posttrain.evaluation.policy import point_label, resolve_models

    entries: list[tuple[str, str, int | None]] = []
    methods: dict[str, str] = {}

    def run_dir(path: Path, name: str, method: str) -> None:
        models = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if (path / "final").is_dir():
            models.append(path / "final")
        found = [(m, point_label(m)[1]) for m in resolve_models([str(m) for m in models])]
        final_step = found[-1][1] if found and found[-1][0].name == "final" else None
        for m, step in found:
            if m.name != "final" and final_step is not None and step == final_step:
                continue  # the last checkpoint holds final/'s weights: evaluate them once
            entries.append((name, str(m), step))
        methods[name] = method

    for pat in patterns:
        path = Path(pat)
        if (path / "sweep.json").is_file():
            sweep = json.loads((path / "sweep.json").read_text())
            for pt in sweep["points"]:
                if (path / pt["dir"]).is_dir():
                    run_dir(path / pt["dir"], f"{sweep['recipe']} {pt['name']}", sweep["recipe"])
        elif (path / "config.yaml").is_file() and not (path / "config.json").exists():
            run_dir(path, path.name, path.name)
        else:
            for m in resolve_models([pat]):
                name, step = point_label(m)
                entries.append((name, str(m), step))
                methods.setdefault(name, name)
    return entries, methods


def _front_points(points: Sequence[dict]) -> tuple[dict | None, list[dict]]:
    """The reference point (run "reference") and the others, each with ``method`` and
    ``final`` filled in (the default final point of a run is its highest step)."""
    ref = next((p for p in points if p["run"] == "reference"), None)
    others = [dict(p) for p in points if p["run"] != "reference"]
    last: dict[str, float] = {}
    for p in others:
        s = p.get("step")
        last[p["run"]] = max(last.get(p["run"], -math.inf), math.inf if s is None else s)
    for p in others:
        p.setdefault("method", p["run"])
        if "final" not in p:
            s = p.get("step")
            p["final"] = (math.inf if s is None else s) == last[p["run"]]
    return ref, others


def plot_frontier(
    points: Sequence[dict], path: str | Path, *, title: str = "Reward–KL frontier"
) -> Path:
    """The reward–KL frontier (Rafailov et al. 2023, fig. 2 left); writes ``path`` (PNG).

    Each run's final point is drawn large and its checkpoints small and light, all with error
    bars of one standard error (per-sequence spread); each method's non-dominated front (over
    all its points and the reference) is the line. With a ``reference`` point (run
    "reference"), gold is drawn relative to it, so the reference sits at the origin. Points:
    ``run``, ``step``, ``kl`` (``kl_se``), ``gold_reward`` (``gold_reward_se``), optional
    ``method`` (default: the run) and ``final`` (default: the run's highest step)."""
    ref, pts = _front_points(points)
    base = ref["gold_reward"] if ref is not None and ref.get("gold_reward") is not None else 0.0
    fig = _figure(6.8, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    methods = list(dict.fromkeys(p["method"] for p in pts))
    colors = _colors(methods)
    origin = {"kl": 0.0, "gold_reward": base}
    for i, method in enumerate(methods):
        mine = [p for p in pts if p["method"] == method]
        c, marker = colors[method], _MARKERS[i % len(_MARKERS)]
        for final, size, alpha in ((False, 3.5, 0.35), (True, 7.0, 1.0)):
            sel = [p for p in mine if bool(p["final"]) == final]
            if not sel:
                continue
            ax.errorbar(
                [p["kl"] for p in sel],
                [p["gold_reward"] - base for p in sel],
                xerr=[p.get("kl_se") or 0.0 for p in sel],
                yerr=[p.get("gold_reward_se") or 0.0 for p in sel],
                fmt=marker,
                markersize=size,
                color=c,
                alpha=alpha,
                capsize=2,
                label=f"{method} (final)" if final else f"{method} checkpoints",
            )
        front = non_dominated(mine + ([origin] if ref is not None else []))
        ax.plot(
            [p["kl"] for p in front],
            [p["gold_reward"] - base for p in front],
            "-",
            color=c,
            linewidth=1.5,
            label=f"{method} front",
        )
        runs = list(dict.fromkeys(p["run"] for p in mine))
        if len(runs) > 1:  # name each run's final point (a sweep: its grid values)
            for p in mine:
                if p["final"]:
                    ax.annotate(
                        p["run"].removeprefix(method).strip(),
                        (p["kl"], p["gold_reward"] - base),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=6,
                        color=c,
                    )
    if ref is not None:
        ax.plot([0.0], [0.0], "k*", markersize=11, label="reference", zorder=5)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ylabel = f"gold reward − reference's ({base:.3f})"
    else:
        ylabel = "gold reward (mean)"
    ax.set_xlabel("KL(policy ‖ reference) per sequence (nats)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_overoptimization(
    points: Sequence[dict], path: str | Path, *, title: str = "Over-optimisation"
) -> Path | None:
    """Gold (solid, left axis) and proxy (dashed, right axis) vs sqrt(KL) for every run that has
    proxy scores at two or more KLs; writes ``path`` (PNG) or returns None when there is nothing
    to draw."""
    runs = {
        run: [p for p in pts if p.get("proxy_reward") is not None]
        for run, pts in _series(points).items()
    }
    runs = {run: pts for run, pts in runs.items() if len(pts) >= 2}
    if not runs:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx()
    colors = _colors(runs)
    for i, (run, pts) in enumerate(runs.items()):
        c = colors[run]
        d = [math.sqrt(max(p["kl"], 0.0)) for p in pts]
        ax.plot(
            d,
            [p["gold_reward"] for p in pts],
            "-",
            marker=_MARKERS[i % len(_MARKERS)],
            color=c,
            label=f"{run} gold",
        )
        ax2.plot(
            d,
            [p["proxy_reward"] for p in pts],
            "--",
            marker=_MARKERS[i % len(_MARKERS)],
            markerfacecolor="none",
            color=c,
            label=f"{run} proxy (RM)",
        )
    ax.set_xlabel("sqrt(KL(policy ‖ reference))  (nats^½)")
    ax.set_ylabel("gold reward (solid)")
    ax2.set_ylabel("proxy reward-model score (dashed)")
    return _save_two_axes(fig, ax, ax2, title, path, fontsize=8, loc="best")


def plot_overoptimization_experiment(
    bon: Sequence[dict],
    rl: Sequence[dict],
    fits: dict[str, dict],
    path: str | Path,
    *,
    title: str = "Over-optimisation of a weak proxy reward model",
) -> Path:
    """Gao et al. (2022) fig. 1 style: gold (solid, left axis) and proxy (dashed, right axis)
    reward relative to the initial policy against d = sqrt(KL), joined in order of d (not of
    training step), for best-of-n (``bon`` points:
    ``n``, ``kl``, ``gold``, ``proxy``, optional ``gold_se`` / ``proxy_se``) and RL (``rl``
    points, ``step`` instead of ``n``), with the fitted gold curves (``fits[name]``: ``a``, ``b``)
    dotted. Writes ``path`` (PNG)."""
    from posttrain.evaluation.overoptimization import Fit

    fig = _figure(7.2, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx()
    series = (("best-of-n", "bon", bon, "tab:blue", "o"), ("PPO", "rl", rl, "tab:red", "s"))
    for label, form, pts, color, marker in series:
        if not pts:
            continue
        pts = sorted(pts, key=lambda p: p["kl"])  # a curve in d (RL's KL need not grow each step)
        d = [math.sqrt(max(p["kl"], 0.0)) for p in pts]
        ax.errorbar(
            d,
            [p["gold"] for p in pts],
            yerr=[p.get("gold_se") or 0.0 for p in pts],
            fmt="-",
            marker=marker,
            color=color,
            capsize=2,
            label=f"{label} gold",
        )
        ax2.errorbar(
            d,
            [p["proxy"] for p in pts],
            yerr=[p.get("proxy_se") or 0.0 for p in pts],
            fmt="--",
            marker=marker,
            markerfacecolor="none",
            color=color,
            alpha=0.6,
            capsize=2,
            label=f"{label} proxy (RM)",
        )
        f = fits.get(form)
        if f is not None and f.get("a") is not None and max(d) > 0:
            fit = Fit(f["a"], f["b"], f.get("r2", 0.0), form)
            top = max(d)
            xs = [top * i / 200 for i in range(201)]
            ax.plot(
                xs,
                [fit(x) for x in xs],
                ":",
                color=color,
                linewidth=1.5,
                label=f"{label} fit a={f['a']:.3g} b={f['b']:.3g} R²={f.get('r2', 0):.2f}",
            )
            pk = fit.peak()
            if pk is not None and pk[0] <= top:
                ax.axvline(pk[0], color=color, linewidth=0.8, alpha=0.5)
    ax.axhline(0.0, color="black", linewidth=0.6)
    _align_zero(ax, ax2)
    ax.set_xlabel("d = sqrt(KL(policy ‖ initial policy))  (nats^½)")
    ax.set_ylabel("gold reward − initial policy's (solid)")
    ax2.set_ylabel("proxy RM score − initial policy's (dashed)")
    return _save_two_axes(fig, ax, ax2, title, path, fontsize=7, loc="lower right")


def _align_zero(ax, ax2) -> None:
    """Set both y-axes' limits so that 0 is at the same height on each (both curves start at the
    reference's 0)."""
    lims = []
    for a in (ax, ax2):
        lo, hi = a.get_ylim()
        lims.append((min(lo, 0.0), max(hi, 0.0)))
    # the share of each axis below zero; use the larger for both
    below = max(-lo / (hi - lo) if hi > lo else 0.5 for lo, hi in lims)
    below = min(max(below, 0.05), 0.95)
    for a, (lo, hi) in zip((ax, ax2), lims):
        # extend one side so that -lo' / (hi' - lo') == below
        hi = max(hi, -lo * (1 - below) / below)
        lo = min(lo, -hi * below / (1 - below))
        a.set_ylim(lo, hi)


def _save_two_axes(fig, ax, ax2, title: str, path, *, fontsize: int, loc: str) -> Path:
    """Title, grid, one legend for both y axes (gold on ``ax``, proxy on ``ax2``); saved."""
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=fontsize, loc=loc)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
