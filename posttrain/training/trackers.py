"""Experiment trackers beside ``metrics.jsonl``: ``--report_to none|tensorboard|wandb``.

``metrics.jsonl`` stays the source of truth (every row is written there first); a tracker gets a
copy of each logged row's numbers, keyed by the same names (``train/loss``, ``objective/kl``...)
and the same step:

- ``tensorboard``: event files under ``output_dir/runs`` (``tensorboard --logdir OUTPUT_DIR/runs``),
  written with ``torch.utils.tensorboard.SummaryWriter``; on ``--resume`` the events logged after
  the resumed step are purged, as ``metrics.jsonl`` drops its lines past it;
- ``wandb``: an offline run under ``output_dir/wandb`` (``WANDB_MODE=offline``: never the network;
  ``wandb sync OUTPUT_DIR/wandb/offline-run-*`` uploads it later, if you want), the config as the
  run's config.

Only rank 0 (the process that writes ``metrics.jsonl``) opens a tracker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Protocol

from posttrain.errors import UserError

KINDS = ("none", "tensorboard", "wandb")
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb"}  # the package each one needs


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def check_available(kind: str) -> None:
    """Fail before anything is written when ``kind``'s package is missing (exit 2 in the CLI)."""
    if kind not in KINDS:
        raise UserError(f"--report_to: must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind != "none" and importlib.util.find_spec(INSTALL[kind]) is None:
        raise UserError(
            f"--report_to: {kind} is not installed; `pip install {INSTALL[kind]}` "
            "(or use --report_to none)"
        )


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (booleans as 0/1); lists, strings and None dropped."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardTracker:
    """Scalars to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | Path, *, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events at steps >= it (logged after the checkpoint we resume from) go
        self.writer = SummaryWriter(
            str(log_dir), purge_step=resume_step + 1 if resume_step else None
        )

    def log(self, step: int, values: dict[str, Any]) -> None:
        for name, v in scalars(values).items():
            self.writer.add_scalar(name, v, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    """An offline Weights & Biases run in ``directory`` (never the network)."""

    def __init__(self, directory: str | Path, *, name: str, config: dict[str, Any]):
        import wandb

        os.environ["WANDB_MODE"] = "offline"  # wandb's own switch: nothing leaves the machine
        os.environ.setdefault("WANDB_SILENT", "true")
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project="posttrain", name=name, dir=str(directory), config=config, mode="offline"
        )

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.run.log(scalars(values), step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(
    kind: str, output_dir: str | Path, *, config: Any, recipe: str, resume_step: int = 0
) -> Tracker | None:
    """The tracker ``--report_to kind`` asks for (None for ``none``)."""
    check_available(kind)
    output_dir = Path(output_dir)
    if kind == "tensorboard":
        return TensorBoardTracker(output_dir / "runs", resume_step=resume_step)
    if kind == "wandb":
        plain = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
        return WandbTracker(output_dir, name=f"{recipe}-{output_dir.name}", config=plain)
    return None
