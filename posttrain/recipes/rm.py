"""Reward model training: learn r(x, y) from comparisons with the Bradley–Terry loss.

setup -> pairs (validated before anything is written) -> trunk + head -> resume -> for each
step: ONE forward of chosen and rejected together (padding-free by default: a pair's prompt
once, then both responses), -log sigmoid(r_c - r_r - margin) (plus the optional reward-centering
term), clipped AdamW step -> log -> checkpoint -> final/ with the training-set reward mean/std
saved for whitening.

Data: preference pairs (optional ``margin``); ranked records give every implied pair (ties none);
scored multi-aspect records give pairs through ``aspect_weights``. Every pair is one training
item, shuffled with the rest (InstructGPT instead puts all C(K, 2) pairs of a prompt in one batch
element; here pairs of one ranking may land in different batches).

Multi-objective (``heads`` with more than one name): the data must be scored records, and head
``z`` is trained ONLY on the pairs its own aspect ``z`` implies (a record yields, per head, the
pairs ordered by that aspect's score, ties none). One pair list holds (pair, head index) items; a
batch mixes heads, the forward computes every head and the loss reads each pair's own head. The
served reward is ``sum_z head_weights[z] * r_z``; the weights only matter at serving time, so
they can be changed later in ``reward_config.json`` without retraining.

``--model`` may also be a reward model saved by ``posttrain rm`` or any HF
sequence-classification directory (one head per label): training then continues from its head
as well. ``final/`` is itself such a directory (``posttrain.models.reward``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from posttrain import metrics as M
from posttrain.config import TrainConfig, check
from posttrain.data import load_examples, to_preference_pairs
from posttrain.data.formats import Example, select_pairs, ties_note
from posttrain.data.preference import EncodedPair, collate_pairs, encode_pairs
from posttrain.errors import UserError
from posttrain.losses import (
    bradley_terry_loss,
    reward_accuracy,
    reward_centering_loss,
    soft_bradley_terry_loss,
)
from posttrain.models import check_model_name, load_model, load_tokenizer
from posttrain.models.lora import apply_lora
from posttrain.models.reward import RewardModel, is_reward_model_dir, load_reward_model
from posttrain.training import Run, distributed
from posttrain.training.device import module_device, to_device

SUMMARY = "Reward model: Bradley-Terry on pairs, rankings or scored aspects; one or several heads."


@dataclass(kw_only=True)
class Config(TrainConfig):
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    heads: list[str] = field(default_factory=lambda: ["reward"])
    """Reward heads. One head learns from all pairs; several (e.g. helpfulness,harmlessness)
    need scored data whose aspects are named like the heads, and each head learns from its own
    aspect's scores alone."""
    head_weights: dict[str, float] | None = None
    """Weight of each head in the served reward sum_z w_z r_z (default 1 each)."""
    aspect_weights: dict[str, float] | None = None
    """Single head, scored data: weights that turn aspect scores into one ordering
    (sum_aspect w * score)."""
    ties: Literal["drop", "soft"] = "drop"
    """Pairs labelled as ties (p_chosen 0.5 or tie: true): drop them (counted in the log) or
    train them at p = 0.5 (the soft Bradley-Terry loss pulls their reward difference to 0)."""
    center_rewards_coef: float = 0.0
    """Reward-centering regulariser coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023, eq. 2;
    0.01 is usual); 0 = off."""
    padding_free: bool = True
    """Lay each pair out once as its prompt followed by both responses (each response sees the
    prompt and itself), pairs packed end to end, instead of 2B rows each padded to the longest:
    the same rewards (to float rounding) without computing the prompt twice or the padding;
    false pads."""

    def validate(self) -> None:
        super().validate()
        check(
            len(self.heads) >= 1 and len(set(self.heads)) == len(self.heads),
            "heads",
            "must be distinct names",
            self.heads,
        )
        check(
            self.center_rewards_coef >= 0,
            "center_rewards_coef",
            "must be >= 0",
            self.center_rewards_coef,
        )
        check(
            len(self.heads) == 1 or not self.aspect_weights,
            "aspect_weights",
            "is for one head; with several heads each head learns from its own aspect",
            self.aspect_weights,
        )
        if self.head_weights is not None:
            check(
                set(self.head_weights) == set(self.heads),
                "head_weights",
                f"must name exactly {self.heads}",
                self.head_weights,
            )


def head_pairs(
    examples: list[Example], heads: list[str], aspect_weights
) -> list[tuple[Example, int]]:
    """(preference example, head index) for every training pair (see the module doc)."""
    if len(heads) == 1:
        return [(ex, 0) for ex in to_preference_pairs(examples, aspect_weights)]
    out = []
    for ex in examples:
        if ex.kind != "scored":
            raise UserError(f"{ex.where}: several heads need scored records (one score per aspect)")
        for z, head in enumerate(heads):
            out += [(p, z) for p in to_preference_pairs([ex], {head: 1.0})]
    return out


def load_pairs(path, tokenizer, cfg: Config, what: str):
    """Encoded pairs, their head indices (P,), how many were truncated, and how many of all the
    pairs were ties (dropped unless ``--ties soft``)."""
    examples = load_examples(path, ["preference", "ranked", "scored"], what=what)
    labelled = head_pairs(examples, cfg.heads, cfg.aspect_weights)
    kept, n_ties = select_pairs([ex for ex, _ in labelled], ties=cfg.ties, what=path)
    keep = {id(ex) for ex in kept}
    labelled = [(ex, z) for ex, z in labelled if id(ex) in keep]
    pairs, n_trunc = encode_pairs(tokenizer, [ex for ex, _ in labelled], cfg.max_length)
    return pairs, torch.tensor([z for _, z in labelled], dtype=torch.long), n_trunc, n_ties


def build_reward_model(cfg: Config, tokenizer, device=None) -> RewardModel:
    """A fresh head on the ``cfg.model`` trunk, or a saved reward model to continue training
    (on ``device``)."""
    weights = [cfg.head_weights[h] for h in cfg.heads] if cfg.head_weights else None
    if not is_reward_model_dir(cfg.model):
        trunk = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer)
        return RewardModel(trunk, tokenizer, cfg.heads, weights).to(device)
    rm = load_reward_model(cfg.model, dtype=cfg.dtype, device=device)
    if len(rm.heads) != len(cfg.heads) or (len(cfg.heads) > 1 and rm.heads != cfg.heads):
        raise UserError(f"--heads: {cfg.model} has heads {rm.heads}, the config {cfg.heads}")
    rm.heads = list(cfg.heads)
    if weights is not None:
        rm.weights.copy_(torch.tensor(weights))
    return rm


def pair_rewards(rm, batch, head_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen (B,), r_rejected (B,)) of each pair's own head, from one forward of the pairs:
    (2B, T) padded rows, or a padding-free batch (``collate_pairs(padding_free=True)``)."""
    if "segment_tokens" in batch:
        rewards = rm(packed=batch)  # (2B, H): chosen sequences, then rejected
    else:
        rewards = rm(batch["input_ids"], batch["attention_mask"])  # (2B, H)
    b = rewards.shape[0] // 2
    rows, head_idx = torch.arange(b, device=rewards.device), head_idx.to(rewards.device)
    return rewards[:b][rows, head_idx], rewards[b:][rows, head_idx]


@torch.no_grad()
def accuracy(
    rm: RewardModel,
    pairs,
    heads: torch.Tensor,
    pad_id: int,
    batch_size: int,
    padding_free: bool = False,
) -> float:
    """Share of pairs whose chosen response gets the higher reward (ties count half)."""
    was = rm.training
    rm.eval()
    won = []
    for i in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[i : i + batch_size], pad_id, padding_free=padding_free)
        batch = to_device(batch, module_device(rm))
        won.append(reward_accuracy(*pair_rewards(rm, batch, heads[i : i + batch_size])))
    rm.train(was)
    return float(torch.cat(won).mean())


@torch.no_grad()
def reward_stats(
    rm: RewardModel,
    pairs: list[EncodedPair],
    pad_id: int,
    batch_size: int,
    padding_free: bool = False,
) -> tuple[float, float]:
    """Mean and std (correction 1) of the served reward over the distinct responses of the
    training pairs (a response in several pairs counts once). Each process scores its share.
    ``padding_free``: the pairs as they trained (each prompt once, then both responses; a
    response counted at its first pair), else the distinct sequences padded, by length."""
    from posttrain.data import collate

    rm.eval()
    values: list[torch.Tensor] = []
    if padding_free:
        seen: set[tuple[int, ...]] = set()
        first = []  # per pair: whether its chosen / rejected is a response's first appearance
        for pair in pairs:
            flags = []
            for seq in (pair.chosen, pair.rejected):
                key = tuple(seq.input_ids)
                flags.append(key not in seen)
                seen.add(key)
            first.append(flags)
        n = len(seen)
        mine = distributed.shard(list(range(len(pairs))))
        for i in range(0, len(mine), batch_size):
            part = mine[i : i + batch_size]
            batch = collate_pairs([pairs[j] for j in part], pad_id, padding_free=True)
            r = rm.reward(packed=batch)  # (2b,): chosen, then rejected
            keep = torch.tensor([first[j][0] for j in part] + [first[j][1] for j in part])
            values.append(r.double()[keep.to(r.device)])
    else:
        seqs = {tuple(e.input_ids): e for p in pairs for e in (p.chosen, p.rejected)}
        n = len(seqs)
        mine = distributed.shard(sorted(seqs.values(), key=lambda e: len(e.input_ids)))
        for i in range(0, len(mine), batch_size):
            b = collate(mine[i : i + batch_size], pad_id)
            values.append(rm.reward(b["input_ids"], b["attention_mask"]).double())  # (b,)
    r = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    total = distributed.all_sum(float(r.sum()))
    total_sq = distributed.all_sum(float((r * r).sum()))
    mean = total / n
    var = (total_sq - n * mean * mean) / (n - 1) if n > 1 else 1.0
    return mean, max(var, 0.0) ** 0.5


def run(cfg: Config, flags: dict[str, bool]) -> None:
    # --- setup: everything that can fail on bad input happens before output_dir exists
    check_model_name(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    train, train_heads, n_trunc, n_ties = load_pairs(cfg.train_data, tokenizer, cfg, "--train_data")
    if not train:
        raise UserError(f"{cfg.train_data}: no preference pairs (every ranking a tie?)")
    held = load_pairs(cfg.eval_data, tokenizer, cfg, "--eval_data") if cfg.eval_data else None
    run_ = Run(cfg, flags, "rm")
    pad = tokenizer.pad_token_id
    if n_trunc and distributed.is_main():
        print(f"note: {n_trunc} of {len(train)} training pairs truncated to max_length")
    if n_ties and distributed.is_main():
        n_all = len(train) + (n_ties if cfg.ties == "drop" else 0)
        print(ties_note(n_ties, n_all, cfg.ties), file=sys.stderr)

    torch.manual_seed(cfg.seed)
    rm = build_reward_model(cfg, tokenizer, run_.device)
    rm.trunk = apply_lora(rm.trunk, cfg.lora)
    if cfg.gradient_checkpointing:
        rm.trunk.gradient_checkpointing_enable()
    rm.head.requires_grad_(True)  # LoRA freezes the trunk, never the head
    rm.train()
    model = distributed.wrap(rm, cfg.distributed)  # rm itself for one process
    train_state = run_.start_training(model, len(train))
    order, scheduler = train_state.order, train_state.scheduler
    if run_.start_step == 0:
        start = {M.TRAIN_TRUNCATED: n_trunc, M.TRAIN_TIES: n_ties}
        if held:
            start[M.EVAL_ACCURACY] = accuracy(
                rm, held[0], held[1], pad, cfg.batch_size, cfg.padding_free
            )
        run_.log(0, start)

    micro = run_.micro_batch_size
    for step in run_.steps():
        t0 = time.time()
        mine = distributed.shard(order.next(cfg.batch_size))  # this process's pairs
        sums = dict.fromkeys(("loss", "acc", "margin", "rc", "rr"), 0.0)
        with distributed.accumulate(model):
            for k in range(0, len(mine), micro):
                part = mine[k : k + micro]
                pairs = [train[i] for i in part]
                batch = collate_pairs(pairs, pad, padding_free=cfg.padding_free)
                batch = to_device(batch, run_.device)
                with distributed.autocast(cfg.bf16_autocast):
                    rc, rr = pair_rewards(model, batch, train_heads[part])  # (b,) each
                has_margin = any(train[i].margin is not None for i in part)
                margin = batch["margin"] if has_margin else None
                p = batch["p_chosen"]
                if bool((p == 1.0).all()):  # certain labels: the Bradley-Terry loss
                    losses = bradley_terry_loss(rc, rr, margin)
                else:  # soft labels: its cross-entropy against p
                    losses = soft_bradley_terry_loss(rc, rr, p.to(rc.dtype), margin)
                if cfg.center_rewards_coef:
                    losses = losses + cfg.center_rewards_coef * reward_centering_loss(rc, rr)
                (losses.sum() / cfg.batch_size).backward()  # mean over the GLOBAL batch's pairs
                rc, rr = rc.detach(), rr.detach()
                sums["loss"] += float(losses.detach().sum())
                sums["acc"] += float(reward_accuracy(rc, rr).sum())
                sums["margin"] += float((rc - rr).sum())
                sums["rc"] += float(rc.sum())
                sums["rr"] += float(rr.sum())
        grad_norm = train_state.step(cfg.max_grad_norm)
        if run_.should_log(step):
            n = cfg.batch_size
            sums = {k: distributed.all_sum(v) / n for k, v in sums.items()}
            values = {
                M.TRAIN_LOSS: sums["loss"],
                M.REWARDS_ACCURACIES: sums["acc"],
                M.REWARDS_MARGINS: sums["margin"],
                M.REWARDS_CHOSEN: sums["rc"],
                M.REWARDS_REJECTED: sums["rr"],
                M.TRAIN_GRAD_NORM: grad_norm,
                M.TRAIN_LR: scheduler.get_last_lr()[0],
                M.TRAIN_EPOCH: order.epochs_done,
                M.TRAIN_PAIRS_PER_S: n / (time.time() - t0),
            }
            if held and run_.should_eval(step):
                values[M.EVAL_ACCURACY] = accuracy(
                    rm, held[0], held[1], pad, cfg.batch_size, cfg.padding_free
                )
            run_.log(step, values)
        run_.step_done(step, **train_state.checkpoint())
    rm.mean, rm.std = reward_stats(rm, train, pad, cfg.batch_size, cfg.padding_free)
    run_.finish(
        model,
        save=rm.save,
        note=lambda: f" (training-set reward mean {rm.mean:.4g}, std {rm.std:.4g})",
    )
