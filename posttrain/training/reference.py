"""The reference policy pi_ref: one component for every recipe that ties the policy to a
reference (dpo, kto, online-dpo, ppo, rloo, grpo, reinforce).

Four kinds (:data:`KINDS`):

- ``model``: a frozen copy of the starting model (or of another model), sharded like the policy
  under ``--distributed fsdp`` (:func:`frozen_copy`);
- ``lora``: the policy itself with its LoRA adapters disabled (no second model in memory);
- ``precomputed``: summed log-probs of preference pairs computed once before training with a
  frozen copy that is then freed, cached in the run directory (:func:`precompute_pair_logps`)
  and served by row index;
- ``none``: no reference (reference-free losses).

Use it as ``with reference() as ref_model`` (the reference model: ``model`` and ``lora`` kinds),
or ``reference.pair_logps(batch, split, idx)`` for a pair batch (every kind), or
``reference.token_logps(ids, attention, response_mask, temperature)`` for rollouts.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from posttrain.data.preference import EncodedPair, collate_pairs
from posttrain.models import forward_logprobs, pair_logps
from posttrain.models.lora import adapters_disabled
from posttrain.models.modes import eval_mode
from posttrain.training import distributed

KINDS = ("model", "lora", "precomputed", "none")


class Reference:
    """The reference policy of a run (see the module doc). ``policy``: the model as
    ``apply_lora`` returned it (``lora`` kind); ``frozen``: the frozen copy (``model`` kind);
    ``cache``: ``{split: (N, 2) float64 [chosen, rejected] summed log-probs}`` (``precomputed``)."""

    def __init__(self, kind: str, *, policy=None, frozen=None, cache=None):
        if kind not in KINDS:
            raise ValueError(f"unknown reference kind {kind!r}; expected one of {KINDS}")
        self.kind, self.policy, self.frozen, self.cache = kind, policy, frozen, cache

    def __call__(self):
        """A context manager yielding the reference model (``model`` or ``lora`` kind)."""
        if self.kind == "lora":
            return adapters_disabled(self.policy)
        if self.kind == "model":
            return contextlib.nullcontext(self.frozen)
        raise ValueError(f"a {self.kind} reference has no model to run")

    @torch.no_grad()
    def pair_logps(
        self, batch: dict[str, torch.Tensor], split: str = "train", idx: list[int] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(ref_chosen (B,), ref_rejected (B,))`` of a pair batch, or ``(None, None)`` for
        kind ``none``; ``precomputed`` serves rows ``idx`` of the cached ``split``."""
        if self.kind == "none":
            return None, None
        if self.kind == "precomputed":  # cached on the CPU; served on the batch's device
            rows = self.cache[split][idx]
            if batch is not None:
                rows = rows.to(batch["input_ids"].device)
            return rows[:, 0], rows[:, 1]
        with self() as model:
            r = pair_logps(model, batch)
        return r.chosen, r.rejected

    @torch.no_grad()
    def token_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        *,
        share_prefix: bool = False,
    ) -> torch.Tensor:
        """(N, T-1) per-token reference log-probs (``forward_logprobs``'s convention)."""
        with self() as model:
            return forward_logprobs(
                model,
                input_ids,
                attention_mask,
                response_mask,
                temperature=temperature,
                share_prefix=share_prefix,
            ).logps


def frozen_copy(model: torch.nn.Module, strategy: str = "ddp") -> torch.nn.Module:
    """A deep copy of ``model`` with gradients off, in eval mode; under ``fsdp`` sharded in
    place like the policy (``distributed.wrap_frozen``)."""
    frozen = copy.deepcopy(model).requires_grad_(False).eval()
    return distributed.wrap_frozen(frozen, strategy)


def policy_reference(model, lora_enabled: bool, strategy: str = "ddp") -> Reference:
    """The reference of the online recipes: the policy with adapters disabled under LoRA, else a
    frozen copy of the starting model (sharded under ``fsdp``). Call it with the model as
    ``apply_lora`` returned it, before the first update."""
    if lora_enabled:
        return Reference("lora", policy=model)
    return Reference("model", frozen=frozen_copy(model, strategy))


# --------------------------------------------------------------------------- precomputed


@torch.no_grad()
def reference_logps(
    reference, pairs: list[EncodedPair], pad_id: int, batch_size: int, padding_free: bool = False
) -> torch.Tensor:
    """(N, 2) summed log-probs [chosen, rejected] of every pair under the model ``reference``,
    in order (float64).

    Batched by length (the pairs sorted by their longer response, results put back in order), so
    batches carry little padding."""
    with eval_mode(reference):
        out = torch.zeros(len(pairs), 2, dtype=torch.float64)
        by_length = sorted(range(len(pairs)), key=lambda i: _longer(pairs[i]))
        for k in range(0, len(pairs), batch_size):
            idx = by_length[k : k + batch_size]
            batch = collate_pairs([pairs[i] for i in idx], pad_id, padding_free=padding_free)
            lp = pair_logps(reference, batch)
            out[idx] = torch.stack([lp.chosen, lp.rejected], -1).double().cpu()
    return out


def _longer(pair: EncodedPair) -> int:
    return max(len(pair.chosen.input_ids), len(pair.rejected.input_ids))


def fill_reference_cache(
    cache: dict, wanted: dict[str, tuple[list[EncodedPair], list[int]]], compute
) -> bool:
    """Compute the rows of ``cache[split]`` (NaN = not computed yet) that ``wanted[split] =
    (pairs, indices)`` asks for, with ``compute(pairs) -> (n, 2)``; True if any were missing."""
    filled = False
    for split, (pairs, indices) in wanted.items():
        idx = torch.tensor(indices, dtype=torch.long)
        missing = idx[cache[split][idx, 0].isnan()].tolist()
        if missing:
            cache[split][missing] = compute([pairs[i] for i in missing])
            filled = True
    return filled


def data_key(pairs: list[EncodedPair], *parts: str) -> str:
    """A fingerprint of tokenised pairs (and e.g. the reference model's name and dtype)."""
    h = hashlib.sha256("\0".join(parts).encode())
    for p in pairs:
        for e in (p.chosen, p.rejected):
            h.update(f"{e.response_start}:{','.join(map(str, e.input_ids))};".encode())
    return h.hexdigest()


def load_reference_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached reference log-probs at ``path`` if they were computed for ``key``, else None."""
    if not path.exists():
        return None
    cache = torch.load(path, weights_only=True)
    if cache.get("key") != key:
        print(f"note: {path} is for other data or another reference; recomputing", file=sys.stderr)
        return None
    return cache


def save_reference_cache(path: Path, cache: dict) -> None:
    """Write atomically: a run killed mid-write leaves no cache (it is recomputed on resume)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(cache, tmp)
    os.replace(tmp, path)


def precompute_pair_logps(
    path: Path,
    key: str,
    wanted: dict[str, tuple[list[EncodedPair], list[int]]],
    load_frozen: Callable[[], torch.nn.Module],
    *,
    pad_id: int,
    batch_size: int,
    padding_free: bool,
) -> dict[str, torch.Tensor]:
    """The ``precomputed`` reference's cache: ``{split: (N, 2)}`` summed log-probs of the pairs
    ``wanted[split] = (pairs, indices)`` asks for (rows not asked for are NaN).

    Reused from ``path`` when it was computed for ``key`` (a ``--resume``); missing rows are
    computed with ``load_frozen()`` (called once, only if needed, and freed afterwards), each
    process its share of them under ``torchrun`` (every process gets all rows), and the cache is
    written atomically by the main process."""
    cache = load_reference_cache(path, key) or {
        "key": key,
        **{
            split: torch.full((len(pairs), 2), float("nan"), dtype=torch.float64)
            for split, (pairs, _) in wanted.items()
        },
    }
    model = None

    def compute(pairs: list[EncodedPair]) -> torch.Tensor:
        nonlocal model
        if model is None:
            model = load_frozen()
        rows = distributed.map_sharded(  # each process its share, every process all rows
            lambda part: list(reference_logps(model, part, pad_id, batch_size, padding_free)),
            pairs,
        )
        return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)

    if fill_reference_cache(cache, wanted, compute) and distributed.is_main():
        save_reference_cache(path, cache)
    del model
    return cache
