"""Checkpoints that are never half-written, and exact resume.

A checkpoint is built in a hidden temporary directory, every file fsync'ed, a ``COMPLETE`` marker
written last, and only then renamed to ``checkpoint-STEP`` (a rename is atomic on POSIX). A kill -9
at any instant leaves either no ``checkpoint-STEP`` or a complete one; ``latest_checkpoint`` only
ever returns complete ones. What goes in: model weights, optimizer, scheduler, every RNG state
(python, numpy, torch and any named generators), the data position and whatever else the recipe
hands over in ``state``.

Under ``torchrun`` (see ``posttrain.training.distributed``) every rank calls both functions: the
weights (gathered from their shards under FSDP) and every rank's RNG states are collected, rank 0
alone writes, and every rank loads the same files, so all ranks restore the same model, optimizer
and data position, and each its own RNG states. A checkpoint written by N processes is resumed
by N (the number is stored in ``state.pt``; single-process checkpoints are unchanged).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from posttrain.errors import UserError
from posttrain.training import distributed

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    for name, gen in (generators or {}).items():
        state[f"gen:{name}"] = gen.get_state()
    return state


def set_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for name, gen in (generators or {}).items():
        gen.set_state(state[f"gen:{name}"])


def check_finite(modules: dict[str, torch.nn.Module], what: str) -> None:
    """``UserError`` naming the first parameter or buffer holding a NaN or inf; nothing non-finite
    is ever saved. With several processes every rank checks its own shard and all learn the
    verdict (a collective: call it on every rank)."""
    bad = ""
    for name, module in modules.items():
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            if local.is_floating_point() and not torch.isfinite(local.detach()).all():
                bad = f"{name}.{key}"
                break
        if bad:
            break
    if distributed.is_initialized():
        if distributed.all_sum(float(bool(bad))) > 0 and not bad:
            bad = "a parameter on another process"
    if bad:
        raise UserError(
            f"not saving {what}: the weights are not finite ({bad} holds NaN or inf); "
            "the training diverged"
        )


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    state: dict[str, Any] | None = None,
    generators: dict[str, torch.Generator] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-STEP`` atomically; keep only the newest ``keep``.

    With several processes: call it on every rank (it gathers), rank 0 writes, all wait for it.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    many = distributed.is_initialized()
    modules = {name: distributed.unwrap(m) for name, m in modules.items()}
    check_finite(modules, f"checkpoint-{step}")
    if many:  # collectives first, on every rank
        gathered = _gather(modules, optimizer, generators)
        if not distributed.is_main():
            distributed.barrier()
            return final
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        if many and name in gathered["weights"]:
            save_file(gathered["weights"][name], str(tmp / f"{name}.safetensors"))
        else:
            save_model(module, str(tmp / f"{name}.safetensors"))
    if optimizer is not None:
        opt_state = gathered["optimizer"] if many else None
        torch.save(opt_state or optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    extra = {"world_size": distributed.world_size(), "rng_ranks": gathered["rng"]} if many else {}
    torch.save(
        {"step": step, "rng": rng_state(generators), **extra, **(state or {})}, tmp / "state.pt"
    )
    (tmp / MARKER).write_text(str(step))
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(output_dir)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if many:
        distributed.barrier()
    return final


def _gather(modules, optimizer, generators) -> dict[str, Any]:
    """What rank 0 needs from the others: every rank's RNG states; full weights and optimizer
    state of FSDP-sharded modules (DDP replicas are identical: rank 0's own are complete)."""
    sharded = {name: m for name, m in modules.items() if distributed.is_fsdp(m)}
    weights = {name: distributed.full_state_dict(m) for name, m in sharded.items()}
    opt_state = None
    if sharded and optimizer is not None:
        opt_state = distributed.optimizer_state_dict(torch.nn.ModuleDict(modules), optimizer)
    return {
        "rng": distributed.gather_objects(rng_state(generators)),
        "weights": weights,
        "optimizer": opt_state,
    }


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _NAME.match(p.name)
        if m and (p / MARKER).exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generators: dict[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns the saved ``state`` dict.

    With several processes every rank calls it and reads the same files (a shared disk)."""
    path = Path(path)
    state = torch.load(path / "state.pt", weights_only=False)
    saved_by = state.pop("world_size", 1)
    if saved_by != distributed.world_size():
        raise UserError(
            f"--resume: {path} was written by {saved_by} process(es); resume it with the same "
            f"number (this run has {distributed.world_size()})"
        )
    modules = {name: distributed.unwrap(m) for name, m in modules.items()}
    sharded = any(distributed.is_fsdp(m) for m in modules.values())
    for name, module in modules.items():
        file = str(path / f"{name}.safetensors")
        if distributed.is_fsdp(module):
            distributed.load_full_state_dict(module, load_file(file))
        else:
            load_model(module, file)
    if optimizer is not None:
        opt_state = torch.load(path / "optimizer.pt", weights_only=False)
        if sharded:
            distributed.load_optimizer_state_dict(
                torch.nn.ModuleDict(modules), optimizer, opt_state
            )
        else:
            optimizer.load_state_dict(opt_state)
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = state.pop("rng")
    per_rank = state.pop("rng_ranks", None)
    set_rng_state(per_rank[distributed.rank()] if per_rank else rng, generators)
    return state
