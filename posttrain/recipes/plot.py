"""``posttrain plot RUN_DIR... [--output FILE]``: overlay the training curves of several runs.

Reads each run directory's ``metrics.jsonl`` and draws, by step, the loss, the reward or accuracy,
the KL and the learning rate (the panels some run logged; one colour per run), as
``posttrain.training.curves`` draws a single run's ``curves.png`` at the end of training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from posttrain.errors import UserError
from posttrain.training.curves import plot_curves

SUMMARY = "Overlay several runs' curves (loss, reward/accuracy, KL, lr by step) in one PNG."


def read_run(run_dir: str) -> list[dict]:
    """The metrics rows of a run directory; bad lines are FILE:LINE errors."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a training run's output_dir?)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UserError(f"{path}:{i}: a metrics row needs an integer `step`")
        rows.append(row)
    return rows


def labels(run_dirs: list[str]) -> list[str]:
    """Each run's legend name: its directory's name, or the path as given when names repeat."""
    names = [Path(d).name or str(d) for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="posttrain plot", description=SUMMARY)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output_dir(s)")
    parser.add_argument("--output", default="curves.png", help="PNG to write (curves.png)")
    parser.add_argument("--title", default="", help="figure title")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    runs = [(name, read_run(d)) for name, d in zip(labels(args.runs), args.runs)]
    out = plot_curves(runs, args.output, title=args.title)
    if out is None:
        raise UserError(
            f"{', '.join(args.runs)}: no loss, reward, accuracy, KL or learning rate to plot"
        )
    print(f"wrote {out}")
    return 0
