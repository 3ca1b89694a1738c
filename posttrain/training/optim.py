"""AdamW with warm-up and a linear / cosine / constant schedule; the clipped optimizer step."""

from __future__ import annotations

import math

import torch

from posttrain.errors import UserError


def make_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norm weights (1-D tensors) get no decay.

    The fused implementation (one kernel over all tensors instead of ~10 small ops per tensor)
    where it applies: plain, not FSDP-sharded, floating-point tensors on CPU or CUDA. It computes
    the same update as the per-tensor loop (to float rounding)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=lr,
        betas=betas,
        eps=eps,
        fused=_can_fuse(decay + no_decay),
    )


def _can_fuse(params: list[torch.Tensor]) -> bool:
    return bool(params) and all(
        type(p.data) is torch.Tensor  # not a DTensor (FSDP shards)
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        for p in params
    )


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate for the update after ``step`` updates."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, kind: str = "linear"
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps, kind=kind),
    )


def optimizer_step(params, optimizer, scheduler, max_grad_norm: float) -> float:
    """Clip (when ``max_grad_norm`` > 0), step, advance the schedule, zero grads; returns the norm.

    A non-finite gradient norm (a NaN or inf loss upstream) raises ``UserError`` before the update,
    so the weights, and every checkpoint saved later, stay finite. Under several processes the
    norm is the global one, so every rank stops together."""
    params = [p for p in params if p.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
    if not math.isfinite(float(norm)):
        update = "" if scheduler is None else f" at step {scheduler.last_epoch + 1}"
        raise UserError(
            f"training stopped{update}: the loss or its gradient is not finite (gradient norm "
            f"{float(norm)}); the update was not applied and no non-finite weights were saved. "
            "Try a lower --learning_rate, --max_grad_norm, float32, or check the data"
        )
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
