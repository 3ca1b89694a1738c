"""Direct preference optimisation and its family, offline, on preference pairs.

setup -> pairs (validated before anything is written) -> policy, reference -> resume ->
for each step: ONE forward of chosen and rejected together (padding-free: each prompt once, both
responses after it; or 2B padded rows), the loss of ``loss_type``, clipped AdamW step -> log ->
checkpoint -> final/. With ``ptx_coef`` > 0 each step also adds the ptx term of ``ptx_data``
(``recipes._ptx``, PPO-ptx's): the NLL of ``ptx_batch_size`` of its examples per token, or with
``ptx_loss kl`` the exact KL from the reference at their tokens, which holds the policy near the
reference on other text while it learns the preference.

Objectives (all pure functions in ``posttrain.losses``):
- ``sigmoid`` DPO (Rafailov et al. 2023, eq. 7); with ``label_smoothing`` > 0 conservative DPO;
  ``ipo`` (Azar et al. 2023); ``hinge`` (SLiC, Zhao et al. 2023); ``robust`` (Chowdhury et al.
  2024, ``label_smoothing`` = the assumed flip rate). ``rpo_alpha`` > 0 adds the chosen response's
  length-normalised NLL (RPO / DPO+NLL, Pang et al. 2024).
- reference-free: ``simpo`` (Meng et al. 2024), ``orpo`` (Hong et al. 2024), ``unlikelihood``
  (Welleck et al. 2019: raise the chosen, lower the rejected likelihood), and any of the DPO
  losses with ``reference: none``.

The reference policy, ``reference``:
- ``model``: a frozen copy of the starting model (or of ``reference_model``);
- ``lora``: the policy itself with its LoRA adapters disabled (no second model in memory);
- ``precomputed``: reference log-probs computed once before training with a frozen copy that is
  then freed: for the pairs the run will visit (a run shorter than an epoch does not pay for the
  rest), in length-sorted batches, split over the processes under ``torchrun``; cached in
  ``output_dir/reference_logps.pt`` (written atomically, keyed by the tokenised data and the
  reference model; rows not computed are NaN) and reused on ``--resume``;
- ``auto`` (default): ``lora`` when LoRA is on; ``model`` under ``--distributed fsdp`` (its copy
  is sharded, while ``precomputed`` computes with a whole copy on every process) or with
  ``ptx_loss kl`` (the term runs the reference model); else
  ``precomputed``, which gives the same log-probs (to float rounding) for less time and memory:
  a forward per pair instead of per pair per epoch, in length-sorted batches, and no second model
  during training; ``none``: reference-free.

The loss of a step is the mean over the batch's pairs, so gradient accumulation changes memory,
not the result.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain import metrics as M
from posttrain.config import TrainConfig, check
from posttrain.data import load_examples, to_preference_pairs
from posttrain.data.formats import select_pairs, ties_note
from posttrain.data.preference import EncodedPair, collate_pairs, encode_pairs
from posttrain.errors import UserError
from posttrain.losses import (
    DPO_LOSS_TYPES,
    REFERENCE_FREE_LOSS_TYPES,
    preference_loss,
    reward_accuracy,
)
from posttrain.models import PairLogps, check_model_name, load_model, load_tokenizer, pair_logps
from posttrain.models.lora import apply_lora
from posttrain.models.modes import eval_mode
from posttrain.recipes._ptx import PtxConfig, load_ptx, ptx_term
from posttrain.training import DataOrder, Run, distributed
from posttrain.training.device import module_device, to_device
from posttrain.training.reference import (
    Reference,
    data_key,
    precompute_pair_logps,
)

SUMMARY = "DPO and its family (IPO, hinge, robust, cDPO, RPO, SimPO, ORPO, unlikelihood) on pairs."

DPO_TYPES = DPO_LOSS_TYPES
NO_REFERENCE = REFERENCE_FREE_LOSS_TYPES
USES_BETA = (*DPO_TYPES, "simpo")  # orpo and unlikelihood have no beta (it only scales logs)
REFERENCE_CACHE = "reference_logps.pt"


@dataclass(kw_only=True)
class Config(TrainConfig, PtxConfig):
    learning_rate: float = 5e-6
    """Peak learning rate of AdamW (DPO wants a small one on real models)."""
    beta: float | None = None
    """Strength of the tie to the reference (DPO's beta, IPO's tau, SimPO's reward scale).
    Required for every loss_type but orpo and unlikelihood, on purpose without a default: it
    sets how far the policy may move and its scale depends on the loss (DPO paper: 0.1-0.5;
    SimPO: 2.0-2.5). For orpo/unlikelihood it only scales the logged rewards (default 1)."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo", "unlikelihood"] = (
        "sigmoid"
    )
    """Objective: sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO), simpo, orpo, unlikelihood."""
    ties: Literal["drop", "soft"] = "drop"
    """Pairs labelled as ties (p_chosen 0.5 or tie: true): drop them (counted in the log) or
    train them at p = 0.5 (sigmoid: cDPO with eps 0.5, which pulls their margin to 0; robust
    cannot)."""
    label_smoothing: float = 0.0
    """sigmoid: conservative-DPO label smoothing; robust: the assumed label-flip rate."""
    rpo_alpha: float = 0.0
    """Weight of the chosen response's length-normalised NLL added to the loss (RPO); 0 = off."""
    simpo_gamma: float = 0.5
    """SimPO target reward margin gamma."""
    orpo_lambda: float = 0.1
    """ORPO weight of the odds-ratio term next to the NLL."""
    unlikelihood_alpha: float = 1.0
    """unlikelihood: weight of the rejected response's unlikelihood term."""
    reference: Literal["auto", "model", "lora", "precomputed", "none"] = "auto"
    """Reference policy: auto (lora with LoRA, model under FSDP, else precomputed), model (frozen
    copy), lora (adapters disabled), precomputed (log-probs computed once and cached), none
    (reference-free)."""
    reference_model: str | None = None
    """A different model to use as reference (default: the starting model)."""
    aspect_weights: dict[str, float] | None = None
    """For scored data: weight of each aspect when turning scores into pairs."""
    padding_free: bool = True
    """Lay each pair out once as its prompt followed by both responses (each response sees the
    prompt and itself), pairs packed end to end into as few rows as fit the longest, instead of
    2B rows each padded to the longest: the same numbers (to float rounding) without computing
    the prompt twice or the padding; false pads."""

    def validate(self) -> None:
        super().validate()
        if self.beta is None and self.loss_type in USES_BETA:
            raise UserError(
                f"--beta is required for loss_type {self.loss_type} (no default on purpose: the "
                "DPO paper used 0.1-0.5, SimPO 2.0-2.5)"
            )
        check(self.beta is None or self.beta > 0, "beta", "must be > 0", self.beta)
        check(
            0 <= self.label_smoothing < 0.5,
            "label_smoothing",
            "must be in [0, 0.5)",
            self.label_smoothing,
        )
        check(self.rpo_alpha >= 0, "rpo_alpha", "must be >= 0", self.rpo_alpha)
        self.check_ptx()
        check(
            not self.uses_ptx_reference() or self.reference_kind() in ("model", "lora"),
            "ptx_loss",
            "kl runs the reference model: not with reference "
            f"{self.reference_kind()} (use --reference model or lora)",
            self.ptx_loss,
        )
        check(
            self.reference != "lora" or self.lora.enabled,
            "reference",
            "lora needs --lora.enabled",
            self.reference,
        )
        check(
            self.loss_type not in NO_REFERENCE or self.reference in ("auto", "none"),
            "reference",
            f"loss_type {self.loss_type} uses no reference model",
            self.reference,
        )
        check(
            self.rpo_alpha == 0 or self.loss_type in DPO_TYPES,
            "rpo_alpha",
            f"adds to a DPO loss (sigmoid, ipo, hinge, robust), not to {self.loss_type}",
            self.rpo_alpha,
        )
        check(
            self.reference_model is None or self.reference_kind() in ("model", "precomputed"),
            "reference_model",
            f"is not used with reference {self.reference_kind()}",
            self.reference_model,
        )
        if self.label_smoothing:
            check(
                self.loss_type in ("sigmoid", "robust", "simpo"),
                "label_smoothing",
                f"has no meaning for loss_type {self.loss_type}",
                self.label_smoothing,
            )

    def reference_kind(self) -> str:
        if self.loss_type in NO_REFERENCE:
            return "none"
        if self.reference == "auto":
            if self.lora.enabled:
                return "lora"
            # ptx's KL term runs the reference model at its own tokens: a cache cannot serve it
            model = self.distributed == "fsdp" or self.uses_ptx_reference()
            return "model" if model else "precomputed"
        return self.reference


# --------------------------------------------------------------------------- reusable pieces


def visited(n: int, cfg: Config) -> list[int]:
    """The training pairs a run of ``cfg.max_steps`` steps uses (``Run.start_training``'s data
    order): all of them once it passes an epoch."""
    return sorted(DataOrder(n, cfg.seed).next(min(n, cfg.max_steps * cfg.batch_size)))


@torch.no_grad()
def evaluate(
    model, ref, pairs, pad_id, batch_size, padding_free=False, **loss_args
) -> dict[str, float]:
    """Held-out loss and implicit-reward accuracy (chosen reward > rejected reward)."""
    with eval_mode(model):
        losses, correct = [], []
        for i in range(0, len(pairs), batch_size):
            idx = list(range(i, min(i + batch_size, len(pairs))))
            batch = collate_pairs([pairs[j] for j in idx], pad_id, padding_free=padding_free)
            batch = to_device(batch, module_device(model))
            policy = pair_logps(model, batch)
            ref_pair = _as(ref.pair_logps(batch, "eval", idx), policy)
            loss, rc, rr = preference_loss(
                policy, *ref_pair, p_chosen=batch["p_chosen"], **loss_args
            )
            losses.append(loss)
            correct.append(reward_accuracy(rc, rr))
    return {
        M.EVAL_LOSS: float(torch.cat(losses).mean()),
        M.EVAL_ACCURACY: float(torch.cat(correct).mean()),
    }


def _as(ref_pair, policy: PairLogps):
    """Reference log-probs in the policy's dtype, on its device (a cache may hold another)."""
    return tuple(None if r is None else r.to(policy.chosen) for r in ref_pair)


def load_pairs(path: str, tokenizer, cfg: Config, what: str) -> tuple[list[EncodedPair], int, int]:
    """Encoded pairs (soft labels in ``p_chosen``), how many were truncated, how many of all the
    pairs were ties (dropped unless ``--ties soft``); a soft label the loss cannot train is a
    ``FILE:LINE`` error."""
    examples = load_examples(path, ["preference", "ranked", "scored"], what=what)
    pairs, n_ties = select_pairs(
        to_preference_pairs(examples, cfg.aspect_weights),
        ties=cfg.ties,
        what=path,
        loss_type=cfg.loss_type,
    )
    encoded, n_trunc = encode_pairs(tokenizer, pairs, cfg.max_length)
    return encoded, n_trunc, n_ties


# --------------------------------------------------------------------------- the recipe


def run(cfg: Config, flags: dict[str, bool]) -> None:
    # --- setup: everything that can fail on bad input happens before output_dir exists
    check_model_name(cfg.model)
    if cfg.reference_model:
        check_model_name(cfg.reference_model)
    tokenizer = load_tokenizer(cfg.model)
    train, n_trunc, n_ties = load_pairs(cfg.train_data, tokenizer, cfg, "--train_data")
    held_out = load_pairs(cfg.eval_data, tokenizer, cfg, "--eval_data")[0] if cfg.eval_data else []
    ptx = load_ptx(cfg, tokenizer)
    run_ = Run(cfg, flags, "dpo")
    if n_trunc:
        print(f"note: {n_trunc} of {len(train)} pairs truncated to max_length={cfg.max_length}")
    if n_ties and distributed.is_main():
        n_all = len(train) + (n_ties if cfg.ties == "drop" else 0)
        print(ties_note(n_ties, n_all, cfg.ties), file=sys.stderr)
    pad = tokenizer.pad_token_id
    loss_args = dict(
        loss_type=cfg.loss_type,
        beta=cfg.beta if cfg.beta is not None else 1.0,  # orpo/unlikelihood: scales logs only
        label_smoothing=cfg.label_smoothing,
        rpo_alpha=cfg.rpo_alpha,
        simpo_gamma=cfg.simpo_gamma,
        orpo_lambda=cfg.orpo_lambda,
        unlikelihood_alpha=cfg.unlikelihood_alpha,
    )
    eval_args = dict(batch_size=cfg.batch_size, padding_free=cfg.padding_free, **loss_args)

    torch.manual_seed(cfg.seed)
    base = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=run_.device)
    kind = cfg.reference_kind()

    def frozen_reference():
        ref_model = (
            load_model(cfg.reference_model, dtype=cfg.dtype, device=run_.device)
            if cfg.reference_model
            else copy.deepcopy(base)
        )
        return ref_model.requires_grad_(False).eval()

    frozen, cache = None, None
    if kind == "model":
        frozen = frozen_reference()
    elif kind == "precomputed":  # computed once (kept across --resume), then the copy is freed
        cache = precompute_pair_logps(
            run_.dir / REFERENCE_CACHE,
            data_key(train + held_out, cfg.reference_model or cfg.model, cfg.dtype),
            {  # only the pairs this run will see (more on a resume with more steps)
                "train": (train, visited(len(train), cfg)),
                "eval": (held_out, list(range(len(held_out)))),
            },
            frozen_reference,
            pad_id=pad,
            batch_size=cfg.batch_size,
            padding_free=cfg.padding_free,
        )
    model = apply_lora(base, cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    # the reference holds the unwrapped policy (LoRA: adapters off) or the frozen copy
    ref = Reference(kind, policy=model, frozen=frozen, cache=cache)
    if frozen is not None:
        distributed.wrap_frozen(frozen, cfg.distributed)  # FSDP: sharded in place, like the policy
    model = distributed.wrap(model, cfg.distributed)

    train_state = run_.start_training(model, len(train))
    order, scheduler = train_state.order, train_state.scheduler
    ptx_order = DataOrder(max(len(ptx), 1), cfg.seed + 1)
    ptx_order.next(run_.start_step * cfg.ptx_batch_size)  # a function of the step: resume skips
    if run_.start_step == 0:
        start = {M.TRAIN_TRUNCATED: n_trunc, M.TRAIN_TIES: n_ties}
        if held_out:
            start.update(evaluate(model, ref, held_out, pad, **eval_args))
        run_.log(0, start)

    micro = run_.micro_batch_size
    for step in run_.steps():
        t0 = time.time()
        indices = distributed.shard(order.next(cfg.batch_size))  # this process's pairs
        sums = {k: 0.0 for k in ("loss", "rc", "rr", "acc", "lc", "lr", "ptx")}
        with distributed.accumulate(model):
            for k in range(0, len(indices), micro):
                idx = indices[k : k + micro]
                batch = collate_pairs([train[i] for i in idx], pad, padding_free=cfg.padding_free)
                batch = to_device(batch, run_.device)
                with distributed.autocast(cfg.bf16_autocast):
                    policy = pair_logps(model, batch)
                ref_c, ref_r = _as(ref.pair_logps(batch, "train", idx), policy)
                losses, rc, rr = preference_loss(
                    policy, ref_c, ref_r, p_chosen=batch["p_chosen"], **loss_args
                )
                # mean over the whole (global) batch's pairs; gradients are summed over processes
                (losses.sum() / cfg.batch_size).backward()
                for key, value in (
                    ("loss", losses.detach()),
                    ("rc", rc),
                    ("rr", rr),
                    ("acc", reward_accuracy(rc, rr)),
                    ("lc", policy.chosen.detach()),
                    ("lr", policy.rejected.detach()),
                ):
                    sums[key] += float(value.sum())
            if cfg.ptx_coef:  # ptx: once per optimizer step, its own forward and backward
                examples = [ptx[i] for i in ptx_order.next(cfg.ptx_batch_size)]
                with distributed.autocast(cfg.bf16_autocast):
                    term = ptx_term(model, ref, examples, pad, cfg.ptx_loss)
                (cfg.ptx_coef * term).backward()
                sums["ptx"] += float(term.detach()) * cfg.batch_size  # (the logs divide by it)
        sums = {k: distributed.all_sum(v) for k, v in sums.items()}
        grad_norm = train_state.step(cfg.max_grad_norm)
        if run_.should_log(step):
            n = cfg.batch_size
            values = {
                M.TRAIN_LOSS: sums["loss"] / n,
                M.REWARDS_CHOSEN: sums["rc"] / n,
                M.REWARDS_REJECTED: sums["rr"] / n,
                M.REWARDS_MARGINS: (sums["rc"] - sums["rr"]) / n,
                M.REWARDS_ACCURACIES: sums["acc"] / n,
                M.LOGPS_CHOSEN: sums["lc"] / n,
                M.LOGPS_REJECTED: sums["lr"] / n,
                M.TRAIN_GRAD_NORM: grad_norm,
                M.TRAIN_LR: scheduler.get_last_lr()[0],
                M.TRAIN_EPOCH: order.epochs_done,
                M.TRAIN_PAIRS_PER_S: n / (time.time() - t0),
            }
            if cfg.ptx_coef:
                values[M.LOSS_PTX] = sums["ptx"] / n
            if held_out and run_.should_eval(step):
                values.update(evaluate(model, ref, held_out, pad, **eval_args))
            run_.log(step, values)
        run_.step_done(step, **train_state.checkpoint())
    run_.finish(model, tokenizer)
