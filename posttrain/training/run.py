"""The pieces of a training run every recipe shares: output directory, data order, metrics,
progress, checkpoints and the final model. Small objects a recipe calls, not a base class.

Under ``torchrun`` every rank builds the same ``Run``: rank 0 alone prepares output_dir and writes
config.yaml, metrics.jsonl (values averaged over ranks), checkpoints and final/; every rank
restores the same checkpoint (see ``posttrain.training.distributed``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posttrain import config as cfglib
from posttrain import metrics as M
from posttrain.errors import UserError
from posttrain.training import device as devices
from posttrain.training import distributed
from posttrain.training.checkpoint import (
    check_finite,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from posttrain.training.curves import write_run_curves
from posttrain.training.optim import make_optimizer, make_scheduler, optimizer_step
from posttrain.training.trackers import open_tracker


def prepare_output_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Make ``path`` ready; returns the checkpoint to resume from, if any.

    A non-empty directory is refused unless ``resume`` (continue from its newest complete
    checkpoint) or ``overwrite`` (start again) is given. Call it only after every input has been
    validated, so bad input never leaves a directory behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_dir: {path} exists and is not a directory")
    non_empty = path.is_dir() and any(path.iterdir())
    if resume:
        ckpt = latest_checkpoint(path)
        if ckpt is None and non_empty and not overwrite:
            raise UserError(f"--resume: {path} has no complete checkpoint to resume from")
        if ckpt is not None:
            for stale in path.glob(".checkpoint-*.tmp"):  # a save that was cut off
                shutil.rmtree(stale, ignore_errors=True)
            return ckpt
    if non_empty and not overwrite:
        raise UserError(
            f"--output_dir: {path} is not empty; pass --resume to continue or --overwrite"
        )
    if non_empty and overwrite:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return None


class DataOrder:
    """Deterministic shuffled epochs over ``n`` items; its position is part of the checkpoint."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def next(self, k: int) -> list[int]:
        """The next ``k`` indices, continuing into the next epoch when this one runs out."""
        out: list[int] = []
        while len(out) < k:
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(k - len(out), self.n - self.offset)
            out += self._perm[self.offset : self.offset + take]
            self.offset += take
        return out

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.offset / self.n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._perm = self._permutation(self.epoch)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step. On resume, lines past the resumed step
    (logged after the checkpoint, before the interruption) are dropped so nothing is doubled."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        if resume_step and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get(M.STEP, 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif not resume_step:
            self.path.write_text("")
        self.last: dict[str, Any] = {}

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {M.STEP: step, **{k: _plain(v) for k, v in values.items()}}
        self.last = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class TrainState:
    """AdamW, its schedule and the data order of an offline recipe, as one checkpointable unit."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: DataOrder

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def step(self, max_grad_norm: float) -> float:
        """Gradients summed over ranks (several processes), clipped optimizer step + schedule;
        returns the gradient norm."""
        distributed.reduce_gradients(self.model)
        return optimizer_step(
            self.model.parameters(), self.optimizer, self.scheduler, max_grad_norm
        )

    def checkpoint(self) -> dict[str, Any]:
        """Keyword arguments of ``Run.step_done`` that save (and later restore) all of it."""
        return {
            "modules": {"model": self.model},
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "state": {"data": self.order.state_dict()},
        }


class Run:
    """One training run: output dir, config.yaml, metrics, progress bar, checkpoints, final/.

    ``run.resume_from`` is the checkpoint to continue from (None for a fresh start); after the
    recipe builds its model and optimizer it calls ``run.restore(...)`` which returns the saved
    state (or None), then ``run.step_done(...)`` after every optimizer step.
    """

    def __init__(self, config: Any, flags: dict[str, bool], recipe: str):
        self.config = config
        self.recipe = recipe
        self.dir = Path(config.output_dir)
        # --device (auto: CUDA, MPS, CPU; torchrun: cuda:LOCAL_RANK); the recipe puts its models
        # and batches on run.device
        self.device = devices.select(getattr(config, "device", "cpu"))
        distributed.init(use_cuda=self.device.type == "cuda")  # a no-op without a launcher
        # rank 0 prepares output_dir; its result, or its error, reaches every rank
        self.resume_from = distributed.on_main(lambda: self._prepare(flags))
        self.start_step = 0
        self.metrics: MetricsLog | None = None
        self.tracker = None  # --report_to: TensorBoard / offline wandb (rank 0)
        self._bar = None
        self._t0 = time.time()

    def _prepare(self, flags: dict[str, bool]) -> Path | None:
        """Create (or check, or clear) output_dir and write config.yaml; the checkpoint to resume
        from, if any."""
        resume_from = prepare_output_dir(
            self.dir, resume=flags.get("resume", False), overwrite=flags.get("overwrite", False)
        )
        cfglib.save_yaml(self.config, self.dir / "config.yaml")
        return resume_from

    def restore(
        self, *, modules, optimizer=None, scheduler=None, generators=None
    ) -> dict[str, Any] | None:
        state = None
        if self.resume_from is not None:
            state = load_checkpoint(
                self.resume_from,
                modules=modules,
                optimizer=optimizer,
                scheduler=scheduler,
                generators=generators,
            )
            self.start_step = state["step"]
            if distributed.is_main():
                print(f"resuming from {self.resume_from} (step {self.start_step})", file=sys.stderr)
        if not distributed.is_main():
            return state
        self.metrics = MetricsLog(self.dir / "metrics.jsonl", resume_step=self.start_step)
        self.tracker = open_tracker(
            getattr(self.config, "report_to", "none"),
            self.dir,
            config=self.config,
            recipe=self.recipe,
            resume_step=self.start_step,
        )
        if self.config.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.config.max_steps,
                initial=self.start_step,
                desc=self.recipe,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=1.0,
            )
        return state

    def start_training(self, model: torch.nn.Module, n_items: int) -> TrainState:
        """AdamW + warm-up/decay schedule + shuffled data order for ``model`` over ``n_items``
        examples, restored from the checkpoint when resuming (then ``run.start_step`` is set)."""
        cfg = self.config
        optimizer = make_optimizer(model, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = make_scheduler(
            optimizer,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.max_steps,
            kind=cfg.lr_schedule,
        )
        train = TrainState(model, optimizer, scheduler, DataOrder(n_items, cfg.seed))
        state = self.restore(modules={"model": model}, optimizer=optimizer, scheduler=scheduler)
        if state is not None:
            train.order.load_state_dict(state["data"])
        return train

    def steps(self) -> range:
        return range(self.start_step + 1, self.config.max_steps + 1)

    def should_log(self, step: int) -> bool:
        return step % self.config.logging_steps == 0 or step == self.config.max_steps

    def should_eval(self, step: int) -> bool:
        """Whether ``step`` evaluates on the held-out data: every ``eval_steps`` and at the end."""
        cfg = self.config
        return step == cfg.max_steps or bool(cfg.eval_steps and step % cfg.eval_steps == 0)

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward on this process: batch_size / (processes x accumulation steps)."""
        cfg = self.config
        return cfg.batch_size // distributed.world_size() // cfg.gradient_accumulation_steps

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append ``values`` to metrics.jsonl; with several processes call it on every rank: each
        number is averaged over ranks (log a sum as its all-reduced value) and rank 0 writes."""
        values = distributed.all_reduce_mean(values)
        _stop_on_non_finite_loss(step, values)  # the same values on every rank: all stop
        if not distributed.is_main():
            return
        assert self.metrics is not None, "call run.restore() first"
        values = {**values, **devices.memory_metrics(self.device)}  # CUDA: peak allocated MB
        self.metrics.log(step, {**values, M.ELAPSED: round(time.time() - self._t0, 3)})
        if self.tracker is not None:  # a copy of the row metrics.jsonl just got
            self.tracker.log(step, {k: v for k, v in self.metrics.last.items() if k != M.STEP})
        if self._bar is not None:
            shown = {
                k.split("/")[-1]: f"{v:.4g}"
                for k, v in values.items()
                if isinstance(v, float)
                and k
                in (
                    M.TRAIN_LOSS,
                    M.EVAL_LOSS,
                    M.OBJECTIVE_SCORES,
                    M.REWARDS_ACCURACIES,
                    M.OBJECTIVE_KL,
                )
            }
            self._bar.set_postfix(shown, refresh=False)

    def step_done(
        self, step: int, *, modules, optimizer=None, scheduler=None, state=None, generators=None
    ) -> None:
        """Advance the progress bar; write a checkpoint when ``save_steps`` says so, and always at
        the last step (so ``--resume`` with a larger ``--max_steps`` continues from there)."""
        if self._bar is not None:
            self._bar.update(1)
        save = self.config.save_steps
        if step == self.config.max_steps or (save and step % save == 0):
            save_checkpoint(
                self.dir,
                step,
                modules=modules,
                optimizer=optimizer,
                scheduler=scheduler,
                state=state,
                generators=generators,
                keep=self.config.save_total_limit,
            )

    def finish(self, model, tokenizer=None, *, save=None, note=None) -> Path:
        """Save ``final/`` atomically (and draw ``curves.png`` from metrics.jsonl; close the
        ``--report_to`` tracker): an HF directory with the tokenizer, or through ``save(path)``
        for models with their own format (reward models; under FSDP ``save(path, state=full
        weights)``). With several processes call it on every rank: rank 0 saves (FSDP shards are
        gathered first), the others wait. Rank 0 then prints ``saved PATH`` and ``note()`` (a
        zero-argument callable, evaluated after saving, e.g. the peak memory)."""
        from posttrain.models import save_pretrained

        if self._bar is not None:
            self._bar.close()
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        final = self.dir / "final"
        model = distributed.unwrap(model)
        check_finite({"model": model}, "final/")
        # FSDP: the full weights, gathered on rank 0 (a collective); else the model's own
        state = distributed.full_state_dict(model) if distributed.is_fsdp(model) else None
        if distributed.is_main():
            if save is not None:  # its own format
                save(final, state=state)
            else:
                save_pretrained(model, tokenizer, final, state=state)
            write_run_curves(self.dir, title=f"{self.recipe}: {self.dir.name}")  # curves.png
        distributed.barrier()
        if distributed.is_main():
            print(f"saved {final}{note() if note else ''}")
        return final


def _stop_on_non_finite_loss(step: int, values: dict[str, Any]) -> None:
    """``UserError`` when a training loss (``train/loss`` or under ``loss/``) is NaN or inf: the run
    stops before this step's checkpoint (``step_done`` comes after ``log``)."""
    for key, value in values.items():
        is_loss = key == M.TRAIN_LOSS or key.startswith("loss/")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if is_loss and isinstance(value, float) and not math.isfinite(value):
            raise UserError(
                f"training stopped at step {step}: {key} is not finite ({value}); "
                "nothing from this step was saved. Try a lower --learning_rate, "
                "--max_grad_norm, float32, or check the data"
            )


def default_threads() -> None:
    """Use every core for intra-op parallelism unless the user said otherwise."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
