"""Training curves from ``metrics.jsonl``: the loss, the reward (or reward margin), the accuracy,
the KL and the learning rate by step, one panel each (only the panels a run logged).

Every run writes ``output_dir/curves.png`` at the end (``Run.finish``); ``posttrain plot RUN_DIR...``
overlays several runs (one colour per run, the run directory's name in the legend). Drawn with
matplotlib's object API on an Agg canvas (no pyplot, no global backend change, no display).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain import metrics as M

# (panel title, the metric names it draws, in the order tried). A run logs some of them: the
# panel shows every one present (solid the first, dashed the rest).
PANELS: list[tuple[str, list[str]]] = [
    ("loss", [M.TRAIN_LOSS, M.EVAL_LOSS, M.LOSS_POLICY, M.LOSS_VALUE, M.LOSS_PTX]),
    (
        "reward",
        [M.OBJECTIVE_SCORES, M.OBJECTIVE_RLHF_REWARD, M.EVAL_SCORES, M.REWARDS_MARGINS],
    ),
    ("accuracy", [M.REWARDS_ACCURACIES, M.EVAL_ACCURACY]),
    ("KL", [M.OBJECTIVE_KL, M.POLICY_APPROX_KL]),
    ("learning rate", [M.TRAIN_LR]),
]


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the rows that logged a number for it."""
    pts = [
        (r[M.STEP], float(r[key]))
        for r in rows
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    return [s for s, _ in pts], [v for _, v in pts]


def panels_of(runs: Sequence[Sequence[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """The panels (and their keys) that at least one run has data for."""
    out = []
    for title, keys in PANELS:
        present = [k for k in keys if any(series(rows, k)[0] for rows in runs)]
        if present:
            out.append((title, present))
    return out


def plot_curves(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], output: str | Path, *, title: str = ""
) -> Path | None:
    """Draw ``runs`` ((label, metrics rows) each) to the PNG ``output``; None (and nothing
    written) when no run logged any of the panels' metrics."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = panels_of([rows for _, rows in runs])
    if not panels:
        return None
    cols = min(2, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(5.5 * cols, 3.6 * nrows), dpi=110)
    FigureCanvasAgg(fig)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, (panel, keys) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for r, (label, rows) in enumerate(runs):
            for j, key in enumerate(keys):
                steps, values = series(rows, key)
                if not steps:
                    continue
                name = key if len(runs) == 1 else f"{label}: {key}"
                ax.plot(
                    steps,
                    values,
                    styles[j % len(styles)],
                    color=colours[(r if len(runs) > 1 else j) % len(colours)],
                    marker="o" if len(steps) < 12 else None,
                    markersize=3,
                    linewidth=1.4,
                    label=name,
                )
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(output)
    return output


def write_run_curves(run_dir: str | Path, *, title: str = "") -> Path | None:
    """``run_dir/curves.png`` from ``run_dir/metrics.jsonl`` (None when there is nothing to draw)."""
    from posttrain.training.run import read_metrics

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    return plot_curves([(run_dir.name, read_metrics(path))], run_dir / "curves.png", title=title)
