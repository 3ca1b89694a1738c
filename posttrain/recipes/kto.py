"""KTO: preference optimisation from unpaired data — single responses labelled desirable or not.

Ethayarajh et al. 2024 (eq. 8). Each step:
- the reference point z0 = max(0, mean log pi/pi_ref) over the batch's prompts paired with
  another example's response (mismatched pairs estimate KL(pi || pi_ref)); z0 carries no gradient
  (Sec. 4), so it is one no-grad forward of policy and reference over the whole batch;
- the batch's own responses through the policy (with gradient, in micro-batches when
  ``gradient_accumulation_steps`` > 1) and the reference; ``posttrain.losses.kto_loss``;
  desirable and undesirable examples can be weighted to balance their counts.
Deviation: z0 is estimated over the whole batch, not per micro-batch, so accumulation changes
memory, not the result. The reference is a frozen copy, or the policy with LoRA adapters
disabled. Preference pairs are accepted too: chosen -> desirable, rejected -> undesirable.

Under ``torchrun`` each process takes its slice of the batch (``batch_size`` is the global
batch) and of the mismatched pairs; z0 is computed from every process's log-probs, the loss is
divided by the whole batch's size and gradients are summed over processes, so N processes give
the one-process result.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass

import torch

from posttrain import metrics as M
from posttrain.config import TrainConfig, check
from posttrain.data import Example, collate, encode_example, load_examples
from posttrain.data.preference import collate_pairs, encode_pairs
from posttrain.errors import UserError
from posttrain.losses import kto_kl_reference_point, kto_loss, reward_accuracy
from posttrain.models import (
    check_model_name,
    forward_logprobs,
    load_model,
    load_tokenizer,
    pair_logps,
)
from posttrain.models.lora import apply_lora
from posttrain.models.modes import eval_mode
from posttrain.training import Run, distributed
from posttrain.training.device import module_device, to_device
from posttrain.training.reference import Reference

SUMMARY = "KTO on unpaired data: prompt, completion, label (true = desirable)."


@dataclass(kw_only=True)
class Config(TrainConfig):
    learning_rate: float = 5e-6
    """Peak learning rate of AdamW."""
    beta: float
    """Strength of the tie to the reference. Required, on purpose without a default (the KTO
    paper used 0.1)."""
    desirable_weight: float = 1.0
    """Weight of desirable examples' losses (raise it when they are rarer)."""
    undesirable_weight: float = 1.0
    """Weight of undesirable examples' losses."""

    def validate(self) -> None:
        super().validate()
        check(self.beta > 0, "beta", "must be > 0", self.beta)
        check(
            self.batch_size >= 2,
            "batch_size",
            "must be >= 2 (the reference point pairs examples)",
            self.batch_size,
        )
        check(
            self.desirable_weight > 0 and self.undesirable_weight > 0,
            "desirable_weight",
            "weights must be > 0",
            (self.desirable_weight, self.undesirable_weight),
        )


def as_unpaired(examples: list[Example]) -> tuple[list[Example], int]:
    """Unpaired examples (a preference pair gives its chosen, desirable, and its rejected
    response) and how many pairs were ties.

    KTO has no soft-label form: a pair with p_chosen below 1 is an error (``FILE:LINE``), a tie
    (p = 0.5) says neither response is the better one and is left out (counted)."""
    from posttrain.losses import soft_label_problem

    out, n_ties = [], 0
    for ex in examples:
        if ex.kind == "unpaired":
            out.append(ex)
        elif ex.tie:
            n_ties += 1
        else:
            p = 1.0 if ex.p_chosen is None else ex.p_chosen
            if soft_label_problem("kto", p):
                raise UserError(f"{ex.where}: {soft_label_problem('kto', p)}")
            out.append(Example("unpaired", ex.where, ex.prompt, response=ex.chosen, label=True))
            out.append(Example("unpaired", ex.where, ex.prompt, response=ex.rejected, label=False))
    return out, n_ties


def batch_logps(model, tokenizer, prompts, responses, max_length: int) -> torch.Tensor:
    """Summed response log-probs (N,) of (prompt, response) rows in one forward."""
    encoded = [encode_example(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    b = collate(encoded, tokenizer.pad_token_id)
    return forward_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"]).sum()


def kto_terms(model, reference, tokenizer, batch: list[Example], max_length: int):
    """``(policy (N,), ref (N,), desirable (N,) bool)`` log-probs of the examples' own responses.

    ``reference()`` is a context manager yielding the reference model
    (``posttrain.training.reference.Reference``)."""
    prompts, responses = [ex.prompt for ex in batch], [ex.response for ex in batch]
    policy = batch_logps(model, tokenizer, prompts, responses, max_length)
    with torch.no_grad(), reference() as ref_model:
        ref = batch_logps(ref_model, tokenizer, prompts, responses, max_length)
    return policy, ref, torch.tensor([ex.label for ex in batch], device=policy.device)


@torch.no_grad()
def reference_point(model, reference, tokenizer, batch: list[Example], max_length: int):
    """z0 from prompt i paired with response i+1 (mismatched), no gradient (Sec. 4). Each process
    computes its slice of the pairs; z0 is taken over all of them."""
    n = len(batch)
    rows = distributed.shard(range(n))
    prompts = [batch[i].prompt for i in rows]
    responses = [batch[(i + 1) % n].response for i in rows]
    policy = batch_logps(model, tokenizer, prompts, responses, max_length)
    with reference() as ref_model:
        ref = batch_logps(ref_model, tokenizer, prompts, responses, max_length)
    return kto_kl_reference_point(distributed.gather_cat(policy), distributed.gather_cat(ref))


@torch.no_grad()
def evaluate(model, reference, tokenizer, held_out, cfg: Config) -> dict[str, float]:
    """Held-out unpaired data: the KTO loss (z0 from the held-out set). Held-out pairs: the
    implicit-reward accuracy (chosen reward > rejected reward, ties half)."""
    with eval_mode(model):
        if isinstance(held_out, list) and held_out and isinstance(held_out[0], Example):
            z0 = reference_point(model, reference, tokenizer, held_out, cfg.max_length)
            losses = []
            for i in range(0, len(held_out), cfg.batch_size):
                policy, ref, desirable = kto_terms(
                    model, reference, tokenizer, held_out[i : i + cfg.batch_size], cfg.max_length
                )
                losses.append(kto_loss(policy, ref, desirable, z0, beta=cfg.beta)[0])
            out = {M.EVAL_LOSS: float(torch.cat(losses).mean())}
        else:  # pairs; policy and reference apart (with LoRA they are one model)
            rc, rr = [], []
            for i in range(0, len(held_out), cfg.batch_size):
                batch = collate_pairs(held_out[i : i + cfg.batch_size], tokenizer.pad_token_id)
                batch = to_device(batch, module_device(model))
                policy = pair_logps(model, batch)
                ref_chosen, ref_rejected = reference.pair_logps(batch)
                rc.append(cfg.beta * (policy.chosen - ref_chosen))
                rr.append(cfg.beta * (policy.rejected - ref_rejected))
            out = {M.EVAL_ACCURACY: float(reward_accuracy(torch.cat(rc), torch.cat(rr)).mean())}
    return out


def run(cfg: Config, flags: dict[str, bool]) -> None:
    # --- setup: everything that can fail on bad input happens before output_dir exists
    check_model_name(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    loaded = load_examples(cfg.train_data, ["unpaired", "preference"], what="--train_data")
    examples, n_ties = as_unpaired(loaded)
    if not examples:
        raise UserError(f"{cfg.train_data}: every pair is a tie: nothing for KTO to train on")
    held_out = []
    if cfg.eval_data:
        held = load_examples(cfg.eval_data, ["unpaired", "preference"], what="--eval_data")
        held_out = (
            held if held[0].kind == "unpaired" else encode_pairs(tokenizer, held, cfg.max_length)[0]
        )
    run_ = Run(cfg, flags, "kto")
    if n_ties and distributed.is_main():
        print(
            f"note: {n_ties} of {len(loaded)} records are tied pairs: left out (KTO has no tie)",
            file=sys.stderr,
        )

    torch.manual_seed(cfg.seed)
    base = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer, device=run_.device)
    frozen = None if cfg.lora.enabled else copy.deepcopy(base).requires_grad_(False).eval()
    policy = apply_lora(base, cfg.lora)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    policy.train()
    # the unwrapped policy with adapters off, or the frozen copy (FSDP: sharded like the policy)
    reference = (
        Reference("lora", policy=policy)
        if cfg.lora.enabled
        else Reference("model", frozen=distributed.wrap_frozen(frozen, cfg.distributed))
    )
    model = distributed.wrap(policy, cfg.distributed)

    train_state = run_.start_training(model, len(examples))
    order, scheduler = train_state.order, train_state.scheduler
    if run_.start_step == 0:
        start = {M.TRAIN_TIES: n_ties}
        if held_out:
            start.update(evaluate(model, reference, tokenizer, held_out, cfg))
        run_.log(0, start)

    n = cfg.batch_size
    micro = run_.micro_batch_size
    for step in run_.steps():
        t0 = time.time()
        batch = [examples[i] for i in order.next(n)]
        z0 = reference_point(model, reference, tokenizer, batch, cfg.max_length)
        mine = distributed.shard(batch)  # this process's slice (all of it for one process)
        sums = {k: 0.0 for k in ("loss", "good", "n_good", "bad", "n_bad")}
        with distributed.accumulate(model):
            for k in range(0, len(mine), micro):
                policy_logps, ref_logps, good = kto_terms(
                    model, reference, tokenizer, mine[k : k + micro], cfg.max_length
                )
                losses, rewards = kto_loss(
                    policy_logps,
                    ref_logps,
                    good,
                    z0,
                    beta=cfg.beta,
                    desirable_weight=cfg.desirable_weight,
                    undesirable_weight=cfg.undesirable_weight,
                )
                # mean over the whole (global) batch; gradients are summed over processes
                (losses.sum() / n).backward()
                for key, value in (
                    ("loss", losses.detach()),
                    ("good", rewards[good]),
                    ("n_good", good),
                    ("bad", rewards[~good]),
                    ("n_bad", ~good),
                ):
                    sums[key] += float(value.sum())
        sums = {k: distributed.all_sum(v) for k, v in sums.items()}
        grad_norm = train_state.step(cfg.max_grad_norm)
        if run_.should_log(step):
            values = {
                M.TRAIN_LOSS: sums["loss"] / n,
                M.REWARDS_CHOSEN: sums["good"] / sums["n_good"] if sums["n_good"] else None,
                M.REWARDS_REJECTED: sums["bad"] / sums["n_bad"] if sums["n_bad"] else None,
                M.OBJECTIVE_KL: float(z0),
                M.TRAIN_GRAD_NORM: grad_norm,
                M.TRAIN_LR: scheduler.get_last_lr()[0],
                M.TRAIN_EPOCH: order.epochs_done,
                M.TRAIN_PAIRS_PER_S: n / (time.time() - t0),
            }
            if held_out and run_.should_eval(step):
                values.update(evaluate(model, reference, tokenizer, held_out, cfg))
            run_.log(step, values)
        run_.step_done(step, **train_state.checkpoint())
    run_.finish(model, tokenizer)
