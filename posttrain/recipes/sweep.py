"""``posttrain sweep``: one recipe over a grid of settings, one directory per point, resumable.

The config file names the recipe, the settings every point shares and the grid; the points are
the Cartesian product of the grid's lists::

    recipe: dpo
    output_dir: runs/beta-sweep
    base:                 # the recipe's own settings (as in its --config file)
      model: runs/sft/final
      train_data: pairs.jsonl
      max_steps: 200
      save_steps: 50
    grid:                 # field (dots for sections: lora.r) -> values
      beta: [0.05, 0.1, 0.5]
      seed: [0, 1]

Point ``beta=0.05, seed=0`` trains into ``runs/beta-sweep/beta-0.05_seed-0/`` (the recipe's usual
output: ``config.yaml``, ``metrics.jsonl``, checkpoints, ``final/``). The sweep keeps its own
state beside them: ``sweep.json`` (recipe and points), ``configs/NAME.yaml`` (each point's
resolved settings), ``configs/NAME.done`` (written when the point finished), ``logs/NAME.log``
(the point's output), and ``summary.md`` / ``summary.json`` (one row per point: its grid values,
status, seconds and last logged metrics).

Resuming (``--resume``): finished points are skipped; a point that was interrupted is run again
with the recipe's own ``--resume`` (training recipes continue from their newest checkpoint, or
start again when none was written; other commands start the point again). A point whose settings
changed since it ran is refused (use ``--overwrite`` or another ``output_dir``).

Each point runs in a child process (``python -m posttrain.cli RECIPE --config ...``) rather than
in this one: a point is then exactly the command a user would run alone (fresh RNG, thread and
allocator state, no memory carried from the previous point), a crash of one point (out of memory,
a native error) is recorded and the others still run, and a killed sweep takes its running point
with it (the child gets SIGKILL when the sweep dies). The cost is the import time of a process
per point (a few seconds).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.config import check
from posttrain.errors import UserError
from posttrain.training.run import prepare_output_dir

SUMMARY = "Run one recipe over a grid (beta, kl_coef, n, seeds ...): a directory per point."

NOT_SWEEPABLE = ("sweep", "demo", "annotate", "plan")

# metrics shown in the summary by default, when a point logged them (its last logged value)
DEFAULT_KEYS = (
    "train/loss",
    "eval/loss",
    "rewards/accuracies",
    "rewards/margins",
    "eval/accuracy",
    "objective/scores",
    "objective/kl",
    "objective/rlhf_reward",
    "eval/scores",
)


@dataclass(kw_only=True)
class Config:
    recipe: str
    """The command every point runs (dpo, ppo, rloo, best-of-n, sft, rm, eval, ...)."""
    output_dir: str
    """The sweep's directory: one subdirectory per point, plus summary.md / summary.json."""
    base: dict[str, Any] = field(default_factory=dict)
    """The recipe's settings shared by every point, as in the recipe's own config file
    (sections as nested mappings). Its output_dir is set per point."""
    grid: dict[str, Any] = field(default_factory=dict)
    """Field (dots for sections, e.g. lora.r) -> list of values; the points are the product."""
    summary_keys: list[str] = field(default_factory=list)
    """Metrics (last logged value, or eval.json keys) shown in the summary; default: the common
    loss / reward / KL names a point logged."""
    stop_on_failure: bool = False
    """Stop at the first point that fails (default: run the others, exit 2 at the end)."""

    def validate(self) -> None:
        check(bool(self.grid), "grid", "must name at least one field with a list of values", None)
        for key, values in self.grid.items():
            check(
                isinstance(values, list) and len(values) > 0,
                f"grid.{key}",
                "must be a non-empty list of values",
                values,
            )
        check("output_dir" not in self.grid, "grid.output_dir", "is set per point", None)
        check("output_dir" not in self.base, "base.output_dir", "is set per point", None)


@dataclass
class Point:
    name: str  # directory name, e.g. beta-0.1_seed-0
    params: dict[str, Any]  # the grid's values of this point
    settings: dict[str, Any]  # the recipe's full settings (base + params + output_dir)


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def point_name(params: dict[str, Any]) -> str:
    """``{"beta": 0.1, "lora.r": 8}`` -> ``beta-0.1_lora.r-8`` (characters other than letters,
    digits, ``.``, ``+`` and ``-`` become ``_``)."""
    raw = "_".join(f"{k}-{_value_text(v)}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9.+\-_]", "_", raw)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--grid.{dotted}: {p} is not a section")
        tree = node
    tree[leaf] = value


def expand(cfg: Config) -> list[Point]:
    """The grid's points in order (the last field varies fastest), names made unique."""
    keys = list(cfg.grid)
    points, seen = [], set()
    for combo in itertools.product(*(cfg.grid[k] for k in keys)):
        params = dict(zip(keys, combo))
        name = point_name(params)
        if name in seen:
            name = f"{name}_{len(points)}"
        seen.add(name)
        settings = json.loads(json.dumps(cfg.base))  # a deep copy of plain data
        for k, v in params.items():
            _set_dotted(settings, k, v)
        settings["output_dir"] = str(Path(cfg.output_dir) / name)
        points.append(Point(name, params, settings))
    return points


def _recipe_module(name: str):
    import importlib

    from posttrain.cli import RECIPES

    if name not in RECIPES or name in NOT_SWEEPABLE:
        ok = ", ".join(r for r in RECIPES if r not in NOT_SWEEPABLE)
        raise UserError(f"--recipe: {name!r} cannot be swept (one of: {ok})")
    return importlib.import_module(RECIPES[name])


def _check_points(module, points: list[Point]) -> None:
    """Every point's settings must build and validate as the recipe's Config (before anything is
    written)."""
    from posttrain.config import build

    for p in points:
        try:
            cfg = build(module.Config, p.settings)
            if hasattr(cfg, "validate"):
                cfg.validate()
        except UserError as exc:
            raise UserError(f"sweep point {p.name}: {exc}") from None


def _supports_resume(module) -> bool:
    from posttrain.config import TrainConfig

    return issubclass(module.Config, TrainConfig)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL when the sweep process dies (no orphaned point runs)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_point(recipe: str, config_file: Path, log_file: Path, extra: list[str]) -> int:
    """Run ``posttrain RECIPE --config FILE [extra]`` in a child process; its exit code."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from posttrain.cli import main; sys.exit(main(sys.argv[1:]))",
        recipe,
        "--config",
        str(config_file),
        *extra,
    ]
    with open(log_file, "a") as log:
        log.write(f"$ posttrain {recipe} --config {config_file} {' '.join(extra)}\n")
        log.flush()
        preexec = _set_pdeathsig if sys.platform.startswith("linux") else None
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise


def _log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def run(cfg: Config, flags: dict[str, bool]) -> dict:
    module = _recipe_module(cfg.recipe)
    points = expand(cfg)
    _check_points(module, points)
    out = Path(cfg.output_dir)
    resume = flags.get("resume", False)
    if resume and out.is_dir() and any(out.iterdir()):
        _check_same_points(out, points)
    else:
        prepare_output_dir(out, resume=False, overwrite=flags.get("overwrite", False))
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    manifest = {
        "recipe": cfg.recipe,
        "grid": cfg.grid,
        "base": cfg.base,
        "points": [{"name": p.name, "params": p.params, "dir": p.name} for p in points],
    }
    _write(out / "sweep.json", json.dumps(manifest, indent=2) + "\n")
    events = out / "events.jsonl"
    failed = []
    t_all = time.time()
    for i, p in enumerate(points, 1):
        cfile = out / "configs" / f"{p.name}.yaml"
        done = out / "configs" / f"{p.name}.done"
        if done.exists():
            _log(f"{i}/{len(points)} {p.name}: done already, skipped")
            _event(events, p.name, "skipped")
            continue
        _write(cfile, yaml.safe_dump(p.settings, sort_keys=False))
        point_dir = Path(p.settings["output_dir"])
        started = point_dir.is_dir() and any(point_dir.iterdir())
        extra = []
        if started:  # interrupted: the recipe's own resume (or start the point again)
            extra = ["--resume", "--overwrite"] if _supports_resume(module) else ["--overwrite"]
        how = f"resuming ({' '.join(extra)})" if started else "starting"
        _log(f"{i}/{len(points)} {p.name}: {how}; log in {out / 'logs' / (p.name + '.log')}")
        _event(events, p.name, "start", flags=extra)
        t0 = time.time()
        code = run_point(cfg.recipe, cfile, out / "logs" / f"{p.name}.log", extra)
        seconds = round(time.time() - t0, 1)
        _event(events, p.name, "end", code=code, seconds=seconds)
        if code == 0:
            _write(done, json.dumps({"seconds": seconds}) + "\n")
            _log(f"{i}/{len(points)} {p.name}: done in {seconds}s")
        else:
            failed.append(p.name)
            _log(f"{i}/{len(points)} {p.name}: FAILED (exit {code}); see its log")
            if cfg.stop_on_failure:
                break
    summary = write_summary(out, cfg, points)
    _log(
        f"{sum(r['status'] == 'done' for r in summary)}/{len(points)} points done in "
        f"{time.time() - t_all:.0f}s; {out / 'summary.md'}"
    )
    if failed:
        raise UserError(
            f"sweep: {len(failed)} point(s) failed: {', '.join(failed)} (logs in {out / 'logs'};"
            " fix and re-run with --resume)"
        )
    return {"points": summary}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _event(path: Path, point: str, what: str, **extra) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"time": round(time.time(), 1), "point": point, "event": what, **extra}))
        f.write("\n")


def _check_same_points(out: Path, points: list[Point]) -> None:
    """With --resume: a point that already has settings must have the same ones now."""
    for p in points:
        cfile = out / "configs" / f"{p.name}.yaml"
        if cfile.exists() and yaml.safe_load(cfile.read_text()) != p.settings:
            raise UserError(
                f"--resume: the settings of point {p.name} changed since it ran ({cfile}); "
                "use --overwrite or another output_dir"
            )


def _last_metrics(point_dir: Path) -> dict[str, Any]:
    """The last logged value of every metric in metrics.jsonl, and eval.json's flat numbers."""
    last: dict[str, Any] = {}
    mfile = point_dir / "metrics.jsonl"
    if mfile.exists():
        for line in mfile.read_text().splitlines():
            if line.strip():
                last.update({k: v for k, v in json.loads(line).items() if v is not None})
    efile = point_dir / "eval.json"
    if efile.exists():
        res = json.loads(efile.read_text())
        last.update({k: v for k, v in res.items() if isinstance(v, (int, float))})
    return last


def summary_rows(out: Path, points: list[Point], keys: list[str]) -> list[dict]:
    rows = []
    for p in points:
        done = out / "configs" / f"{p.name}.done"
        point_dir = out / p.name
        if done.exists():
            status, seconds = "done", json.loads(done.read_text()).get("seconds")
        else:
            status = "interrupted" if point_dir.is_dir() else "pending"
            seconds = None
        metrics = _last_metrics(point_dir) if point_dir.is_dir() else {}
        rows.append(
            {
                "name": p.name,
                "dir": str(point_dir),
                "params": p.params,
                "status": status,
                "seconds": seconds,
                "step": metrics.get("step"),
                "metrics": {k: metrics[k] for k in keys if k in metrics},
            }
        )
    return rows


def write_summary(out: Path, cfg: Config, points: list[Point]) -> list[dict]:
    """``summary.json`` (one row per point) and ``summary.md`` (the same as a table)."""
    keys = list(cfg.summary_keys)
    if not keys:
        logged = set()
        for p in points:
            if (out / p.name).is_dir():
                logged |= set(_last_metrics(out / p.name))
        keys = [k for k in DEFAULT_KEYS if k in logged]
    rows = summary_rows(out, points, keys)
    _write(out / "summary.json", json.dumps(rows, indent=2) + "\n")
    grid_keys = list(cfg.grid)
    head = ["point", *grid_keys, "status", "seconds", "step", *keys]
    lines = [
        f"# sweep: posttrain {cfg.recipe}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["name"], *[_value_text(r["params"][k]) for k in grid_keys], r["status"]]
        cells += [_cell(r["seconds"]), _cell(r["step"])]
        cells += [_cell(r["metrics"].get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    _write(out / "summary.md", "\n".join(lines) + "\n")
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
