"""Where a command computes: ``--device auto|cpu|cuda|cuda:N|mps``, and every device or dtype
decision that goes with it (the one place for them).

- :func:`resolve` turns the flag into a ``torch.device``: ``auto`` is CUDA when torch sees a CUDA
  device, else Apple's MPS, else the CPU. Under ``torchrun`` each process takes
  ``cuda:LOCAL_RANK`` (``auto`` / ``cuda``) or the CPU (gloo); ``cuda:N`` and ``mps`` are for one
  process. A device that is not there is a ``UserError`` naming it (exit 2 before anything is
  written).
- :func:`check_dtype`: ``bfloat16`` only where the device computes it (CUDA: compute capability
  8.0+, i.e. Ampere or newer; MPS: when torch can make one), ``float64`` not on MPS.
- :func:`to_device` moves a batch (tensors inside dicts, lists, tuples, dataclasses) to a device;
  models go with ``model.to(device)``. Tensors a loss or recipe creates take the device of the
  tensors they meet (``torch.zeros(..., device=x.device)``), so nothing else needs the flag.
- :func:`memory_metrics`: ``memory/peak_allocated_mb`` on CUDA (what PyTorch's caching allocator
  handed out at its peak) beside the process's peak RSS.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from posttrain.errors import UserError

CHOICES = "auto, cpu, cuda, cuda:N or mps"
PEAK_ALLOCATED = "memory/peak_allocated_mb"


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve(spec: str = "auto") -> torch.device:
    """The ``torch.device`` of ``--device spec`` on this machine (and this process under
    torchrun); ``UserError`` when it is not there."""
    spec = str(spec).strip().lower()
    kind, _, index_text = spec.partition(":")
    if spec not in ("auto", "cpu", "cuda", "mps") and not (kind == "cuda" and index_text.isdigit()):
        raise UserError(f"--device: must be one of {CHOICES} (got {spec!r})")
    launched = _launched()
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif mps_available() and not launched:
            spec = "mps"
        else:
            spec = "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device: {spec} is not available on this machine (torch {torch.__version__} "
                "sees no CUDA device); use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        if launched:
            if spec != "cuda":
                raise UserError(
                    f"--device: {spec}: under torchrun each process takes cuda:LOCAL_RANK; "
                    "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
                )
            index = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            index = int(index_text or "0")
        if index >= count:
            raise UserError(f"--device: cuda:{index} is not there ({count} CUDA device(s) visible)")
        return torch.device("cuda", index)
    if not mps_available():  # spec == "mps"
        raise UserError("--device: mps is not available on this machine (no Apple GPU seen)")
    if launched:
        raise UserError("--device: mps runs one process; under torchrun use cuda or cpu")
    return torch.device("mps")


def select(spec: str = "auto") -> torch.device:
    """:func:`resolve`, and make a CUDA device the current one (so ``torch.cuda`` calls and
    NCCL use it)."""
    device = resolve(spec)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def validated(spec: str, dtype: str = "float32") -> torch.device:
    """:func:`resolve` and :func:`check_dtype` together: what a config's ``validate`` calls."""
    device = resolve(spec)
    check_dtype(device, dtype)
    return device


def supports_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device) + 1
        except (RuntimeError, TypeError):
            return False
        return True
    return True  # CPU


def check_dtype(device: torch.device, dtype: str, field: str = "dtype") -> None:
    """``UserError`` when ``device`` cannot compute in ``dtype`` (a name: float32, bfloat16,
    float64); ``field`` names the flag in the message."""
    if dtype == "bfloat16" and not supports_bfloat16(device):
        raise UserError(
            f"--{field}: bfloat16 is not supported on {device} ({_name(device)}); use float32"
        )
    if dtype == "float64" and device.type == "mps":
        raise UserError(f"--{field}: float64 is not supported on mps; use float32")


def _name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    return device.type


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if its dtype is narrower (bfloat16, float16), else unchanged: float64
    stays float64. Log-probs, softmax and sampling of low-precision logits run in it."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def to_device(obj: Any, device: torch.device | str | None) -> Any:
    """``obj`` with every tensor in it on ``device`` (dicts, lists, tuples and dataclass fields
    followed; anything else returned as is; ``device`` None: ``obj`` itself). A tensor already
    there is not copied."""
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):  # non-blocking only host -> GPU (the reverse may race)
        return obj.to(device, non_blocking=torch.device(device).type == "cuda")
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: to_device(getattr(obj, f.name), device)
            for f in dataclasses.fields(obj)
            if f.init
        }
        return dataclasses.replace(obj, **changes)
    return obj


def module_device(module) -> torch.device | None:
    """The device of a module's first parameter (or buffer); None for a module without any, or
    a plain function standing in for a model."""
    if not isinstance(module, torch.nn.Module):
        return None
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so a wall-clock step time is the real one)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def memory_metrics(device: torch.device) -> dict[str, float]:
    """``{memory/peak_allocated_mb: ...}`` on CUDA (since the start or the last
    :func:`reset_peak`), nothing elsewhere (the CPU's peak is the RSS the recipes log)."""
    if device.type != "cuda":
        return {}
    return {PEAK_ALLOCATED: torch.cuda.max_memory_allocated(device) / 2**20}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def describe(device: torch.device) -> str:
    """One line naming the device, e.g. ``cuda:0 (NVIDIA A100-SXM4-40GB, compute capability
    8.0)`` or ``cpu``."""
    return str(device) if device.type != "cuda" else f"{device} ({_name(device)})"
