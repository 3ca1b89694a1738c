"""Many processes, one recipe: the torch.distributed glue every recipe shares.

Launch any training recipe with ``torchrun --nproc_per_node N -m posttrain.cli RECIPE ...`` (or
``accelerate launch``); the launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`init` joins that process group (gloo on CPU,
NCCL when CUDA is present). Without those variables every function here is a cheap no-op, so a
recipe has one code path for one process and for many. Nothing happens at import.

How a step is split (data parallel, DDP or FSDP):

- every rank reads the whole data set and keeps the same shuffled ``DataOrder``, so all ranks
  know the same global batch; :func:`shard` gives each rank its contiguous slice of it;
- a recipe normalises its loss by the GLOBAL count (response tokens of the whole global batch for
  SFT, pairs for DPO), which every rank can compute locally because it knows the global batch;
- gradients are then SUMMED over ranks (not averaged), so the summed gradient is exactly the
  single-process gradient of the whole batch: 2 processes x batch b == 1 process x batch 2b.
  DDP: all micro-batch backward passes run inside :func:`accumulate` (DDP's ``no_sync``: no
  communication), then :func:`reduce_gradients` all-reduces the summed gradients once per
  optimizer step. This tolerates a different number of forward passes per rank (packing).
  FSDP (``fully_shard``, FSDP2): the gradient divide factor is set to 1, so every backward's
  reduce-scatter sums shards; :func:`reduce_gradients` has nothing left to do. FSDP runs
  collectives inside forward, so every rank must make the same number of forward calls.
- metrics: :func:`all_reduce_mean` averages a dict over ranks (``Run.log`` does it); a recipe
  that logs a sum (a loss normalised by the global count) all-reduces it with :func:`all_sum`
  first, so the mean of identical numbers is that number.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

STRATEGIES = ("ddp", "fsdp")


# ----------------------------------------------------------------------------- process group


def launched() -> bool:
    """True when a launcher asked for more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(use_cuda: bool | None = None) -> bool:
    """Join the process group described by the environment (idempotent); True if distributed.

    gloo on CPU, NCCL on CUDA (then the current device is ``cuda:LOCAL_RANK``); ``use_cuda``
    None: CUDA when available (``Run`` passes what ``--device`` chose). The group is destroyed
    at interpreter exit.
    """
    if is_initialized():
        return True
    if not launched() or not dist.is_available():
        return False
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    atexit.register(cleanup)
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 without a launcher); before :func:`init`, what the launcher says."""
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes output_dir, metrics, checkpoints and final/."""
    return rank() == 0


def device() -> torch.device:
    """Where this rank computes: ``cuda:LOCAL_RANK`` under NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call twice, or without one). Unreachable DDP / FSDP
    objects are collected first, while the group they use still exists: collected after it (at
    interpreter exit) they sometimes abort the process ("terminate called without an active
    exception", ~1 run in 30 under gloo)."""
    if not is_initialized():
        return
    gc.collect()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- data


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous slice of a global batch: rank r of N gets items
    ``[r * B // N, (r + 1) * B // N)``, so concatenating the ranks' slices gives the batch back.
    """
    n, r, b = world_size(), rank(), len(items)
    return list(items[r * b // n : (r + 1) * b // n])


def map_sharded(fn: Callable[[list[T]], list[Any]], items: Sequence[T]) -> list[Any]:
    """``fn`` (one result per item) on this rank's :func:`shard` of ``items``; every rank gets all
    ranks' results in order: the list ``fn(items)`` gives on one process. A collective."""
    return [x for part in gather_objects(fn(shard(items))) for x in part]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone (e.g. preparing output_dir); its result on every rank. When it
    raises, rank 0 raises it and the other ranks a ``UserError`` with its message."""
    if not is_initialized():
        return fn()
    from posttrain.errors import UserError

    if is_main():
        try:
            result = fn()
        except Exception as exc:
            broadcast_object(("error", str(exc)))
            raise
        return broadcast_object(("ok", result))[1]
    outcome, value = broadcast_object(None)
    if outcome == "error":
        raise UserError(value)
    return value


# ----------------------------------------------------------------------------- reductions


def all_sum(value: float) -> float:
    """Sum of a number over ranks (the number itself for one process)."""
    if not is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return float(t)


def all_reduce_mean(values: dict[str, Any]) -> dict[str, Any]:
    """Mean over ranks of every number in ``values``; other entries (strings, lists, None) are
    rank 0's. Keys may differ between ranks: a key is averaged over the ranks that have it."""
    if not is_initialized():
        return values
    gathered: list[dict[str, Any]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, values)
    out = dict(gathered[0])
    for key in {k for g in gathered for k in g}:
        numbers = [
            float(g[key])
            for g in gathered
            if isinstance(g.get(key), (int, float)) and not isinstance(g.get(key), bool)
        ]
        if numbers and len(set(numbers)) > 1:  # equal everywhere: keep the value (and type)
            out[key] = sum(numbers) / len(numbers)
    return out


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` for one process)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def pad_to_longest(items: list[T], filler: T) -> list[T]:
    """``items`` with ``filler`` appended up to the longest list of any rank (a collective), so
    that every rank makes as many passes: under FSDP each forward and backward is a collective."""
    return items + [filler] * (max(gather_objects(len(items))) - len(items))


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D ``t`` (lengths may differ) concatenated in rank order, on ``t``'s device;
    ``t`` itself for one process."""
    if not is_initialized():
        return t
    return torch.cat(gather_objects(t.detach().cpu())).to(t.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- models


def wrap(model: torch.nn.Module, strategy: str = "ddp") -> torch.nn.Module:
    """Prepare ``model`` for data-parallel training; unchanged for one process.

    ``ddp``: ``DistributedDataParallel`` (rank 0's weights broadcast to all ranks; buffers are
    not re-synced each forward, so ranks may run forwards independently, e.g. evaluation; its
    own gradient averaging is replaced by a hook that does nothing: see the module doc).
    ``fsdp``: FSDP2 ``fully_shard`` on every decoder layer and on the root (weights, gradients
    and AdamW states sharded N ways; the module is changed in place). Build the optimizer AFTER
    wrapping. Call ``gradient_checkpointing_enable()`` and ``apply_lora`` before.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    if not is_initialized():
        return model
    model.to(device())
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [local_rank()] if device().type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        ddp.register_comm_hook(None, _local_only)  # we sum in reduce_gradients, never average
        return ddp
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for sharded in (*layers, model):  # reduce-scatter sums (see the module doc); per FSDP unit
        sharded.set_gradient_divide_factor(1.0)
        sharded.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return model


def wrap_frozen(model: torch.nn.Module, strategy: str = "ddp") -> torch.nn.Module:
    """Prepare a frozen model that runs beside a policy wrapped with ``strategy`` (a reference
    copy): under ``fsdp`` sharded in place the same way (its forwards then gather weights, so every
    rank must run them equally often); otherwise unchanged (no gradients: nothing for DDP to do)."""
    return wrap(model, "fsdp") if strategy == "fsdp" else model


def _local_only(state, bucket):  # no return annotation: DDP checks it against a typing form
    """DDP communication hook that leaves each rank's gradients as they are."""
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (the unit FSDP shards and gathers one at a time)."""
    names = set(getattr(unwrap(model), "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:  # fall back to the children of the first ModuleList
        lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
        found = list(lists[0]) if lists else []
    return found


def masked_whiten_all(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``losses.masked_whiten`` with the mean and variance of every process's masked-in values
    (this process's alone without torchrun): the values are gathered in rank order, whitened
    together, and this process's share is put back. x, mask (N, T) -> (N, T), 0 off the mask."""
    from posttrain.losses import masked_whiten

    m = mask.bool()
    parts = gather_objects(x[m].detach().cpu())  # (M_r,) per process, rank order
    values = torch.cat(parts).to(x.device)[None]  # (1, M)
    white = masked_whiten(values, torch.ones_like(values), shift_mean)[0]
    start = sum(len(p) for p in parts[: rank()])
    out = torch.zeros_like(x)
    out[m] = white[start : start + int(m.sum())]
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: the same module)."""
    return getattr(model, "module", model) if is_ddp(model) else model


def is_ddp(model: torch.nn.Module) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def is_fsdp(model: torch.nn.Module) -> bool:
    """A module sharded by ``fully_shard`` (its parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(model, torch.nn.Module):
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def accumulate(model: torch.nn.Module) -> Iterator[None]:
    """Backward passes inside this block exchange nothing (DDP ``no_sync``); call
    :func:`reduce_gradients` after it, once per optimizer step."""
    with model.no_sync() if is_ddp(model) else contextlib.nullcontext():
        yield


def reduce_gradients(model: torch.nn.Module) -> None:
    """Sum every gradient over ranks when ``model`` is DDP-wrapped (one flat all-reduce per
    dtype). A no-op otherwise: one process; FSDP, whose backward already reduce-scatters sums; a
    model :func:`wrap` never saw (a recipe not yet made data-parallel: every rank then trains an
    identical replica on the whole batch, and summing would double its gradients)."""
    if not is_ddp(model):
        return
    params = [p for p in model.parameters() if p.requires_grad]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:  # a parameter this rank did not reach still takes part (as zeros)
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def full_state_dict(model: torch.nn.Module, *, every_rank: bool = False) -> dict[str, torch.Tensor]:
    """The whole model's weights: under FSDP (a collective: call it on every rank) on rank 0's CPU
    (other ranks get ``{}``), or with ``every_rank`` on every rank, on its device; the plain
    ``state_dict`` otherwise."""
    model = unwrap(model)
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not every_rank)
    return get_model_state_dict(model, options=options)


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into a plain or FSDP-sharded model (every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(unwrap(model), state, options=StateDictOptions(full_state_dict=True))


def optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state with full tensors (a collective under FSDP; rank 0's is complete)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state_dict(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


# ----------------------------------------------------------------------------- precision


def autocast(enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 when ``enabled`` (weights and optimizer stay in their dtype:
    mixed precision), else a no-op: on the CPU and on every accelerator torch has here, so it
    applies wherever ``--device`` put the model."""
    if not enabled:
        return contextlib.nullcontext()
    from posttrain.training.device import mps_available

    stack = contextlib.ExitStack()
    kinds = ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * mps_available()
    for kind in kinds:
        stack.enter_context(torch.autocast(device_type=kind, dtype=torch.bfloat16))
    return stack
